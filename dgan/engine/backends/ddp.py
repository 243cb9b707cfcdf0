"""`ddp`: DistributedDataParallel through accelerate, on CPUs (gloo) or GPUs (NCCL).

accelerate provides the process group and the DDP wrappers. dgan handles autocast,
loss scaling and gradient accumulation itself, because a GAN has two optimizers stepped
at different times and accelerate's single scaler and step counter assume one.

GAN semantics under DDP:
- D step: D runs through its DDP wrapper; G runs unwrapped under `no_grad`.
- G step: G runs through its DDP wrapper; D runs unwrapped (`nets["D"]`) with its
  parameters frozen, so no gradient reaches D and D's reducer is not involved.
- Non-final micro-batches run under `no_sync` of both wrappers, so the all-reduce
  (a mean over processes) happens once per optimizer step.
- R1 differentiates D's output w.r.t. the input (`autograd.grad`, no parameter
  gradients, so DDP's hooks do not fire) and the penalty's double backward then
  accumulates into D's parameters once, together with the main loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from dgan.engine import guard
from dgan.engine.backends.base import Backend


class DDPBackend(Backend):
    name = "ddp"

    def __init__(self, precision: str = "fp32", grad_accum: int = 1) -> None:
        from accelerate import Accelerator

        super().__init__(precision, grad_accum)
        # cpu=True without CUDA: otherwise accelerate sees LOCAL_RANK, finds no GPU, and
        # leaves every process on its own (distributed type NO) without any warning.
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no")
        self.device = self.accelerator.device
        self.rank = self.accelerator.process_index
        self.local_rank = self.accelerator.local_process_index
        self.world_size = self.accelerator.num_processes
        self.scalers: dict[str, torch.amp.GradScaler] = {}  # per optimizer group

    def _wrap(self, nets: dict[str, nn.Module]) -> None:
        self.nets = nets
        wrapped = self.accelerator.prepare(*nets.values())
        self.wrapped = dict(zip(nets, wrapped if len(nets) > 1 else (wrapped,)))
        scale = self.precision == "fp16"
        self.scalers = {g: torch.amp.GradScaler(self.device.type, enabled=scale)
                        for g in self.groups}

    @contextlib.contextmanager
    def micro_batch(self, last: bool) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            if not last:
                for wrapped in self.wrapped.values():
                    stack.enter_context(self.accelerator.no_sync(wrapped))
            yield

    def backward(self, loss: torch.Tensor, name: str) -> None:
        self.scalers[name].scale(self.guarded_loss(loss, name) / self.grad_accum).backward()

    def step(self, name: str) -> bool:
        opt, scaler = self.opt[name], self.scalers[name]
        if scaler.is_enabled():
            # fp16: the scaler skips an overflowing step itself and lowers its scale
            scale = scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            applied = scaler.get_scale() >= scale
        else:
            params = (p for group in opt.param_groups for p in group["params"])
            applied = guard.grads_finite(params)
            if applied:
                opt.step()
        opt.zero_grad(set_to_none=True)
        return self._applied(name, applied)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update({f"scaler_{n}": s.state_dict() for n, s in self.scalers.items()})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for n, s in self.scalers.items():
            if state.get(f"scaler_{n}"):
                s.load_state_dict(state[f"scaler_{n}"])
