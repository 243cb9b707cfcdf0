"""Metrics of a paired translation G against its targets: PSNR, SSIM (dgan.metrics.quality)
and mean absolute error (`l1`, in [-1, 1] units), per image, averaged over up to `n` pairs;
on digits (the built-in demos, or eval.digit_metrics=true) also `digit_class`: the share of
outputs that the built-in digit classifier assigns the sample's own label.

The pairs come in one pass over the shards (every pair once, in a fixed order), split over
the ranks; each rank sums its own and the sums are all-reduced, so the result does not
depend on the number of processes.

Unpaired translation (CycleGAN) has no targets: `evaluate_cycle` gives cycle_l1, the mean
|G_BA(G_AB(a)) - a| and |G_AB(G_BA(b)) - b|, the same way (FD/KID of translations: not yet).
"""

from __future__ import annotations

import sys
import time
from typing import Any, Optional, Sequence

import torch
from omegaconf import DictConfig
from torch import nn

from dgan.metrics.distributed import rank_and_world, split_count
from dgan.metrics.quality import psnr, ssim

EVAL_SEED = 99991  # the order pairs are read in (single pass: each pair once either way)
EVAL_BATCH = 16


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


@torch.no_grad()
def evaluate_translation(cfg: DictConfig, g: nn.Module, source: Any, device: torch.device,
                         src_key: str, tgt_key: str, metrics: Optional[Sequence[str]] = None,
                         n: Optional[int] = None) -> dict[str, float]:
    """{metric: mean over pairs} for `metrics` among psnr, ssim, l1 (default: all three) and
    "pairs" (how many were compared). Call on every rank."""
    from dgan.data.stream import DataStream

    from dgan.metrics.run_eval import data_are_digits

    chosen = list(metrics or ("psnr", "ssim", "l1", "digit_class"))
    if "digit_class" in chosen and not data_are_digits(cfg, source):
        chosen.remove("digit_class")
        if rank_and_world()[0] == 0:
            sys.stderr.write(f"dgan: eval: skipped digit_class: data.path {cfg.data.path} is "
                             "not dgan's built-in digits (eval.digit_metrics=true if it holds "
                             "digits)\n")
    if not chosen:
        return {}
    classifier = None
    if "digit_class" in chosen:
        from dgan.metrics.digits import DigitClassifier

        with torch.enable_grad():  # trained on first use (then cached)
            classifier = DigitClassifier.load_or_train(device)
    limit = n or cfg.eval.n
    rank, world = rank_and_world()
    stream = DataStream(source, batch_size=EVAL_BATCH, resolution=cfg.data.resolution,
                        channels=cfg.data.channels, seed=EVAL_SEED, rank=rank,
                        world_size=world, workers=0, shuffle_buffer=1, xflip=False,
                        device=device, resampled=False, max_member=cfg.data.max_member_mb << 20,
                        keys=("a", "b"))
    was = g.training
    g.eval()
    start = time.perf_counter()
    sums = torch.zeros(5, dtype=torch.float64, device=device)  # pairs, psnr, ssim, l1, class
    per_rank = split_count(limit, rank, world)  # this rank's share of the first `limit` pairs
    try:
        for batch in stream:
            left = per_rank - int(sums[0].item())
            if left <= 0:
                break
            x, y = batch[src_key][:left], batch[tgt_key][:left]
            out = g(x).float()
            sums[0] += len(x)
            sums[1] += psnr(out, y).double().sum()
            if "ssim" in chosen:
                sums[2] += ssim(out, y).double().sum()
            sums[3] += (out - y.float()).abs().flatten(1).mean(1).double().sum()
            if classifier is not None:
                label = batch["label"][:left].to(device)
                sums[4] += (classifier.predict(out)[:, 0] == label).double().sum()
    finally:
        stream.close()
        g.train(was)
    _all_reduce(sums)
    count = int(sums[0].item())
    if count == 0:
        raise ValueError("no pairs to evaluate: the shards yielded none")
    values = {"psnr": sums[1].item() / count, "ssim": sums[2].item() / count,
              "l1": sums[3].item() / count, "digit_class": sums[4].item() / count}
    if rank == 0:
        sys.stderr.write(f"dgan: eval: {count} pairs in {time.perf_counter() - start:.1f} s\n")
    return {**{m: values[m] for m in chosen}, "pairs": float(count)}


@torch.no_grad()
def evaluate_cycle(cfg: DictConfig, g: nn.Module, source_a: Any, source_b: Any,
                   device: torch.device, n: Optional[int] = None) -> dict[str, float]:
    """An unpaired translator's cycle consistency: cycle_l1_a, the mean per image of
    |G_BA(G_AB(a)) - a| (in [-1, 1] units) over up to `n` images of `source_a`; cycle_l1_b
    the B way over `source_b`; cycle_l1 their mean; "images" (how many of each were
    compared). `g`: CycleGAN's "G" (its AB and BA). Call on every rank."""
    from dgan.data.stream import DataStream

    limit = n or cfg.eval.n
    rank, world = rank_and_world()
    per_rank = -(-limit // world)
    was = g.training
    g.eval()
    start = time.perf_counter()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # count a, l1 a, count b, l1 b
    try:
        for i, (source, there, back) in enumerate([(source_a, g.AB, g.BA),
                                                    (source_b, g.BA, g.AB)]):
            stream = DataStream(source, batch_size=EVAL_BATCH, resolution=cfg.data.resolution,
                                channels=cfg.data.channels, seed=EVAL_SEED, rank=rank,
                                world_size=world, workers=0, shuffle_buffer=1, xflip=False,
                                device=device, resampled=False,
                                max_member=cfg.data.max_member_mb << 20)
            try:
                for x, _ in stream:
                    left = per_rank - int(sums[2 * i].item())
                    if left <= 0:
                        break
                    x = x[:left]
                    rec = back(there(x)).float()
                    sums[2 * i] += len(x)
                    sums[2 * i + 1] += (rec - x.float()).abs().flatten(1).mean(1).double().sum()
            finally:
                stream.close()
    finally:
        g.train(was)
    _all_reduce(sums)
    if sums[0].item() == 0 or sums[2].item() == 0:
        raise ValueError("no images to evaluate: the shards of a domain yielded none")
    la, lb = sums[1].item() / sums[0].item(), sums[3].item() / sums[2].item()
    if rank == 0:
        sys.stderr.write(f"dgan: eval: {int(sums[0].item())} + {int(sums[2].item())} images "
                         f"in {time.perf_counter() - start:.1f} s\n")
    return {"cycle_l1": (la + lb) / 2, "cycle_l1_a": la, "cycle_l1_b": lb,
            "images": float(min(sums[0].item(), sums[2].item()))}
