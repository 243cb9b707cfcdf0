"""Evaluation of a training run: during training (every `eval.every` steps) and afterwards
(`dgan eval --run RUN_DIR`). Glue between the run's config, G_ema, its shards and
`dgan.metrics.evaluate`.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
from omegaconf import DictConfig
from torch import nn

from dgan.metrics.distributed import rank_and_world, sample_latents
from dgan.metrics.evaluate import evaluate

EVAL_SEED = 2024  # latents of evaluation samples: the same for every run and world size


def make_generate(g: nn.Module, z_dim: int, device: torch.device,
                  seed: int = EVAL_SEED) -> Callable[[int, int], torch.Tensor]:
    """generate(start, count): images of global samples start..start+count-1 in [-1, 1]."""

    c_dim = getattr(g, "c_dim", 0)

    @torch.no_grad()
    def generate(start: int, count: int) -> torch.Tensor:
        z = sample_latents(seed, start, count, (z_dim,), device)
        # A conditional G cycles through the classes by sample index: balanced, and the
        # same whatever the world size.
        c = (torch.nn.functional.one_hot(torch.arange(start, start + count, device=device) % c_dim,
                                         c_dim).float() if c_dim else None)
        return g(z, c).float()

    return generate


def real_stream(cfg: DictConfig, source: Any, device: torch.device) -> Any:
    """This rank's share of real images for evaluation, in a fixed order (own seed)."""
    from dgan.data.stream import DataStream

    rank, world = rank_and_world()
    return DataStream(source, batch_size=256, resolution=cfg.data.resolution,
                      channels=cfg.data.channels, seed=EVAL_SEED, rank=rank, world_size=world,
                      workers=0, shuffle_buffer=cfg.data.shuffle_buffer, xflip=False,
                      device=device, max_member=cfg.data.max_member_mb << 20)


def evaluate_generator(cfg: DictConfig, g: nn.Module, source: Any, device: torch.device,
                       metrics: Optional[Sequence[str]] = None, n: Optional[int] = None,
                       **kw: Any) -> dict[str, float]:
    """Run `evaluate` for G (call on every rank). Real statistics are cached per shard set."""
    was_training = g.training
    g.eval()
    try:
        return evaluate(make_generate(g, cfg.model.z_dim, device), real_stream(cfg, source, device),
                        list(metrics or cfg.eval.metrics), n or cfg.eval.n,
                        cache_key=list(source.urls), device=device, **kw)
    finally:
        g.train(was_training)
