"""Backends: how G and D are wrapped, stepped and synchronised across processes.

The trainer talks to one interface:

    backend.prepare(G, D, opt_g, opt_d)
    with backend.phase("D"):                # the other network is frozen
        loss = ...backend.d(...)...         # D through its wrapper (gradient sync)
        backend.backward(loss, "D"); backend.step("D")
    backend.g_module / backend.d_module     # unwrapped networks
    backend.all_reduce(t), backend.barrier(), backend.autocast()

`DDPBackend` uses accelerate for the process group and the DDP wrapper. dgan handles
autocast and loss scaling itself, because a GAN has two optimizers stepped at different
times and accelerate's single scaler assumes one.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

import torch
from torch import nn

log = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class DDPBackend:
    name = "ddp"

    def __init__(self, precision: str = "fp32", cpu: bool = False) -> None:
        from accelerate import Accelerator

        self.accelerator = Accelerator(cpu=cpu, mixed_precision="no")
        self.device = self.accelerator.device
        self.rank = self.accelerator.process_index
        self.local_rank = self.accelerator.local_process_index
        self.world_size = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        self.precision = precision
        self.dtype = DTYPES[precision]
        scale = precision == "fp16"
        self.scalers = {n: torch.amp.GradScaler(self.device.type, enabled=scale) for n in "GD"}

    # -- set-up -------------------------------------------------------------------------
    def prepare(self, g: nn.Module, d: nn.Module, opt_g: torch.optim.Optimizer,
                opt_d: torch.optim.Optimizer) -> None:
        self.g_module, self.d_module = g.to(self.device), d.to(self.device)
        self.g, self.d = self.accelerator.prepare(g, d)
        self.opt = {"G": opt_g, "D": opt_d}
        self.nets = {"G": self.g_module, "D": self.d_module}

    # -- one phase ----------------------------------------------------------------------
    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Train `name` ("G" or "D"): the other network's parameters take no gradient."""
        other = self.nets["D" if name == "G" else "G"]
        other.requires_grad_(False)
        self.nets[name].requires_grad_(True)
        try:
            yield
        finally:
            other.requires_grad_(True)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor, name: str) -> None:
        self.scalers[name].scale(loss).backward()

    def step(self, name: str) -> None:
        opt, scaler = self.opt[name], self.scalers[name]
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    # -- communication ------------------------------------------------------------------
    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Mean over processes."""
        if self.world_size == 1:
            return tensor
        return self.accelerator.reduce(tensor, reduction="mean")

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    # -- state --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {f"scaler_{n}": s.state_dict() for n, s in self.scalers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for n, s in self.scalers.items():
            if state.get(f"scaler_{n}"):
                s.load_state_dict(state[f"scaler_{n}"])

    def close(self) -> None:
        self.accelerator.end_training()


def build_backend(name: str, precision: str) -> DDPBackend:
    if name == "ddp":
        return DDPBackend(precision)
    raise ValueError(f"unknown backend.name {name!r}")
