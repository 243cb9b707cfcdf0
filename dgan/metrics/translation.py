"""Metrics of translators, on any number of ranks.

Paired (pix2pix), `evaluate_translation`: G against its targets: PSNR, SSIM
(dgan.metrics.quality) and mean absolute error (`l1`, in [-1, 1] units), per image, averaged
over up to `n` pairs; FD and KID of the outputs against the targets (the target domain);
on digits (the built-in demos, or eval.digit_metrics=true) also `digit_class`: the share
of outputs that the built-in digit classifier assigns the sample's own label.

Unpaired (CycleGAN), `evaluate_cycle`: no targets. cycle_l1, the mean |G_BA(G_AB(a)) - a|
and |G_AB(G_BA(b)) - b|; FD and KID of G_AB(a) against domain B's images (keys ..._ab) and
of G_BA(b) against domain A's (..._ba); on digits digit_class_ab / _ba, the share of
G_AB(a) (G_BA(b)) the digit classifier assigns a's (b's) label, and digit_class their mean.

FD/KID follow the rules of generation metrics (dgan.metrics.evaluate, run_eval): the FID
Inception's features when its weights are found (keys fid, kid), else the digit
classifier's (keys fd_digits, kid_digits), and those only on digits; outputs are rounded
to 8-bit levels first, as saved images would be. Left-out metrics get one line on stderr.

The images come in one pass over the shards (every sample once, in a fixed order), split
over the ranks; each rank sums its own, sums are all-reduced and features gathered, so the
result does not depend on the number of processes.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Optional, Sequence

import torch
from omegaconf import DictConfig
from torch import nn

from dgan.metrics.distributed import (all_reduce_sum, broadcast_object, gather_features,
                                      rank_and_world, split_count)
from dgan.metrics.quality import psnr, ssim

EVAL_SEED = 99991  # the order pairs are read in (single pass: each pair once either way)
EVAL_BATCH = 16
PAIRED_METRICS = ("psnr", "ssim", "l1", "digit_class", "fd", "kid")
CYCLE_METRICS = ("cycle_l1", "digit_class", "fd", "kid")
DISTANCES = ("fd", "kid")  # on Inception features, else (digits only) the digit classifier's
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


def _say(line: str) -> None:
    if rank_and_world()[0] == 0:
        sys.stderr.write(f"dgan: eval: {line}\n")


def honest_metrics(cfg: DictConfig, sources: Sequence[tuple[str, Any]], metrics: Sequence[str]
                   ) -> list[str]:
    """`metrics` less those that would mean nothing here, each left out with one line:
    digit_class unless every source (path key, resolved source) holds digits, and fd/kid
    on other data unless the FID Inception weights are found (they would fall back to the
    digit classifier's features)."""
    from dgan.metrics.inception import WEIGHTS_ENV, inception_available
    from dgan.metrics.run_eval import data_are_digits

    chosen = list(metrics)
    not_digits = [f"data.{key} {cfg.data[key]}" for key, source in sources
                  if not data_are_digits(cfg, source, cfg.data[key])]
    if not not_digits:
        return chosen
    skipped = [m for m in chosen if m == "digit_class"
               or (m in DISTANCES and not inception_available())]
    if skipped:
        why = ("eval.digit_metrics=false" if str(cfg.eval.digit_metrics).lower() == "false"
               else f"{', '.join(not_digits)} is not dgan's built-in digits (eval.digit_metrics="
                    "true if it holds digits)")
        how = (f"; for fid/kid give the FID Inception weights with --inception-weights PATH or "
               f"{WEIGHTS_ENV}=PATH" if any(m in DISTANCES for m in skipped) else "")
        _say(f"skipped {', '.join(skipped)}: {why}{how}")
    return [m for m in chosen if m not in skipped]


class _Distances:
    """FD and KID of translations against real images of their target domain, from
    features collected batch by batch on each rank (`add`), gathered in rank order
    (`result`). The feature net: the FID Inception when its weights are found, else the
    digit classifier's features (`honest_metrics` decides whether that is allowed)."""

    def __init__(self, metrics: Sequence[str], channels: int, device: torch.device,
                 classifier: Any = None) -> None:
        from dgan.metrics.digits import DigitClassifier, DigitFeatures
        from dgan.metrics.evaluate import metric_suffix
        from dgan.metrics.inception import InceptionV3FID, inception_available

        self.fd, self.kid = "fd" in metrics, "kid" in metrics
        self.net: Any = None
        if self.fd or self.kid:
            if inception_available():
                self.net = InceptionV3FID(device=device)
            else:
                if classifier is None:
                    with torch.enable_grad():  # trained on first use (then cached)
                        classifier = DigitClassifier.load_or_train(device)
                self.net = DigitFeatures(classifier, channels)
            self.suffix = metric_suffix(self.net)
        self.fake: dict[str, list[torch.Tensor]] = {}
        self.real: dict[str, list[torch.Tensor]] = {}

    @property
    def on(self) -> bool:
        return self.net is not None

    def add(self, name: str, fake: Optional[torch.Tensor], real: Optional[torch.Tensor]
            ) -> None:
        """Features of translations `fake` (named `name`, rounded to 8-bit levels first) and
        of the real images `real` of domain / target set `name`."""
        if not self.on:
            return
        if fake is not None:
            fake = fake.float().add(1).mul(127.5).round().clamp(0, 255).div(127.5).sub(1)
            self.fake.setdefault(name, []).append(self.net(fake).float().cpu())
        if real is not None:
            self.real.setdefault(name, []).append(self.net(real.float()).float().cpu())

    def result(self, pairs: Sequence[tuple[str, str, str]]) -> dict[str, float]:
        """For each (fake name, real name, key tail): FD and KID of those feature sets, keys
        fid / fd_<features> and kid / kid_<features> (+ _std) followed by the tail. Call on
        every rank; the same dict on every rank."""
        from dgan.metrics.core import feature_stats, frechet_distance_from_stats
        from dgan.metrics.core import kernel_inception_distance

        if not self.on:
            return {}

        def gathered(parts: list[torch.Tensor]) -> torch.Tensor:
            return gather_features(torch.cat(parts) if parts else torch.empty(0, self.net.dim))

        fake = {k: gathered(self.fake.get(k, [])) for k, _, _ in pairs}
        real = {k: gathered(self.real.get(k, [])) for _, k, _ in pairs}
        out: dict[str, float] = {}
        if rank_and_world()[0] == 0:
            fd_key = "fid" if self.suffix == "" else f"fd{self.suffix}"
            for f, r, tail in pairs:
                if len(fake[f]) < 2 or len(real[r]) < 2:
                    raise ValueError(f"FD/KID need at least 2 images a side, got "
                                     f"{len(fake[f])} translations and {len(real[r])} real")
                if self.fd:
                    out[fd_key + tail] = frechet_distance_from_stats(
                        feature_stats(fake[f]), feature_stats(real[r]))
                if self.kid:
                    # subsets of at most half of each set, so that they differ and the
                    # spread (kid..._std) says something
                    size = max(2, min(KID_SUBSET_SIZE, len(fake[f]) // 2, len(real[r]) // 2))
                    mean, std = kernel_inception_distance(fake[f], real[r], KID_SUBSETS, size)
                    out[f"kid{self.suffix}{tail}"] = mean
                    out[f"kid{self.suffix}{tail}_std"] = std
        return broadcast_object(out)


def _classifier(chosen: Sequence[str], device: torch.device) -> Any:
    if "digit_class" not in chosen:
        return None
    from dgan.metrics.digits import DigitClassifier

    with torch.enable_grad():  # trained on first use (then cached)
        return DigitClassifier.load_or_train(device)


def _class_hits(classifier: Any, out: torch.Tensor, label: torch.Tensor
                ) -> tuple[float, float]:
    """(images with a label, of those the ones the classifier gives that label)."""
    known = label >= 0  # -1: the shards carry no label for this sample
    hits = (classifier.predict(out)[:, 0] == label.to(out.device)) & known.to(out.device)
    return float(known.sum()), float(hits.sum())


@torch.no_grad()
def evaluate_translation(cfg: DictConfig, g: nn.Module, source: Any, device: torch.device,
                         src_key: str, tgt_key: str, metrics: Optional[Sequence[str]] = None,
                         n: Optional[int] = None) -> dict[str, float]:
    """{metric: value} for `metrics` among psnr, ssim, l1, digit_class (means over pairs),
    fd, kid (keys as in the module's doc) (default: all) and "pairs" (how many were
    compared). Call on every rank."""
    from dgan.data.stream import DataStream

    chosen = honest_metrics(cfg, [("path", source)], list(metrics or PAIRED_METRICS))
    if not chosen:
        return {}
    classifier = _classifier(chosen, device)
    distances = _Distances(chosen, cfg.data.channels, device, classifier)
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
    # pairs, psnr, ssim, l1, labelled, class hits
    sums = torch.zeros(6, dtype=torch.float64, device=device)
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
                labelled, hits = _class_hits(classifier, out, batch["label"][:left])
                sums[4] += labelled
                sums[5] += hits
            distances.add("out", out, y)
    finally:
        stream.close()
        g.train(was)
    all_reduce_sum(sums)
    count = int(sums[0].item())
    if count == 0:
        raise ValueError("no pairs to evaluate: the shards yielded none")
    values = {"psnr": sums[1].item() / count, "ssim": sums[2].item() / count,
              "l1": sums[3].item() / count}
    if "digit_class" in chosen:
        if sums[4].item() == 0:
            chosen.remove("digit_class")
            _say(f"skipped digit_class: the shards of data.path {cfg.data.path} carry no labels")
        else:
            values["digit_class"] = sums[5].item() / sums[4].item()
    values.update(distances.result([("out", "out", "")]))
    _say(f"{count} pairs in {time.perf_counter() - start:.1f} s")
    keys = [m for m in chosen if m not in DISTANCES] + sorted(
        k for k in values if k.startswith(("fid", "fd", "kid")))
    return {**{k: values[k] for k in keys}, "pairs": float(count)}


@torch.no_grad()
def evaluate_cycle(cfg: DictConfig, g: nn.Module, source_a: Any, source_b: Any,
                   device: torch.device, n: Optional[int] = None,
                   metrics: Optional[Sequence[str]] = None) -> dict[str, float]:
    """An unpaired translator, over up to `n` images of `source_a` (domain A) and of
    `source_b`, for `metrics` among cycle_l1, digit_class, fd, kid (default: all):
    cycle_l1_a, the mean per image of |G_BA(G_AB(a)) - a| (in [-1, 1] units), cycle_l1_b
    the B way, cycle_l1 their mean; digit_class_ab / _ba / their mean digit_class; FD/KID
    of G_AB(a) vs B (..._ab) and of G_BA(b) vs A (..._ba); "images" (how many of each
    were compared). `g`: CycleGAN's "G" (its AB and BA). Call on every rank."""
    from dgan.data.stream import DataStream

    chosen = honest_metrics(cfg, [("path", source_a), ("path_b", source_b)],
                            list(metrics or CYCLE_METRICS))
    if not chosen:
        return {}
    classifier = _classifier(chosen, device)
    distances = _Distances(chosen, cfg.data.channels, device, classifier)
    limit = n or cfg.eval.n
    rank, world = rank_and_world()
    per_rank = split_count(limit, rank, world)
    was = g.training
    g.eval()
    start = time.perf_counter()
    # per domain: count, cycle l1, labelled, class hits
    sums = torch.zeros(2, 4, dtype=torch.float64, device=device)
    try:
        for i, (source, there, back, own, other) in enumerate([
                (source_a, g.AB, g.BA, "a", "b"), (source_b, g.BA, g.AB, "b", "a")]):
            stream = DataStream(source, batch_size=EVAL_BATCH, resolution=cfg.data.resolution,
                                channels=cfg.data.channels, seed=EVAL_SEED, rank=rank,
                                world_size=world, workers=0, shuffle_buffer=1, xflip=False,
                                device=device, resampled=False,
                                max_member=cfg.data.max_member_mb << 20)
            try:
                for x, label in stream:
                    left = per_rank - int(sums[i, 0].item())
                    if left <= 0:
                        break
                    x = x[:left]
                    fake = there(x).float()
                    sums[i, 0] += len(x)
                    if "cycle_l1" in chosen:
                        rec = back(fake).float()
                        sums[i, 1] += (rec - x.float()).abs().flatten(1).mean(1).double().sum()
                    if classifier is not None:
                        labelled, hits = _class_hits(classifier, fake, label[:left])
                        sums[i, 2] += labelled
                        sums[i, 3] += hits
                    # translations into `other`'s domain; real images of `own`'s
                    distances.add(other, fake, None)
                    distances.add(own, None, x)
            finally:
                stream.close()
    finally:
        g.train(was)
    all_reduce_sum(sums)
    if sums[0, 0].item() == 0 or sums[1, 0].item() == 0:
        raise ValueError("no images to evaluate: the shards of a domain yielded none")
    values: dict[str, float] = {}
    if "cycle_l1" in chosen:
        la, lb = sums[0, 1].item() / sums[0, 0].item(), sums[1, 1].item() / sums[1, 0].item()
        values.update({"cycle_l1": (la + lb) / 2, "cycle_l1_a": la, "cycle_l1_b": lb})
    if "digit_class" in chosen:
        if sums[0, 2].item() == 0 or sums[1, 2].item() == 0:
            _say("skipped digit_class: the shards of a domain carry no labels")
        else:
            ab, ba = sums[0, 3].item() / sums[0, 2].item(), sums[1, 3].item() / sums[1, 2].item()
            values.update({"digit_class": (ab + ba) / 2, "digit_class_ab": ab,
                           "digit_class_ba": ba})
    # G_AB(a) are translations into B: against B's real images; G_BA(b) against A's
    values.update(distances.result([("b", "b", "_ab"), ("a", "a", "_ba")]))
    _say(f"{int(sums[0, 0].item())} + {int(sums[1, 0].item())} images in "
         f"{time.perf_counter() - start:.1f} s")
    return {**values, "images": float(min(sums[0, 0].item(), sums[1, 0].item()))}
