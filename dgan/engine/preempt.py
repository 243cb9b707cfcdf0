"""Preemption: SIGUSR2 / SIGTERM ask for "save and exit so the scheduler can requeue me".

The handler only sets a flag (anything more inside a signal handler can deadlock: the
signal may land inside a collective, an allocation or a DCP write). The training loop
calls `PreemptionFlag.agreed(all_reduce)` once per step: one all-reduce of a one-element
tensor makes every rank see the request at the same step, even when the scheduler
signalled only some of them. The trainer then saves synchronously and exits with
`REQUEUE_EXIT_CODE`.

SIGUSR1 is left alone (NCCL has used it). torchrun and accelerate forward neither USR
signal to the workers, so batch scripts trap SIGUSR2 and signal the workers themselves
(see slurm/).

`dgan train` installs the flag before its heavy imports (this module imports torch only
when ranks agree), so a signal during start-up is not a kill either: once every rank
is set up the ranks agree on it and exit 75 with nothing new to save. DataLoader workers
ignore these signals (dgan.data.stream), so a signal to the whole process group reaches
the main process only.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
# 75 is EX_TEMPFAIL in sysexits.h: "temporary failure, try again". A dgan process that
# exits with it has written a complete checkpoint and wants to be started again.
REQUEUE_EXIT_CODE = 75
SIGNALS = (signal.SIGUSR2, signal.SIGTERM)
# Test-only hook: `DGAN_TEST_KILL_AT_STEP=N` makes rank 0 SIGKILL itself when step N begins,
# once its pending checkpoint is committed; used to test exact resume after `kill -9`.
KILL_AT_STEP_ENV = "DGAN_TEST_KILL_AT_STEP"
# Test-only hook: `DGAN_TEST_PAUSE_AT=start|N` with `DGAN_TEST_PAUSE_FIFO=PATH` makes rank 0
# open the FIFO PATH and read it to its end, at the start of `dgan train` (after the
# handlers are installed) or when step N begins. The test's open for writing returns only
# once the process has got there, so it can act at that point without timing.
PAUSE_AT_ENV, PAUSE_FIFO_ENV = "DGAN_TEST_PAUSE_AT", "DGAN_TEST_PAUSE_FIFO"


class PreemptionFlag:
    """Installs the handlers on `install()`; `uninstall()` puts the previous ones back."""

    def __init__(self) -> None:
        self.signal_name: Optional[str] = None
        self._previous: dict[int, object] = {}

    def _handler(self, signum: int, frame: Optional[FrameType]) -> None:
        self.signal_name = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def install(self) -> "PreemptionFlag":
        # signal.signal works only in the main thread (a Trainer driven from another thread
        # still trains, without preemption handling)
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handler)
        return self

    def uninstall(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def agreed(self, all_reduce: Callable[["torch.Tensor"], "torch.Tensor"],
               device: "torch.device | str" = "cpu") -> bool:
        """True on every rank when any rank has been signalled (a collective: call on all ranks)."""
        import torch

        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        return bool(all_reduce(flag).item() > 0)


def kill_at_step_hook(step: int, rank: int, before_kill: Callable[[], None]) -> None:
    """The test-only hooks at the start of a step: `DGAN_TEST_KILL_AT_STEP`, then
    `DGAN_TEST_PAUSE_AT` (each does nothing unless its variable is set)."""
    if rank == 0 and os.environ.get(KILL_AT_STEP_ENV) == str(step):
        before_kill()
        os.kill(os.getpid(), signal.SIGKILL)
    pause_hook(str(step), rank)


def pause_hook(point: str, rank: int = 0) -> None:
    """The test-only `DGAN_TEST_PAUSE_AT` hook at `point` ("start" or a step number)."""
    if rank == 0 and os.environ.get(PAUSE_AT_ENV) == point:
        with open(os.environ[PAUSE_FIFO_ENV], "rb") as fifo:
            fifo.read()
