"""checkpoint.keep_best and `dgan eval --best`: the best checkpoint by a metric survives
rotation, is named in best.json, keeps its value across a resume, and `--ckpt best` loads it.

The metric is scripted (dgan.metrics.run_eval.evaluate_generator monkeypatched), so which
checkpoint is best does not depend on how well a few CPU steps train."""

import json
from pathlib import Path

import pytest

from dgan import checkpoint, load_generator
from dgan.checkpoint import best as best_json
from dgan.cli import main
from dgan.config import ConfigError, load_config, metric_direction
from dgan.metrics import run_eval

from test_train import fit, small_config


def scripted(monkeypatch, values, key="fd_digits"):
    """evaluate_generator returns `values` one call after another (each call: {key: v})."""
    calls = []

    def fake(cfg, g, source, device, metrics=None, n=None, **kw):
        calls.append(n)
        return {key: values[len(calls) - 1], "other": 1.0}

    monkeypatch.setattr(run_eval, "evaluate_generator", fake)
    return calls


def steps_on_disk(run: Path) -> list[int]:
    return [int(p.name.split("-")[1]) for p in checkpoint.list_checkpoints(run)]


def keep_best_config(run: Path, steps: int, *extra: str):
    return small_config(run, f"train.steps={steps}", "checkpoint.every=4", "checkpoint.keep=1",
                        "eval.every=2", "eval.metrics=[fd_digits]",
                        "checkpoint.keep_best=fd_digits", *extra)


@pytest.mark.slow
def test_best_checkpoint_survives_rotation_and_resume(tmp_path, monkeypatch):
    run = tmp_path / "run"
    # evaluations at steps 2, 4, ..., 12; the best (2.0) is at step 6, not a multiple of
    # checkpoint.every=4: a checkpoint is saved there for it
    scripted(monkeypatch, [5.0, 3.0, 2.0, 4.0, 6.0, 7.0])
    trainer = fit(keep_best_config(run, 12))
    assert steps_on_disk(run) == [6, 12]  # keep=1 alone would leave only step 12
    record = json.loads((run / "best.json").read_text())
    assert record == {"metric": "fd_digits", "value": 2.0, "step": 6,
                      "checkpoint": "step-00000006", "direction": "min"}
    assert trainer.best == record
    assert checkpoint.load(run / "checkpoints" / "step-00000006")["best"] == record

    # resumed: 2.5 at step 14 is worse than the saved 2.0 (a lost best would take it)
    scripted(monkeypatch, [2.5, 3.0])
    trainer = fit(keep_best_config(run, 16))
    assert trainer.best == record
    assert json.loads((run / "best.json").read_text()) == record
    assert steps_on_disk(run) == [6, 16]

    # a better value moves the best; the old best goes back to normal rotation
    scripted(monkeypatch, [1.5])
    fit(keep_best_config(run, 18))
    record = json.loads((run / "best.json").read_text())
    assert record["step"] == 18 and record["value"] == 1.5
    assert steps_on_disk(run) == [18]
    assert load_generator(run, "best").step == 18


def test_keep_best_config_errors():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["checkpoint.keep_best=fd_typo", "eval.every=10"])
    assert "checkpoint.keep_best" in str(e.value) and "fd_digits" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(None, ["checkpoint.keep_best=fd_digits"])  # eval.every=0
    assert "eval.every" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError):  # not computed by these eval.metrics
        load_config(None, ["checkpoint.keep_best=modes", "eval.every=10"])
    load_config(None, ["checkpoint.keep_best=coverage_min", "eval.every=10"])


def test_keep_best_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "checkpoint.keep_best=nope", "eval.every=5",
                 f"run.dir={tmp_path}/r"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checkpoint.keep_best" in err
    assert main(["train", "checkpoint.keep_best=fd_digits", f"run.dir={tmp_path}/r"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "eval.every" in err


def test_metric_directions():
    for key in ("fid", "fd_digits", "kid", "kid_digits", "coverage_kl", "modes_kl"):
        assert metric_direction(key) == "min", key
    for key in ("coverage_min", "classes_covered", "confident", "precision", "recall_digits",
                "modes"):
        assert metric_direction(key) == "max", key
    assert best_json.is_better(2.0, {"value": 3.0}, "min")
    assert not best_json.is_better(3.0, {"value": 3.0}, "min")
    assert best_json.is_better(0.9, {"value": 0.5}, "max")
    assert not best_json.is_better(float("nan"), None, "min")


@pytest.mark.slow
def test_dgan_eval_best_writes_best_json_and_sample_uses_it(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    fit(small_config(run, "train.steps=12", "checkpoint.every=4", "checkpoint.keep=3"))
    assert steps_on_disk(run) == [4, 8, 12]
    assert not (run / "best.json").exists()

    calls = scripted(monkeypatch, [0.7, 0.9, 0.8], key="coverage_min")  # higher is better
    assert main(["eval", "--run", str(run), "--best", "coverage_min", "--n", "50"]) == 0
    out = capsys.readouterr().out
    assert calls == [50, 50, 50]
    best_line = [line for line in out.splitlines() if "best" in line and "0.9" in line]
    assert best_line and best_line[0].split()[0] == "8"
    record = json.loads((run / "best.json").read_text())
    assert record == {"metric": "coverage_min", "value": 0.9, "step": 8,
                      "checkpoint": "step-00000008", "direction": "max"}
    assert json.loads((run / "eval-00000008.json").read_text())["coverage_min"] == 0.9

    # stored values with the same n are reused: nothing is evaluated again
    calls = scripted(monkeypatch, [])
    assert main(["eval", "--run", str(run), "--best", "coverage_min", "--n", "50"]) == 0
    assert calls == []
    assert json.loads((run / "best.json").read_text()) == record
    capsys.readouterr()

    assert main(["sample", "--run", str(run), "--ckpt", "best", "--n", "2",
                 "--out", str(tmp_path / "s")]) == 0
    assert "(step 8)" in capsys.readouterr().out
    assert main(["ckpt", "export", str(run), str(tmp_path / "e"), "--ckpt", "best"]) == 0
    assert "step-00000008" in capsys.readouterr().out

    (run / "best.json").write_text("{not json")
    assert main(["sample", "--run", str(run), "--ckpt", "best", "--n", "2",
                 "--out", str(tmp_path / "s2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "best.json" in err
    (run / "best.json").unlink()
    assert main(["sample", "--run", str(run), "--ckpt", "best", "--n", "2",
                 "--out", str(tmp_path / "s3")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "best.json" in err


def test_dgan_eval_best_unknown_metric(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("run:\n  name: x\n")
    assert main(["eval", "--run", str(run), "--best", "fd_typo"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--best fd_typo" in err
