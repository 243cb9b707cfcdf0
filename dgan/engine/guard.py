"""The non-finite guard: a step whose loss or gradient is NaN or inf changes nothing.

How every rank takes the same decision without a collective of its own:
- `poison(loss)` multiplies a non-finite loss by NaN before its backward, so every gradient
  that loss reaches is NaN, even where the loss was inf but its gradient finite (a
  saturated softplus). The backends' gradient all-reduce then carries the NaN to every
  rank: a loss that is non-finite on one rank only makes the averaged gradient non-finite
  on all of them.
- `grads_finite` tests the averaged gradient (identical on every rank) with one fused norm
  per optimizer step: `torch._foreach_norm` and one sum, read back once. A norm that
  overflows fp32 counts as non-finite too: Adam squares the gradient, so such a step would
  put inf into its state.
- fp16 (ddp): the GradScaler already skips a step whose scaled gradient overflows; a
  poisoned loss lands there too, and the backend reports the scaler's skip, counted once.
- DeepSpeed ZeRO-1/2: the engine's optimizer tests the global norm of the partitioned
  gradients (its own all-reduce) and skips; `engine.was_step_applied()` reports it.

A skipped step also puts back the buffers that the step's forwards may have written
(BatchNorm statistics, StyleGAN2's w_avg and pl_mean, augmentation statistics):
`BufferSnapshot`. `NonFiniteGuard` counts the skipped steps for the log and stops the run
after `train.max_bad_steps` consecutive ones; `all_finite` is the check before a save.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable

import torch
from torch import nn

# Test-only hook: `DGAN_TEST_NONFINITE_LOSS=N` adds inf to D's loss on every step from
# step N on (the step as it begins); `=N@R` on rank R only. Used to test the guard and
# that ranks agree on skipping when only one rank's loss is non-finite.
NONFINITE_ENV = "DGAN_TEST_NONFINITE_LOSS"


class NonFiniteError(RuntimeError):
    """Training cannot continue: non-finite steps in a row, or non-finite weights to save."""


def poison(loss: torch.Tensor) -> torch.Tensor:
    """`loss`, or loss * NaN when it is not finite (no host sync)."""
    factor = torch.where(torch.isfinite(loss.detach()), 1.0, math.nan)
    return loss * factor.to(loss.dtype)


def grads_finite(params: Iterable[nn.Parameter]) -> bool:
    """Whether every gradient of `params` is finite (one host sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return True
    norms = torch._foreach_norm(grads)
    return bool(torch.isfinite(torch.stack(norms).sum()))


def all_finite(tensors: Iterable[torch.Tensor],
               all_reduce: Callable[[torch.Tensor], torch.Tensor],
               device: torch.device) -> bool:
    """Whether every floating-point tensor is finite on every rank (a collective)."""
    checks = [torch.isfinite(t.detach()).all().to(device) for t in tensors
              if t.is_floating_point()]
    bad = torch.zeros((), device=device)
    if checks:
        bad = (~torch.stack(checks)).sum().float()
    return bool(all_reduce(bad).item() == 0)


def nonfinite_hook(step: int, rank: int) -> bool:
    """The `DGAN_TEST_NONFINITE_LOSS` hook: whether this rank's D loss is made inf now."""
    spec = os.environ.get(NONFINITE_ENV)
    if not spec:
        return False
    first, _, only_rank = spec.partition("@")
    return step >= int(first) and (not only_rank or int(only_rank) == rank)


class BufferSnapshot:
    """A copy of the buffers of some modules, to undo a skipped step. Buffers are looked
    up by name each time: a module may replace a buffer instead of updating it in place."""

    def __init__(self, modules: Iterable[nn.Module]) -> None:
        self.modules = list(modules)
        self.saved: list[torch.Tensor] = []

    def _live(self) -> list[torch.Tensor]:
        return list(dict.fromkeys(b for m in self.modules for b in m.buffers()))

    @torch.no_grad()
    def take(self) -> None:
        live = self._live()
        if [b.shape for b in live] != [b.shape for b in self.saved]:
            self.saved = [b.detach().clone() for b in live]
        elif live:
            torch._foreach_copy_(self.saved, live)

    @torch.no_grad()
    def restore(self) -> None:
        live = self._live()
        if live:
            torch._foreach_copy_(live, self.saved)


class NonFiniteGuard:
    """Counts skipped steps; raises NonFiniteError after `max_bad_steps` in a row (0: never)."""

    def __init__(self, max_bad_steps: int) -> None:
        self.max_bad_steps = max_bad_steps
        self.skipped_steps = 0  # in the whole run (kept in checkpoints)
        self.in_a_row = 0

    def update(self, step: int, skipped: list[str]) -> bool:
        """Record step `step`, whose optimizer steps named in `skipped` were not applied;
        True when it was a bad step."""
        if not skipped:
            self.in_a_row = 0
            return False
        self.skipped_steps += 1
        self.in_a_row += 1
        if self.max_bad_steps and self.in_a_row >= self.max_bad_steps:
            raise NonFiniteError(
                f"{self.in_a_row} steps in a row up to step {step} had a non-finite loss or "
                f"gradient (train.max_bad_steps={self.max_bad_steps}); stopped without saving "
                "them. The newest checkpoint holds the last finite weights: lower optim.lr_g / "
                "optim.lr_d or use train.precision=fp32, then run again")
        return True

    def state_dict(self) -> dict[str, int]:
        return {"skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.skipped_steps = int(state.get("skipped_steps", 0))
