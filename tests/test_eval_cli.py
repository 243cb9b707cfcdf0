import json

import pytest

from dgan.cli import main
from dgan.data.builtin import make_builtin
from dgan.data.shards import read_index

from test_train import fit, small_config


@pytest.mark.slow
def test_training_time_eval_and_dgan_eval(tmp_path, capsys):
    run = tmp_path / "run"
    trainer = fit(small_config(run, "train.steps=6", "eval.every=6", "eval.n=200",
                               "eval.metrics=[fd_digits,coverage]"))
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    evals = [r for r in records if "metrics/fd_digits" in r]
    assert len(evals) == 1 and evals[0]["step"] == 6
    assert 0 <= evals[0]["metrics/confident"] <= 1
    assert trainer.step == 6

    assert main(["eval", "--run", str(run), "--n", "200", "--metrics", "fd_digits,coverage"]) == 0
    out = capsys.readouterr().out
    assert "fd_digits" in out and "coverage (0..9)" in out
    saved = json.loads((run / "eval-00000006.json").read_text())
    assert saved["step"] == 6 and saved["fd_digits"] > 0


def test_bad_metric_name_is_a_config_error(tmp_path):
    assert main(["train", "eval.metrics=[fid_typo]", f"run.dir={tmp_path}/r"]) == 2


def test_unknown_builtin_dataset(tmp_path, capsys):
    assert main(["train", "data.path=builtin:cifar", f"run.dir={tmp_path}/r"]) == 2
    assert "builtin:cifar" in capsys.readouterr().err


def test_stacked_mnist_shards(tmp_path):
    index = make_builtin("stacked_mnist", tmp_path, resolution=32, samples=300, per_shard=100)
    assert index == read_index(tmp_path)
    assert index["channels"] == 3 and index["resolution"] == 32 and index["total"] == 300
    assert len(index["labels"]) == 1000
