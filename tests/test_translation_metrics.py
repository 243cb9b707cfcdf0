"""Translation metrics beyond PSNR/SSIM (dgan.metrics.translation): FD/KID of translations
against the target domain (pix2pix: the targets; cyclegan: G_AB(a) vs B, G_BA(b) vs A),
digit_class of CycleGAN's two ways, the honest-metrics rules, the metric names that
keep_best accepts, and the built-in CycleGAN demo's disjoint halves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dgan.cli import _resolve_data, _resolve_second
from dgan.config import ConfigError, load_config, metric_direction
from dgan.data.builtin import (
    DIGITS,
    bold,
    fit_resolution,
    halves,
    load_mnist,
    make_builtin,
    outlines,
)
from dgan.data.shards import encode_image, write_shards
from dgan.metrics.core import frechet_distance
from dgan.metrics.digits import DigitClassifier, DigitFeatures
from dgan.metrics.translation import evaluate_cycle, evaluate_translation

P2P = "configs/pix2pix_mnist.yaml"
CYC = "configs/cyclegan_mnist.yaml"
N = 64  # images evaluated per set


class Const(nn.Module):
    """Every output a black image (background): a translator that ignores its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, -1.0)


class Pair(nn.Module):
    """A CycleGAN "G" container from two given translators."""

    def __init__(self, ab: nn.Module, ba: nn.Module) -> None:
        super().__init__()
        self.AB, self.BA = ab, ba


def _write(out, images, labels, paired_with=None, builtin=True):
    """Shards of 32x32 digits; with `paired_with`, pairs (a: paired_with[i], b: images[i])."""
    if paired_with is None:
        samples = ((encode_image(images[i]), "png", int(labels[i])) for i in range(len(images)))
    else:
        samples = (({"a": encode_image(paired_with[i]), "b": encode_image(images[i])}, "png",
                    int(labels[i])) for i in range(len(images)))
    extra = {"builtin": "mnist"} if builtin else {}
    if paired_with is not None:
        extra["images"] = ["a", "b"]
    write_shards(samples, out, "t", resolution=32, channels=1, labels=DIGITS,
                 extra=lambda: extra)
    return str(out)


@pytest.fixture(scope="module")
def digits():
    images, labels = load_mnist()
    first, second = halves(labels)
    pick = np.random.default_rng(0)
    one, two = pick.choice(first, N, replace=False), pick.choice(second, N, replace=False)
    x = fit_resolution(images, 32)
    return {"one": (x[one], labels[one]), "two": (x[two], labels[two])}


@pytest.fixture(scope="module")
def judge():
    return DigitClassifier.load_or_train(verbose=False)


def _unit(images):
    return torch.from_numpy(images).float()[:, None] / 127.5 - 1


def test_pix2pix_fd_kid_are_of_the_outputs_against_the_targets(tmp_path, digits, judge):
    images, labels = digits["one"]
    same = _write(tmp_path / "same", images, labels, paired_with=images)  # a == b
    edges = _write(tmp_path / "edges", images, labels, paired_with=outlines(images))
    cfg = load_config(P2P, [f"data.path={same}", "eval.digit_metrics=true"])
    src = _resolve_data(cfg)
    ident = evaluate_translation(cfg, nn.Identity(), src, torch.device("cpu"), "a", "b", n=N)
    assert ident["pairs"] == N and ident["psnr"] == 100
    # identity on the targets themselves: the same features, FD ~ 0; KID's unbiased
    # estimate of identical sets falls below 0 (its cross term counts each image with itself)
    assert abs(ident["fd_digits"]) < 1e-3 and ident["kid_digits"] <= 0
    assert ident["digit_class"] > 0.95  # the true targets are known by the classifier
    const = evaluate_translation(cfg, Const(), src, torch.device("cpu"), "a", "b", n=N)
    assert const["fd_digits"] > 300 and const["kid_digits"] > 10  # measured: 866, 96
    assert const["digit_class"] < 0.25  # one class for every image
    # outlines in, the outlines out (identity): FD of the outlines against the digits,
    # exactly what the features of the two sets give (not against the inputs: that is 0)
    cfg = load_config(P2P, [f"data.path={edges}", "eval.digit_metrics=true"])
    got = evaluate_translation(cfg, nn.Identity(), _resolve_data(cfg), torch.device("cpu"),
                               "a", "b", ["fd", "digit_class"], n=N)
    feats = DigitFeatures(judge)
    want = frechet_distance(feats(_unit(outlines(images))), feats(_unit(images)))
    assert got["fd_digits"] == pytest.approx(want, rel=1e-4) and got["fd_digits"] > 5
    assert set(got) == {"fd_digits", "digit_class", "pairs"}
    assert got["digit_class"] == pytest.approx(
        float((judge.predict(_unit(outlines(images)))[:, 0] == torch.from_numpy(labels)
               .long()).float().mean()))


def test_cyclegan_fd_kid_and_digit_class_each_way(tmp_path, digits):
    (xa, ya), (xb, yb) = digits["one"], digits["two"]
    cfg = load_config(CYC, [f"data.path={_write(tmp_path / 'a', xa, ya)}",
                            f"data.path_b={_write(tmp_path / 'b', xb, yb)}"])
    a, b = _resolve_data(cfg), _resolve_second(cfg)
    cpu = torch.device("cpu")
    both = evaluate_cycle(cfg, Pair(nn.Identity(), nn.Identity()), a, b, cpu, n=N)
    assert both["images"] == N and both["cycle_l1"] == 0
    # two samples of real digits (the FD of 64 against 64 is biased up: 105 measured)
    assert both["fd_digits_ab"] < 200 and both["fd_digits_ba"] < 200
    assert both["digit_class_ab"] > 0.95 and both["digit_class_ba"] > 0.95
    assert both["digit_class"] == pytest.approx((both["digit_class_ab"]
                                                 + both["digit_class_ba"]) / 2)
    # G_AB constant, G_BA the identity: only the AB numbers suffer
    one = evaluate_cycle(cfg, Pair(Const(), nn.Identity()), a, b, cpu, n=N,
                         metrics=["fd", "kid", "digit_class"])
    assert one["fd_digits_ab"] > 3 * one["fd_digits_ba"] and one["fd_digits_ab"] > 300
    assert one["kid_digits_ab"] > 10 > one["kid_digits_ba"]
    assert one["digit_class_ab"] < 0.25 and one["digit_class_ba"] > 0.95
    assert one["fd_digits_ba"] == pytest.approx(both["fd_digits_ba"])
    assert "cycle_l1" not in one
    # with G_BA the constant instead the two swap
    other = evaluate_cycle(cfg, Pair(nn.Identity(), Const()), a, b, cpu, n=N, metrics=["fd"])
    assert other["fd_digits_ba"] > 3 * other["fd_digits_ab"] and other["fd_digits_ba"] > 300


def test_digit_metrics_only_on_digits(tmp_path, digits, capsys, monkeypatch):
    monkeypatch.delenv("DGAN_INCEPTION_WEIGHTS", raising=False)
    (xa, ya), (xb, yb) = digits["one"], digits["two"]
    # domain B from the user's own folder (not made from the built-in digits)
    cfg = load_config(CYC, [f"data.path={_write(tmp_path / 'a', xa, ya)}",
                            f"data.path_b={_write(tmp_path / 'b', xb, yb, builtin=False)}"])
    got = evaluate_cycle(cfg, Pair(nn.Identity(), nn.Identity()), _resolve_data(cfg),
                         _resolve_second(cfg), torch.device("cpu"), n=8)
    assert set(got) == {"cycle_l1", "cycle_l1_a", "cycle_l1_b", "images"}
    err = capsys.readouterr().err
    assert "skipped digit_class, fd, kid: data.path_b " in err and "--inception-weights" in err
    # eval.digit_metrics=true: the user says B holds digits
    cfg.eval.digit_metrics = "true"
    got = evaluate_cycle(cfg, Pair(nn.Identity(), nn.Identity()), _resolve_data(cfg),
                         _resolve_second(cfg), torch.device("cpu"), n=8)
    assert {"digit_class_ab", "fd_digits_ab", "kid_digits_ba"} <= set(got)
    paired = _write(tmp_path / "p", xa, ya, paired_with=xa, builtin=False)
    cfg = load_config(P2P, [f"data.path={paired}"])
    got = evaluate_translation(cfg, nn.Identity(), _resolve_data(cfg), torch.device("cpu"),
                               "a", "b", n=8)
    assert set(got) == {"psnr", "ssim", "l1", "pairs"}
    assert "skipped digit_class, fd, kid: data.path " in capsys.readouterr().err


def test_keep_best_takes_the_translation_keys():
    for key in ("fd_digits_ab", "kid_digits_ba", "digit_class_ab", "digit_class", "fid_ab"):
        cfg = load_config(CYC, ["eval.every=2", f"checkpoint.keep_best={key}"])
        assert cfg.checkpoint.keep_best == key
    for key in ("fd_digits", "kid_digits", "digit_class", "psnr"):
        load_config(P2P, [f"checkpoint.keep_best={key}"])
    with pytest.raises(ConfigError, match="keep_best"):
        load_config(CYC, ["eval.every=2", "checkpoint.keep_best=psnr"])
    assert metric_direction("fd_digits_ab") == metric_direction("kid_digits_ba") == "min"
    assert metric_direction("digit_class_ab") == "max"


def test_the_cyclegan_demo_domains_are_disjoint_halves(tmp_path):
    images, labels = load_mnist()
    first, second = halves(labels)
    assert len(first) == len(second) == 2500 and not set(first) & set(second)
    assert all((labels[h] == d).sum() == 250 for h in (first, second) for d in range(10))
    cfg = load_config(CYC)
    assert (cfg.data.path, cfg.data.path_b) == ("builtin:mnist_bold_half1",
                                                "builtin:mnist_half2")
    x = fit_resolution(images, 32)
    # bold: a 3x3 grey-level dilation (one pixel grows to a 3x3 block, never darker)
    dot = np.zeros((1, 5, 5), np.uint8)
    dot[0, 2, 2] = 200
    assert (bold(dot)[0] == np.pad(np.full((3, 3), 200, np.uint8), 1)).all()
    thick, hollow = bold(x), outlines(x)
    assert (thick >= x).all() and (thick >= 128).sum() > 1.5 * (x >= 128).sum()
    want = {"mnist_bold_half1": {thick[i].tobytes() for i in first},
            "mnist_outlines_half1": {hollow[i].tobytes() for i in first},
            "mnist_half2": {x[i].tobytes() for i in second}}
    import webdataset as wds
    from PIL import Image
    import io

    for name, known in want.items():
        make_builtin(name, tmp_path / name, resolution=32)
        seen = [np.asarray(Image.open(io.BytesIO(s["png"]))).tobytes() for s in
                wds.WebDataset(sorted(str(p) for p in (tmp_path / name).glob("*.tar")),
                               shardshuffle=False)]
        assert len(seen) == 2500 and set(seen) == known, name


@pytest.mark.parametrize("config, overrides, keys", [
    (P2P, ["model.g_width=8", "model.d_width=8", "train.batch_size=4"],
     ("metrics/psnr", "metrics/digit_class", "metrics/fd_digits", "metrics/kid_digits")),
    (CYC, ["model.g_width=4", "model.d_width=4", "model.g_blocks=1", "train.batch_size=2"],
     ("metrics/cycle_l1", "metrics/digit_class_ab", "metrics/fd_digits_ab",
      "metrics/kid_digits_ba")),
])
def test_the_demo_configs_train_and_evaluate_through_the_cli(tmp_path, config, overrides, keys):
    """Each demo config, made tiny, trains a few steps through `dgan train` and logs its
    in-training evaluation (eval.every), so the shipped configs stay valid."""
    import json

    from dgan.cli import main

    assert main(["train", config, f"run.dir={tmp_path / 'r'}", *overrides, "train.steps=3",
                 "optim.lr_decay_from=1", "eval.every=3", "eval.n=8", "checkpoint.every=3",
                 "log.every=3", "log.progress=off", "data.workers=0"]) == 0
    log = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    evals = [r for r in log if any(k.startswith("metrics/") for k in r)]
    assert evals and evals[-1]["step"] == 3
    for key in keys:
        assert np.isfinite(evals[-1][key]), key
