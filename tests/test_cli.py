import subprocess
import sys
import time

import pytest


def run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "dgan", *args], capture_output=True, text=True,
                          **kw)


def test_missing_data_path_fails_fast_with_one_line(tmp_path):
    start = time.monotonic()
    out = run("train", "data.path=/nonexistent", f"run.dir={tmp_path}/r")
    elapsed = time.monotonic() - start
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "/nonexistent" in lines[0], out.stderr
    assert elapsed < 5
    assert not (tmp_path / "r").exists()  # nothing was started


def test_bad_config_fails_before_work(tmp_path):
    out = run("train", "train.batch_sise=8", f"run.dir={tmp_path}/r")
    assert out.returncode == 2
    assert "did you mean train.batch_size" in out.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("override", ["optim.lr_d=nan", "optim.lr_g=inf", "optim.beta1=5",
                                      "run.dir={tmp}/file"])
def test_bad_numbers_and_a_file_as_run_dir_fail_before_work(tmp_path, override):
    (tmp_path / "file").write_text("x")
    override = override.format(tmp=tmp_path)
    args = [override] if override.startswith("run.dir") else [override, f"run.dir={tmp_path}/r"]
    out = run("train", *args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dgan: error: bad value for '"), out.stderr
    assert override.split("=")[0] in lines[0]
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("verb", [[], ["train"], ["sample"], ["data", "make"], ["ckpt", "inspect"]])
def test_help(verb):
    out = run(*verb, "--help")
    assert out.returncode == 0 and "usage: dgan" in out.stdout


def test_print_config():
    out = run("train", "--print-config", "train.steps=3")
    assert out.returncode == 0 and "steps: 3" in out.stdout


def test_resume_with_another_model_is_one_line_naming_the_keys(tmp_path):
    tiny = [f"run.dir={tmp_path}/r", "train.steps=1", "train.batch_size=4", "data.workers=0",
            "log.progress=false", "log.grid=4", "model.g_width=8", "model.d_width=8"]
    first = run("train", *tiny)
    assert first.returncode == 0, first.stderr
    out = run("train", *tiny, "train.steps=2", "model.g_width=16", "model.conditional=false")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dgan: error: run.dir "), out.stderr
    for part in ("model.g_width: checkpoint 8 vs now 16", "model.conditional: checkpoint True",
                 "classes (c_dim): checkpoint 10 vs now 0", "resume=never and a new run.dir"):
        assert part in lines[0], lines[0]


def test_expect_world_size_stops_a_lonely_process_before_work(tmp_path):
    out = run("train", f"run.dir={tmp_path}/r", "backend.expect_world_size=2",
              "data.workers=0", "log.progress=false")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines == ["dgan: error: backend.expect_world_size=2 but this launch started 1 "
                     "process(es); fix the launch command (see docs/launching.md) or the key"]
    assert not (tmp_path / "r" / "checkpoints").exists()
