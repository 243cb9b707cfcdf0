"""`pipe:` data paths are shell commands: only the user's own run (docs/data.md, Trust).

Each stored-command case goes through its real entry point with a payload that would
create a marker file; the marker must never appear, and the refusal is one line naming
the file and the command. The confirmed and the command-line forms still run a real
`pipe:cat` of a real shard.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dgan.cli import main
from dgan.data.builtin import builtin_shards
from dgan.data.sources import DataPathError, resolve_source

from test_train import fit, small_config

ROOT = Path(__file__).resolve().parents[1]
# unconditional: a piped shard has no index, so no label names (the same G either way)
TINY = ["train.batch_size=16", "log.every=2", "checkpoint.every=2", "log.progress=false",
        "data.workers=0", "log.grid=4", "model.conditional=false"]


def dgan(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dgan", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("pipes") / "run"
    fit(small_config(run, "train.steps=2", *TINY[1:]))
    return run


@pytest.fixture
def shard() -> str:
    return str(sorted(builtin_shards("mnist", 28).glob("*.tar"))[0])


def poisoned(trained: Path, tmp_path: Path, data_path: str) -> Path:
    """A copy of the run whose stored config.yaml names `data_path`, as a received run."""
    run = tmp_path / "received"
    shutil.copytree(trained, run)
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.data.path, cfg.run.dir = data_path, str(run)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return run


def one_line_refusal(err: str, *names: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dgan: error: "), err
    for name in names:
        assert name in lines[0], (name, err)


def test_eval_refuses_the_runs_stored_pipe(trained, tmp_path, shard):
    marker = tmp_path / "MARKER"
    run = poisoned(trained, tmp_path, f"pipe:touch {marker}; cat {shard}")
    out = dgan("eval", "--run", str(run), "--n", "64", "--metrics", "fd_digits")
    assert out.returncode == 2
    one_line_refusal(out.stderr, str(run / "config.yaml"), f"touch {marker}; cat {shard}",
                     "--trust-pipe")
    assert not marker.exists()


@pytest.mark.slow  # trains the digit classifier once (about 10 s)
def test_eval_runs_a_confirmed_or_given_pipe(trained, tmp_path, shard, capsys):
    marker = tmp_path / "MARKER"
    run = poisoned(trained, tmp_path, f"pipe:touch {marker}; cat {shard}")
    # a pipe hides where the data come from, so the digit metrics are asked for by name
    assert main(["eval", "--run", str(run), "--n", "64", "--metrics", "fd_digits",
                 "--digit-metrics", "true", "--trust-pipe"]) == 0
    assert marker.exists() and "fd_digits" in capsys.readouterr().out
    given = tmp_path / "GIVEN"
    assert main(["eval", "--run", str(run), "--n", "64", "--metrics", "fd_digits",
                 "--digit-metrics", "true", "--data", f"pipe:touch {given}; cat {shard}"]) == 0
    assert given.exists()


def test_sample_never_reads_data(trained, tmp_path, shard):
    marker = tmp_path / "MARKER"
    run = poisoned(trained, tmp_path, f"pipe:touch {marker}; cat {shard}")
    assert main(["sample", "--run", str(run), "--n", "4", "--out", str(tmp_path / "s")]) == 0
    assert len(list((tmp_path / "s").glob("*.png"))) == 4
    assert not marker.exists()


def test_train_from_a_runs_stored_config_refuses_its_pipe(trained, tmp_path, shard, capsys):
    marker = tmp_path / "MARKER"
    run = poisoned(trained, tmp_path, f"pipe:touch {marker}; cat {shard}")
    out = dgan("train", str(run / "config.yaml"), "train.steps=4")
    assert out.returncode == 2
    one_line_refusal(out.stderr, str(run / "config.yaml"), f"touch {marker}; cat {shard}")
    assert not marker.exists()
    # confirmed: resumes at step 2 and streams through the command
    assert main(["train", str(run / "config.yaml"), "train.steps=4", "--trust-pipe"]) == 0
    assert marker.exists() and (run / "checkpoints" / "step-00000004").is_dir()
    # given on the command line: the user's own command runs without the flag
    given = tmp_path / "GIVEN"
    assert main(["train", str(run / "config.yaml"), "train.steps=6",
                 f"data.path=pipe:touch {given}; cat {shard}"]) == 0
    assert given.exists()


def test_a_config_file_the_user_wrote_runs_its_pipe(tmp_path, shard):
    marker = tmp_path / "MARKER"
    mine = tmp_path / "mine.yaml"
    mine.write_text(f"data:\n  path: 'pipe:touch {marker}; cat {shard}'\n")
    assert main(["train", str(mine), f"run.dir={tmp_path / 'run'}", "train.steps=2",
                 *TINY]) == 0
    assert marker.exists()


def test_resume_from_another_run_never_uses_its_data_path(trained, tmp_path, shard):
    marker = tmp_path / "MARKER"
    other = poisoned(trained, tmp_path, f"pipe:touch {marker}; cat {shard}")
    assert main(["train", f"run.dir={tmp_path / 'new'}", f"resume={other}", "train.steps=4",
                 *TINY]) == 0
    assert (tmp_path / "new" / "checkpoints" / "step-00000004").is_dir()
    assert not marker.exists()


def _hostile_shards(directory: Path, marker: str, shard: str) -> str:
    """A shard directory holding a real tar whose *file name* is a pipe: command."""
    directory.mkdir()
    name = f"pipe:touch {marker}; cat a.tar"
    shutil.copy(shard, directory / name)
    return name


def test_a_listed_shard_named_like_a_pipe_is_read_as_a_file(tmp_path, shard):
    # `dgan data inspect .` in a directory of .tar files: the names are files, not commands
    shards = tmp_path / "shards"
    _hostile_shards(shards, "MARKER", shard)
    out = dgan("data", "inspect", ".", "--grid", str(tmp_path / "g.png"), cwd=shards)
    assert out.returncode == 0, out.stderr
    assert "samples     1000" in out.stdout
    assert not (shards / "MARKER").exists()


def test_an_index_listing_a_pipe_is_refused(tmp_path, shard, monkeypatch):
    shards = tmp_path / "shards"
    name = _hostile_shards(shards, "MARKER", shard)
    (shards / "index.json").write_text(json.dumps(
        {"shards": [{"name": name, "count": 1000}], "resolution": 28, "channels": 1}))
    out = dgan("data", "inspect", ".", "--grid", str(tmp_path / "g.png"), cwd=shards)
    assert out.returncode == 2
    one_line_refusal(out.stderr, "index.json", name)
    with pytest.raises(DataPathError, match="index.json: shard name"):
        resolve_source(str(shards))
    monkeypatch.chdir(shards)
    with pytest.raises(DataPathError, match="index.json: shard name"):
        resolve_source(".")
    assert not (shards / "MARKER").exists()


def test_a_pipe_given_to_inspect_runs(tmp_path, shard):
    marker = tmp_path / "MARKER"
    out = dgan("data", "inspect", f"pipe:touch {marker}; cat {shard}", "--grid",
               str(tmp_path / "g.png"))
    assert out.returncode == 0, out.stderr
    assert "samples     1000" in out.stdout and marker.exists()
