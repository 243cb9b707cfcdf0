#!/bin/bash
# Runs one node's launcher (torchrun / accelerate launch / python) and turns a preemption
# signal into "save and exit 75" for the whole node.
#
#   bash slurm/node.sh torchrun ... -m dgan train ...
#
# SIGUSR2 or SIGTERM to this script is passed on to the launcher's children, the training
# processes, because torchrun and accelerate do not forward USR signals. Each dgan process
# then saves and exits 75; torchrun reports any failed worker as exit 1, so after a
# forwarded signal a failed launcher is reported as 75 ("saved, requeue me") here.
set -u
REQUEUE_EXIT_CODE=75
signalled=""

forward() {
    signalled=$1
    echo "dgan-slurm: $(hostname): got SIG$1, telling the training processes to save and exit" >&2
    # only the launcher's own children: the workers
    pkill "-$1" -P "$launcher" 2>/dev/null || kill "-$1" "$launcher" 2>/dev/null
}

"$@" &
launcher=$!
trap 'forward USR2' USR2
trap 'forward TERM' TERM
# `wait` returns early when a trapped signal arrives: keep waiting while the process
# lives, then take its exit status (bash keeps it even when it exited before the loop)
while kill -0 "$launcher" 2>/dev/null; do
    wait "$launcher"
done
wait "$launcher"
rc=$?
if [ -n "$signalled" ] && [ "$rc" -ne 0 ]; then
    rc=$REQUEUE_EXIT_CODE
fi
exit "$rc"
