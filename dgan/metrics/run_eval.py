"""Evaluation of a training run: during training (every `eval.every` steps) and afterwards
(`dgan eval --run RUN_DIR`). Glue between the run's config, G_ema, its shards and
`dgan.metrics.evaluate`.

Digit-classifier metrics are computed only on digits (`eval.digit_metrics`): on other
data they would be numbers without meaning (digit classes of photographs), so they are
left out with one line that says why and how to get FID instead.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Optional, Sequence

import torch
from omegaconf import DictConfig
from torch import nn

from dgan.metrics.distributed import rank_and_world, sample_latents
from dgan.metrics.evaluate import evaluate
from dgan.metrics.inception import WEIGHTS_ENV, inception_available

EVAL_SEED = 2024  # latents of evaluation samples: the same for every run and world size
# Metrics that only the digit classifier gives; fd/kid/pr need it without Inception.
DIGIT_ONLY = ("fd_digits", "coverage", "modes")
_MAIN = ("fd", "kid", "pr")
_said: set[str] = set()  # skip lines already written by this process (once per run)


def data_are_digits(cfg: DictConfig, source: Any, path: Optional[str] = None) -> bool:
    """Whether digit-classifier metrics mean something for this run's data:
    eval.digit_metrics true/false, or auto: the data are dgan's built-in digits
    (data.path builtin:..., or shards whose index.json says they were made from them).
    `path`: the path `source` was resolved from, when not data.path (e.g. data.path_b)."""
    mode = str(cfg.eval.digit_metrics).lower()
    if mode != "auto":
        return mode == "true"
    given = path if path is not None else cfg.data.path
    return (str(given or "builtin:mnist").startswith("builtin:")
            or getattr(source, "builtin", None) is not None)


def select_metrics(cfg: DictConfig, source: Any, metrics: Sequence[str],
                   inception: bool) -> tuple[list[str], Optional[str]]:
    """(the metrics to compute, a one-line reason for those left out or None).

    On data that are not digits, digit metrics are left out, and so are fd/kid/pr when
    no Inception weights are found (they would fall back to the digit classifier)."""
    if data_are_digits(cfg, source):
        return list(metrics), None
    skipped = [m for m in metrics if m in DIGIT_ONLY or (m in _MAIN and not inception)]
    if not skipped:
        return list(metrics), None
    if str(cfg.eval.digit_metrics).lower() == "false":
        why = "eval.digit_metrics=false"
    else:
        why = (f"data.path {cfg.data.path} is not dgan's built-in digits, so digit-classifier "
               "features and classes would mean nothing (eval.digit_metrics=true if it holds "
               "28x28 digits)")
    how = ""
    if any(m in _MAIN for m in skipped):
        how = (f"; for fid/kid/precision/recall give the FID Inception weights with "
               f"--inception-weights PATH or {WEIGHTS_ENV}=PATH (docs/metrics.md)")
    return ([m for m in metrics if m not in skipped],
            f"skipped {', '.join(skipped)}: {why}{how}")


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
    """Run `evaluate` for G (call on every rank), with a progress bar or lines and the
    elapsed time on rank 0. Real statistics are cached per shard set. Metrics that
    `select_metrics` leaves out are reported once per process on stderr; when none is
    left the result is {}."""
    chosen, skipped = select_metrics(cfg, source, list(metrics or cfg.eval.metrics),
                                     inception_available())
    if skipped and skipped not in _said and rank_and_world()[0] == 0:
        _said.add(skipped)
        sys.stderr.write(f"dgan: eval: {skipped}\n")
    if not chosen:
        return {}
    was_training = g.training
    g.eval()
    try:
        return evaluate(make_generate(g, cfg.model.z_dim, device), real_stream(cfg, source, device),
                        chosen, n or cfg.eval.n, cache_key=list(source.urls), device=device,
                        progress=True, **kw)
    finally:
        g.train(was_training)
