"""What every noise-to-image GAN task shares: G from (z, class), D, G_ema, the grid.

Networks "G" and "D", one optimizer group each; "G_ema" averages G and is what samples,
the sample grid and evaluation use. Class-conditional when `c_dim` > 0 (one-hot labels
in the batch's "label").
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from omegaconf import DictConfig

from dgan.engine.seeding import step_generator
from dgan.tasks.base import Task, one_hot

GRID_SEED = 1234  # fixed latents of the sample grid, the same for every run


class NoiseTask(Task):
    emas: ClassVar[dict[str, str]] = {"G_ema": "G"}

    def __init__(self, cfg: DictConfig, c_dim: int = 0) -> None:
        super().__init__(cfg, c_dim)
        self.grid_z = torch.randn(cfg.log.grid, cfg.model.z_dim,
                                  generator=torch.Generator().manual_seed(GRID_SEED))
        self.grid_c = one_hot(torch.arange(cfg.log.grid) % max(c_dim, 1), c_dim)

    def network_names(self) -> tuple[str, ...]:
        return ("G", "D")

    def build_networks(self) -> dict[str, torch.nn.Module]:
        from dgan.models import build_models

        g, d = build_models(self.cfg, self.c_dim)
        return {"G": g, "D": d}

    def latents(self, step: int, phase: int) -> torch.Tensor:
        """z [grad_accum * batch_size, z_dim] of this rank, `step` and `phase`."""
        n = self.cfg.train.batch_size * self.cfg.train.grad_accum
        gen = step_generator(self.cfg.run.seed, self.backend.rank, step, phase)
        return torch.randn(n, self.cfg.model.z_dim, generator=gen).to(self.backend.device)

    def fake_labels(self, step: int, phase: int) -> torch.Tensor | None:
        """Uniform class labels (one-hot) for this step's fakes; None when unconditional."""
        if not self.c_dim:
            return None
        n = self.cfg.train.batch_size * self.cfg.train.grad_accum
        gen = step_generator(self.cfg.run.seed, self.backend.rank, step, phase)
        return one_hot(torch.randint(0, self.c_dim, (n,), generator=gen),
                       self.c_dim).to(self.backend.device)

    @torch.no_grad()
    def sample_grid(self) -> torch.Tensor:
        device = self.backend.device
        c = self.grid_c.to(device) if self.grid_c is not None else None
        return self.ema_nets["G_ema"](self.grid_z.to(device), c).float()

    def evaluate(self, source: Any) -> dict[str, float]:
        """The configured metrics of G_ema (`eval.metrics`, `eval.n` samples), all ranks."""
        from dgan.metrics.run_eval import evaluate_generator

        return evaluate_generator(self.cfg, self.ema_nets["G_ema"], source, self.backend.device)
