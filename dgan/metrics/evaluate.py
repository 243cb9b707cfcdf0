"""One call that turns a generator and real data into metric values, on any number of ranks.

Flow: every rank generates its contiguous share of the n global sample indices and
embeds it; features are gathered in index order (so the result does not depend on
the world size); real features come from the cache or are computed the same way;
rank 0 computes the metrics and broadcasts the dict.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor

from dgan.metrics.cache import load_real_stats, real_stats_key, save_real_stats
from dgan.metrics.core import (
    FeatureStats,
    feature_stats,
    frechet_distance_from_stats,
    kernel_inception_distance,
    precision_recall,
)
from dgan.metrics.digits import DigitClassifier, DigitFeatures, coverage_metrics
from dgan.metrics.distributed import (
    broadcast_object,
    gather_features,
    rank_and_world,
    split_count,
    split_range,
)
from dgan.metrics.feature_net import FeatureNet, to_model_images
from dgan.metrics.inception import WEIGHTS_ENV, InceptionV3FID, inception_available
from dgan.metrics.progress import EvalProgress
from dgan.metrics.stacked import modes_from_digits

METRICS = ("fd", "kid", "pr", "fd_digits", "coverage", "modes")
# Metrics computed on the main feature net (Inception, else the digit fallback).
_MAIN = ("fd", "kid", "pr")

Generate = Callable[[int, int], Tensor]


def metric_suffix(net: FeatureNet) -> str:
    """'' for the FID Inception (keys fid/kid/precision/recall), '_digits' for the digit
    classifier, '_<name>' otherwise, so a key always says which features it used."""
    if isinstance(net, InceptionV3FID):
        return ""
    if isinstance(net, DigitFeatures):
        return "_digits"
    return f"_{net.name}"


def _fd_key(suffix: str) -> str:
    return "fid" if suffix == "" else f"fd{suffix}"


@dataclass
class _Request:
    """One feature net and what to compute with it."""

    net: FeatureNet
    suffix: str
    fd: bool = False
    kid: bool = False
    pr: bool = False
    fake: list[Tensor] = field(default_factory=list)


def _real_batches(real: Iterable[Tensor] | Tensor, n_real: int) -> Iterable[Tensor]:
    """This rank's real images, at most its share of n_real, as model-range batches.

    A Tensor is the whole real set on every rank, sliced here by rank; an iterable
    must already yield this rank's share (as the WebDataset stream does).
    """
    rank, world = rank_and_world()
    if isinstance(real, Tensor):
        start, count = split_range(min(n_real, real.shape[0]), rank, world)
        for lo in range(start, start + count, 256):
            yield to_model_images(real[lo : min(lo + 256, start + count)])
        return
    remaining = split_count(n_real, rank, world)
    for item in real:
        if remaining <= 0:
            return
        batch = item[0] if isinstance(item, (tuple, list)) else item
        batch = to_model_images(batch[:remaining])
        remaining -= batch.shape[0]
        yield batch


def _real_features(
    requests: list[_Request], real: Iterable[Tensor] | Tensor, n_real: int, device: torch.device,
    progress: EvalProgress,
) -> list[Tensor]:
    parts: list[list[Tensor]] = [[] for _ in requests]
    rank, world = rank_and_world()
    with progress.phase("real data", split_count(n_real, rank, world)) as update:
        for batch in _real_batches(real, n_real):
            batch = batch.to(device)
            for i, req in enumerate(requests):
                parts[i].append(req.net(batch).float().cpu())
            update(batch.shape[0])
    return [
        gather_features(torch.cat(p) if p else torch.empty(0, req.net.dim))
        for p, req in zip(parts, requests)
    ]


def evaluate(
    generate: Generate,
    real: Iterable[Tensor] | Tensor | None,
    metrics: Sequence[str],
    n: int,
    feature_net: FeatureNet | None = None,
    cache_key: str | Sequence[str] | None = None,
    *,
    n_real: int | None = None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    digit_classifier: DigitClassifier | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    pr_k: int = 3,
    quantize: bool = True,
    progress: bool = False,
) -> dict[str, float]:
    """Evaluate a generator; call on every rank (same arguments), returns the same dict
    on every rank.

    generate(start_index, count) -> (count, C, H, W) float images in [-1, 1] for global
    sample indices start_index .. start_index + count - 1; it should seed each sample
    by its index (see `sample_latents`) so results do not depend on world size.
    real: (N, C, H, W) tensor (uint8 or [-1, 1] float; every rank passes the whole set)
    or an iterable of batches / (batch, label) tuples yielding this rank's share.
    metrics: any of 'fd', 'kid', 'pr' (with `feature_net`; when None, the FID Inception
    if its weights are available, else the digit classifier with keys ending in
    '_digits'), 'fd_digits', 'coverage' (digit classes of the samples, confident
    share), 'modes' (Stacked MNIST; use n = 26,000 for the published protocol).
    n: generated samples; n_real: real samples (default n).
    cache_key: identity of the real data (a dataset id string or the shard paths) for
    the real-statistics cache (`real_stats_key`); None computes real features each time.
    quantize: round generated images to 8-bit levels first, as published numbers are
    computed from saved images and real data is 8-bit too.
    progress: show a bar per phase on a terminal (else a line at the start, one a minute,
    and one with the elapsed time at the end), on rank 0, on stderr.
    Keys: fid / fd_<net>, kid[_<net>] and kid..._std, precision..., recall...,
    fd_digits, coverage/0..9, classes_covered, coverage_min, coverage_kl, confident,
    modes, modes_kl.
    """
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {METRICS}")
    device = torch.device(device)
    if n < 2:
        raise ValueError(f"need n >= 2 generated samples, got {n}")
    n_real = n_real or n
    rank, world = rank_and_world()
    shown = EvalProgress(progress and rank == 0)
    if not shown.tty:
        shown.line(f"dgan: eval: {', '.join(metrics)} on {n} samples ...")
    wants_main = any(m in metrics for m in _MAIN)
    if feature_net is None and wants_main:
        if inception_available():
            feature_net = InceptionV3FID(device=device)
        elif rank == 0:
            warnings.warn(
                f"FID Inception weights not found (set {WEIGHTS_ENV}); fd/kid/pr use the "
                "digit classifier's features and are reported as fd_digits, kid_digits, "
                "precision_digits, recall_digits",
                stacklevel=2,
            )
    needs_digits = (
        "fd_digits" in metrics or "coverage" in metrics or "modes" in metrics
        or (wants_main and feature_net is None)
    )  # fmt: skip
    if needs_digits and digit_classifier is None:
        digit_classifier = DigitClassifier.load_or_train(device=device, verbose=rank == 0)

    wants_probs = "coverage" in metrics or "modes" in metrics
    start, count = split_range(n, rank, world)
    requests: list[_Request] = []
    probs: list[Tensor] = []
    local_shape: tuple[int, int] | None = None
    with shown.phase("samples", count) as update:
        for lo in range(start, start + count, batch_size):
            images = to_model_images(generate(lo, min(batch_size, start + count - lo)))
            images = images.to(device)
            if quantize:
                images = images.add(1).mul(127.5).round().clamp(0, 255).div(127.5).sub(1)
            if local_shape is None:
                local_shape = (images.shape[1], images.shape[-1])
                requests = _plan(metrics, feature_net, digit_classifier, images.shape[1])
            for req in requests:
                req.fake.append(req.net(images).float().cpu())
            if wants_probs:
                probs.append(digit_classifier.probs(images).cpu())
            update(images.shape[0])
    # Rank 0 always has samples; a rank with none (n < world) takes its shapes.
    channels, resolution = broadcast_object(local_shape)
    if "modes" in metrics and channels != 3:  # checked on every rank: no rank may hang
        raise ValueError(f"'modes' needs 3-channel (Stacked MNIST) samples, got {channels}")
    if local_shape is None:
        requests = _plan(metrics, feature_net, digit_classifier, channels)
        if wants_probs:
            probs = [torch.empty(0, channels, 10)]
    fake = [gather_features(torch.cat(r.fake) if r.fake else torch.empty(0, r.net.dim))
            for r in requests]  # fmt: skip
    fake_probs = gather_features(torch.cat(probs)) if probs else None

    real_stats = _real_side(requests, real, n_real, cache_key, resolution, device, shown)

    results: dict[str, float] = {}
    if rank == 0:
        for req, feats, (stats, real_feats) in zip(requests, fake, real_stats):
            # On the evaluation device: k-NN over 50k x 50k Inception features is
            # minutes on a CPU and seconds on a GPU.
            feats = feats.to(device)
            real_feats = real_feats.to(device) if real_feats is not None else None
            if req.fd:
                results[_fd_key(req.suffix)] = frechet_distance_from_stats(
                    feature_stats(feats), stats
                )
            if req.kid:
                mean, std = kernel_inception_distance(
                    feats, real_feats, kid_subsets, kid_subset_size
                )
                results[f"kid{req.suffix}"], results[f"kid{req.suffix}_std"] = mean, std
            if req.pr:
                p, r = precision_recall(real_feats, feats, k=pr_k)
                results[f"precision{req.suffix}"], results[f"recall{req.suffix}"] = p, r
        if "coverage" in metrics:
            results.update(coverage_metrics(fake_probs))
        if "modes" in metrics:
            found = modes_from_digits(fake_probs.argmax(-1))
            results["modes"], results["modes_kl"] = float(found["modes"]), found["kl"]
    results = broadcast_object(results)
    shown.finish(f"{', '.join(metrics)} on {n} samples")
    return results


def _plan(
    metrics: Sequence[str],
    feature_net: FeatureNet | None,
    digit_classifier: DigitClassifier | None,
    channels: int,
) -> list[_Request]:
    """Which feature nets to run and what each one computes."""
    requests: list[_Request] = []
    digit_req = None
    if "fd_digits" in metrics or (feature_net is None and any(m in metrics for m in _MAIN)):
        digit_req = _Request(DigitFeatures(digit_classifier, channels), "_digits")
        digit_req.fd = "fd_digits" in metrics
        requests.append(digit_req)
    wants = {m: m in metrics for m in _MAIN}
    if any(wants.values()):
        if feature_net is None:
            main = digit_req
        else:
            main = _Request(feature_net, metric_suffix(feature_net))
            requests.append(main)
        main.fd = main.fd or wants["fd"]
        main.kid, main.pr = wants["kid"], wants["pr"]
    return requests


def _real_side(
    requests: list[_Request],
    real: Iterable[Tensor] | Tensor | None,
    n_real: int,
    cache_key: str | Sequence[str] | None,
    resolution: int,
    device: torch.device,
    progress: EvalProgress,
) -> list[tuple[FeatureStats | None, Tensor | None]]:
    """(real stats, real features or None) per request, from the cache where possible.
    Only rank 0's values are meaningful; other ranks take part in the gathers."""
    rank, _ = rank_and_world()
    keys = [
        real_stats_key(cache_key, r.net.name, resolution, n_real) if cache_key else None
        for r in requests
    ]
    loaded: list[tuple[FeatureStats, Tensor | None] | None] = [None] * len(requests)
    if rank == 0:
        for i, (req, key) in enumerate(zip(requests, keys)):
            if key is not None:
                loaded[i] = load_real_stats(key, need_features=req.kid or req.pr)
    missing = broadcast_object([i for i, hit in enumerate(loaded) if hit is None])
    if missing:
        if real is None:
            raise ValueError("real data is needed: not every real statistic is cached")
        feats = _real_features([requests[i] for i in missing], real, n_real, device, progress)
        for i, f in zip(missing, feats):
            if f.shape[0] < 2:
                raise ValueError(f"only {f.shape[0]} real samples; need at least 2")
            keep = f if requests[i].kid or requests[i].pr else None
            loaded[i] = (feature_stats(f), keep)
            if rank == 0 and keys[i] is not None:
                save_real_stats(keys[i], loaded[i][0], keep)
    return [entry if entry is not None else (None, None) for entry in loaded]


def format_table(results: dict[str, float]) -> str:
    """A two-column text table of `evaluate` results; the coverage histogram
    (coverage/0..9) is folded into one row."""
    rows: list[tuple[str, str]] = []
    histogram = [v for k, v in sorted(results.items()) if k.startswith("coverage/")]
    for key, value in results.items():
        if key.startswith("coverage/"):
            continue
        if key in ("modes", "classes_covered"):
            rows.append((key, f"{int(value)}"))
        else:
            small = 0 < abs(value) < 1e-3
            rows.append((key, f"{value:.3e}" if small else f"{value:.4f}"))
    if histogram:
        rows.append(("coverage (0..9)", " ".join(f"{v:.3f}" for v in histogram)))
    width = max(len(k) for k, _ in rows) if rows else 6
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  -----"]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)
