"""slurm/*.sbatch: syntax, the commands they build, and the requeue path.

Stand-in `sbatch`, `srun`, `scontrol` and `torchrun` (written into a tmp bin dir first on
PATH) record their arguments. The stand-in torchrun starts one stand-in worker that, like a
dgan process, exits 75 on SIGUSR2, and exits 1 itself when a worker failed (as torchrun
does). `sbatch` here runs the script in the foreground with the SLURM variables set.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["slurm/train.sbatch", "slurm/train-multinode.sbatch", "slurm/node.sh"]

FAKES = {
    "sbatch": """#!/bin/bash
export SLURM_JOB_ID=4242 SLURM_SUBMIT_DIR="$FAKE_REPO" SLURM_JOB_NODELIST='node-[a,b]'
export SLURM_JOB_NUM_NODES=2 SLURM_GPUS_ON_NODE=2 SLURM_CPUS_PER_TASK=8
exec bash "$@"
""",
    "scontrol": """#!/bin/bash
echo "$*" >> "$FAKE_DIR/scontrol.log"
if [ "$1 $2" = "show hostnames" ]; then printf 'node-a\\nnode-b\\n'; fi
""",
    "srun": """#!/bin/bash
echo "$*" >> "$FAKE_DIR/srun.log"
while [ "${1#--}" != "$1" ]; do shift; done   # drop srun's own options
"$@" &
task=$!
trap 'kill -USR2 $task' USR2
trap 'kill -TERM $task' TERM
while kill -0 $task 2>/dev/null; do wait $task; done
wait $task
exit $?
""",
    "torchrun": """#!/bin/bash
echo "$*" >> "$FAKE_DIR/torchrun.log"
echo "OMP_NUM_THREADS=$OMP_NUM_THREADS" >> "$FAKE_DIR/torchrun.log"
bash -c 'trap "exit 75" USR2; touch "$FAKE_DIR/ready"
         [ -n "$FAKE_WORKER_EXIT" ] && exit "$FAKE_WORKER_EXIT"
         while true; do sleep 0.05 & wait $!; done' &
wait $!
[ $? -eq 0 ] || exit 1
""",
}


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse(script):
    subprocess.run(["bash", "-n", str(ROOT / script)], check=True)


def test_sbatch_headers_ask_for_the_signal_requeue_and_append():
    for script in SCRIPTS[:2]:
        text = (ROOT / script).read_text()
        for line in ("#SBATCH --signal=B:USR2@120", "#SBATCH --requeue",
                     "#SBATCH --open-mode=append"):
            assert line in text, (script, line)


@pytest.fixture
def fake(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in FAKES.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_DIR=str(tmp_path),
               FAKE_REPO=str(ROOT), FAKE_WORKER_EXIT="")
    env.pop("OMP_NUM_THREADS", None)
    return tmp_path, env


def submit(fake, script: str, signal_after_start: bool, worker_exit: str = "") -> int:
    tmp, env = fake
    env = dict(env, FAKE_WORKER_EXIT=worker_exit)
    proc = subprocess.Popen(["sbatch", str(ROOT / script), "configs/mnist.yaml",
                             "run.dir=/shared/run"], env=env, cwd=tmp)
    try:
        if signal_after_start:
            deadline = time.monotonic() + 30
            while not (tmp / "ready").exists():  # the worker is up and has its trap
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.02)
            proc.send_signal(signal.SIGUSR2)  # what --signal=B:USR2@120 does
        return proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()


def log(fake, name: str) -> str:
    path = fake[0] / f"{name}.log"
    return path.read_text() if path.exists() else ""


def test_single_node_builds_torchrun_and_requeues_after_usr2(fake):
    assert submit(fake, "slurm/train.sbatch", signal_after_start=True) == 0
    cmd = log(fake, "torchrun").splitlines()
    assert cmd[0] == ("--standalone --nnodes 1 --nproc_per_node 2 --master_port 24242 -m dgan "
                      "train configs/mnist.yaml run.dir=/shared/run backend.expect_world_size=2")
    assert cmd[1] == "OMP_NUM_THREADS=4"
    assert log(fake, "scontrol") == "requeue 4242\n"


def test_multi_node_rendezvous_on_first_host_and_requeues_after_usr2(fake):
    assert submit(fake, "slurm/train-multinode.sbatch", signal_after_start=True) == 0
    assert log(fake, "srun").startswith("--kill-on-bad-exit=0 --ntasks-per-node=1 bash ")
    assert log(fake, "torchrun").splitlines()[0] == (
        "--nnodes 2 --nproc_per_node 2 --rdzv_backend c10d --rdzv_endpoint node-a:29500 "
        "--rdzv_id 4242 -m dgan train configs/mnist.yaml run.dir=/shared/run "
        "backend.expect_world_size=4")
    assert log(fake, "scontrol") == "show hostnames node-[a,b]\nrequeue 4242\n"


@pytest.mark.parametrize("script", SCRIPTS[:2])
def test_a_finished_run_is_not_requeued(fake, script):
    assert submit(fake, script, signal_after_start=False, worker_exit="0") == 0
    assert "requeue" not in log(fake, "scontrol")


@pytest.mark.parametrize("script", SCRIPTS[:2])
def test_a_crash_is_reported_not_requeued(fake, script):
    assert submit(fake, script, signal_after_start=False, worker_exit="3") == 1
    assert "requeue" not in log(fake, "scontrol")


def test_a_plain_launcher_exit_75_requeues(fake):
    """`python -m dgan train` (no torchrun) exits 75 itself when it was signalled directly."""
    (fake[0] / "bin" / "torchrun").write_text("#!/bin/bash\nexit 75\n")
    assert submit(fake, "slurm/train.sbatch", signal_after_start=False) == 0
    assert log(fake, "scontrol") == "requeue 4242\n"


# Sourced by every non-interactive bash (BASH_ENV): in the scripts under slurm/, `trap`
# returns only once the process started last ($!) is gone, so the launcher has always
# exited before the script reaches its wait loop -- the race a loaded CI machine hit once.
LAUNCHER_GONE_FIRST = """
trap() {
    builtin trap "$@"
    case "${BASH_SOURCE[1]:-}" in
        */slurm/*) while kill -0 "$!" 2>/dev/null; do :; done ;;
    esac
}
"""


@pytest.mark.parametrize("script", SCRIPTS[:2])
@pytest.mark.parametrize("launcher_exit, job_exit, requeued", [(75, 0, True), (3, 3, False)])
def test_a_launcher_that_exits_before_the_wait_loop_keeps_its_exit_status(
        fake, script, launcher_exit, job_exit, requeued):
    tmp, env = fake
    (tmp / "bin" / "torchrun").write_text(f"#!/bin/bash\nexit {launcher_exit}\n")
    (tmp / "bash_env").write_text(LAUNCHER_GONE_FIRST)
    fake = (tmp, dict(env, BASH_ENV=str(tmp / "bash_env")))
    assert submit(fake, script, signal_after_start=False) == job_exit
    assert ("requeue 4242" in log(fake, "scontrol")) == requeued
