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
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Callable, Optional

import torch

log = logging.getLogger(__name__)
# 75 is EX_TEMPFAIL in sysexits.h: "temporary failure, try again". A dgan process that
# exits with it has written a complete checkpoint and wants to be started again.
REQUEUE_EXIT_CODE = 75
SIGNALS = (signal.SIGUSR2, signal.SIGTERM)
# Test-only hook: `DGAN_TEST_KILL_AT_STEP=N` makes rank 0 SIGKILL itself when step N begins,
# once its pending checkpoint is committed; used to test exact resume after `kill -9`.
KILL_AT_STEP_ENV = "DGAN_TEST_KILL_AT_STEP"


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

    def agreed(self, all_reduce: Callable[[torch.Tensor], torch.Tensor],
               device: torch.device | str = "cpu") -> bool:
        """True on every rank when any rank has been signalled (a collective: call on all ranks)."""
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        return bool(all_reduce(flag).item() > 0)


def kill_at_step_hook(step: int, rank: int, before_kill: Callable[[], None]) -> None:
    """The test-only `DGAN_TEST_KILL_AT_STEP` hook (does nothing unless the variable is set)."""
    if rank == 0 and os.environ.get(KILL_AT_STEP_ENV) == str(step):
        before_kill()
        os.kill(os.getpid(), signal.SIGKILL)
