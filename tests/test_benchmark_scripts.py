"""The GPU benchmark scripts run end to end on the CPU (`--tiny`), so a lent GPU's minutes are
not spent finding that one of them broke; one failing mode does not cost the others."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    if str(_DIR) not in sys.path:  # as when run as a script: its siblings import
        sys.path.insert(0, str(_DIR))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", _DIR / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_train_throughput_tiny_prints_a_row_per_mode(capsys) -> None:
    from dgan.tasks import stylegan2_loss

    tt = _load("train_throughput")
    calls = []
    real_run_d = stylegan2_loss.StyleGAN2Loss._run_d

    def counting_run_d(self, img, c, splits=1):
        calls.append(img.shape[0])
        return real_run_d(self, img, c, splits)

    stylegan2_loss.StyleGAN2Loss._run_d = counting_run_d
    try:
        tt.main(["--tiny", "--modes", "fused-separate-d", "fused-prev", "fused-plvjp",
                 "--batches", "2", "--steps", "1", "--warmup", "1", "--no-flops"])
    finally:
        stylegan2_loss.StyleGAN2Loss._run_d = real_run_d
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [r[:2] for r in rows if r and r[0].startswith("fused")] == \
        [["fused-separate-d", "2"], ["fused-prev", "2"], ["fused-plvjp", "2"]]
    assert 4 in calls  # fused-prev's Dmain: fakes and reals (2 + 2) in one D call
    assert 2 in calls  # fused-separate-d's Dmain: fakes and reals in two D calls
    from dgan.models import stylegan2

    assert not stylegan2.EAGER_PL_VJP  # restored after fused-plvjp
    assert tt.ABLATIONS["compile-separate-d"] == {"merge_d"}


def test_train_throughput_compile_modes_compile_the_regularisers_unless_told_not_to() -> None:
    import argparse

    tt = _load("train_throughput")
    args = argparse.Namespace(resolution=32, channel_base=256, channel_max=32, z_dim=32,
                              map_depth=2, augment=False, precision="fp32")
    cpu = torch.device("cpu")
    modes = ("fused", "compile", "compile-eager-greg", "compile-eager-dreg",
             "compile-eager-reg", "compile-separate-d")
    phases = {mode: tt.Setup(args, cpu, mode).compiled_phases for mode in modes}
    every = {"Gmain", "Dmain", "Greg", "Dreg"}
    assert phases == {"fused": set(), "compile": every,
                      "compile-eager-greg": every - {"Greg"},
                      "compile-eager-dreg": every - {"Dreg"},
                      "compile-eager-reg": {"Gmain", "Dmain"}, "compile-separate-d": every}
    args.augment = True  # R1 through the augmentation: Dreg stays eager
    assert tt.Setup(args, cpu, "compile").compiled_phases == every - {"Dreg"}


def test_train_throughput_one_failing_mode_keeps_the_others_and_exits_nonzero(
        capsys, monkeypatch) -> None:
    tt = _load("train_throughput")

    def fake_run(args, mode, batch, device, flops):
        if mode == "fused-prev":
            raise RuntimeError("boom in fused-prev")
        return {"mode": mode, "batch": batch, "img_s": 1.0, "s_kimg": 1000.0,
                "mem_gib": float("nan"), "gflop_img": float("nan"), "frac": float("nan"),
                "warm_s": 0.5}

    monkeypatch.setattr(tt, "run", fake_run)
    with pytest.raises(SystemExit) as exc:
        tt.main(["--tiny", "--modes", "fused-prev", "fused", "--batches", "2", "--no-flops"])
    assert exc.value.code == 1
    captured = capsys.readouterr()
    assert "boom in fused-prev" in captured.err
    out = captured.out.splitlines()
    assert any(line.split()[:3] == ["fused-prev", "2", "FAILED"] for line in out if line)
    # the row, warm-up seconds last
    assert any(line.split()[:3] == ["fused", "2", "1.0"] and line.split()[-1] == "0.5"
               for line in out if line)


@pytest.mark.slow
def test_ops_parity_sweep_tiny_times_every_tiling_and_row(capsys) -> None:
    op = _load("ops_parity")
    op.main(["--tiny", "--sweep", "--reps", "1"])
    out = capsys.readouterr().out
    assert "failed" not in out  # every row, the double backward included, ran
    lines = [line for line in out.splitlines() if line[:1].isdigit()]
    assert [line.split()[0] for line in lines] == ["/".join(map(str, c)) for c in op.SWEEP]
    assert all(len(line.split()) >= 6 for line in lines)  # three rows of ms (ratio)


@pytest.mark.slow
def test_profile_step_tiny_reports_every_phase(capsys) -> None:
    ps = _load("profile_step")
    ps.main(["--tiny", "--batch", "2", "--top", "3"])
    out = capsys.readouterr().out
    phases = {line.split()[0] for line in out.splitlines() if line.split()[:1] and
              line.split()[0] in ("Gmain", "Greg", "Dmain", "Dreg", "ema")}
    assert phases == {"Gmain", "Greg", "Dmain", "Dreg", "ema"}
