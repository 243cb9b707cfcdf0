"""`dgan eval --best METRIC` on translation runs (pix2pix, CycleGAN): every checkpoint
measured, the best written to best.json, which `dgan translate --ckpt best` then loads."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from test_cyclegan import config as cyclegan_config
from test_cyclegan import fit as fit_cyclegan
from test_pix2pix import config as pix2pix_config
from test_pix2pix import fit as fit_pix2pix

from dgan.cli import main


@pytest.fixture(scope="module")
def p2p(tmp_path_factory):
    d = tmp_path_factory.mktemp("p2p-best") / "run"
    fit_pix2pix(pix2pix_config(d, "train.steps=4", "checkpoint.every=2", "log.every=2"))
    return d


@pytest.fixture(scope="module")
def cyc(tmp_path_factory):
    d = tmp_path_factory.mktemp("cyc-best") / "run"
    fit_cyclegan(cyclegan_config(d, "train.steps=4", "checkpoint.every=2", "log.every=2"))
    return d


def test_pix2pix_best_psnr_over_every_checkpoint_then_translate_loads_it(p2p, tmp_path,
                                                                          capsys):
    assert main(["eval", "--run", str(p2p), "--best", "psnr", "--n", "16"]) == 0
    out = capsys.readouterr().out
    stored = {s: json.loads((p2p / f"eval-{s:08d}.json").read_text()) for s in (2, 4)}
    assert all(v["n"] == 16 and v["pairs"] == 16 for v in stored.values())
    # --best psnr computes only the metric that gives it
    assert all("ssim" not in v and "digit_class" not in v for v in stored.values())
    want = max(stored, key=lambda s: stored[s]["psnr"])
    record = json.loads((p2p / "best.json").read_text())
    assert record == {"metric": "psnr", "value": stored[want]["psnr"], "step": want,
                      "checkpoint": f"step-{want:08d}", "direction": "max"}
    best_line = [line for line in out.splitlines() if "(best" in line]
    assert len(best_line) == 1 and best_line[0].split()[0] == str(want)

    # the values stored with the same n are reused, not measured again
    assert main(["eval", "--run", str(p2p), "--best", "psnr", "--n", "16"]) == 0
    assert capsys.readouterr().out.count("stored") == 2

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(src / "x.png")
    assert main(["translate", "--run", str(p2p), "--ckpt", "best", str(src),
                 str(tmp_path / "out")]) == 0
    assert f"step {want}" in capsys.readouterr().out
    assert (tmp_path / "out" / "x.png").is_file()


def test_cyclegan_best_digit_class_ab_picks_the_scripted_best(cyc, monkeypatch, capsys):
    import dgan.metrics.translation as translation

    values = iter([0.9, 0.5])  # steps 2, 4: higher is better, so step 2

    def scripted(cfg, net, source, source_b, device, n, metrics):
        assert metrics == ["digit_class"] and n == 8
        return {"digit_class_ab": next(values), "digit_class_ba": 0.1, "images": n}

    monkeypatch.setattr(translation, "evaluate_cycle", scripted)
    assert main(["eval", "--run", str(cyc), "--best", "digit_class_ab", "--n", "8"]) == 0
    capsys.readouterr()
    record = json.loads((cyc / "best.json").read_text())
    assert (record["step"], record["value"], record["direction"]) == (2, 0.9, "max")
    assert json.loads((cyc / "eval-00000004.json").read_text())["digit_class_ab"] == 0.5


@pytest.mark.parametrize("best, says", [
    ("cycle_l1", "unknown metric for a translation run"),  # pix2pix has no cycle
    ("nonsense", "unknown metric for a translation run"),
])
def test_pix2pix_best_errors_are_one_line(p2p, capsys, best, says):
    assert main(["eval", "--run", str(p2p), "--best", best]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err and f"--best {best}" in err


def test_cyclegan_best_psnr_is_refused(cyc, capsys):
    assert main(["eval", "--run", str(cyc), "--best", "psnr"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown metric for an unpaired translation run" in err
