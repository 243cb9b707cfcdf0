import hashlib

import pytest

from dgan.cli import main

from test_train import fit, small_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sample") / "run"
    fit(small_config(d, "train.steps=6"))
    return d


def digests(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_same_seed_same_bytes(run_dir, tmp_path):
    assert main(["sample", "--run", str(run_dir), "--n", "10", "--seed", "5", "--out", str(tmp_path / "a")]) == 0
    assert main(["sample", "--run", str(run_dir), "--n", "10", "--seed", "5", "--out", str(tmp_path / "b"), "--grid"]) == 0
    a, b = digests(tmp_path / "a"), digests(tmp_path / "b")
    assert len(a) == 10 and b.pop("grid.png")
    assert a == b
    assert main(["sample", "--run", str(run_dir), "--n", "10", "--seed", "6", "--out", str(tmp_path / "c")]) == 0
    assert digests(tmp_path / "c") != a


def test_sample_from_missing_run(tmp_path, capsys):
    assert main(["sample", "--run", str(tmp_path), "--n", "1", "--out", str(tmp_path / "o")]) == 2
    assert str(tmp_path) in capsys.readouterr().err


def test_ckpt_inspect(run_dir, capsys):
    assert main(["ckpt", "inspect", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "step         6" in out and "world size   1" in out and "backend      ddp" in out
