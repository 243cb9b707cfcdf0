"""Checksums and fallback, fresh starts over old checkpoints, and saves that fail (disk full)."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil

import pytest
import torch
import torch.distributed.checkpoint as dcp

from dgan import checkpoint
from dgan.checkpoint import Checkpointer, layout
from dgan.cli import main

META = {"backend": "ddp", "precision": "fp32", "images_seen": 0, "config_hash": "x"}
TINY = ["train.batch_size=4", "log.every=2", "checkpoint.every=2", "log.progress=false",
        "data.workers=0", "log.grid=4", "model.g_width=8", "model.d_width=8"]


def save(run, step, keep=10, async_save=False):
    ck = Checkpointer(run, rank=0, world_size=1, keep=keep, async_save=async_save)
    # 2 MiB of weights: room for 1 MiB of zeros inside the data file
    ck.save(step, {"w": torch.randn(1 << 19, generator=torch.Generator().manual_seed(step)),
                   "step": step}, {"rank": 0, "t": torch.tensor([step])}, META)
    ck.close()
    return layout.checkpoint_dir(run) / layout.step_name(step)


def damage(path, how):
    """Damage that keeps every size: only a checksum can see it."""
    if how == "garbage distcp":
        f = path / "__0_0.distcp"
        f.write_bytes(os.urandom(f.stat().st_size))
    elif how == "garbage rank json":
        f = path / "rank-00000.json"
        f.write_bytes(b"\x00" * f.stat().st_size)
    elif how == "zeros in distcp":
        f = path / "__0_0.distcp"
        with open(f, "r+b") as fh:
            fh.seek(4096)
            fh.write(b"\x00" * (1 << 20))
    return {"garbage distcp": "__0_0.distcp", "garbage rank json": "rank-00000.json",
            "zeros in distcp": "__0_0.distcp"}[how]


HOW = ["garbage distcp", "garbage rank json", "zeros in distcp"]


@pytest.mark.parametrize("how", HOW)
def test_same_size_damage_falls_back_and_inspect_names_the_file(tmp_path, caplog, capsys, how):
    older = save(tmp_path, 10)
    newest = save(tmp_path, 20)
    name = damage(newest, how)
    with caplog.at_level(logging.WARNING):
        path, meta, (state, own, _) = Checkpointer(tmp_path, rank=0, world_size=1,
                                                   keep=2).load("auto")
    assert path == older and meta["step"] == 10 and state["step"] == 10
    assert torch.equal(own["t"], torch.tensor([10]))
    assert f"{newest / name} does not match its checksum" in caplog.text
    assert checkpoint.load_latest(tmp_path)[0] == older
    assert main(["ckpt", "inspect", str(newest)]) == 1
    assert f"valid        no: {newest / name} does not match its checksum" in \
        capsys.readouterr().out
    shutil.rmtree(older)  # the only one left is damaged: one line, no fresh start
    with pytest.raises(layout.InvalidCheckpoint) as e:
        Checkpointer(tmp_path, rank=0, world_size=1, keep=2).load("auto")
    assert "\n" not in str(e.value) and str(newest / name) in str(e.value)
    with pytest.raises(layout.InvalidCheckpoint, match="does not match its checksum"):
        Checkpointer(tmp_path / "b", rank=0, world_size=1, keep=2).load(str(newest))


def test_checkpoints_without_checksums_still_load_and_fall_back_on_read_errors(tmp_path, caplog):
    older = save(tmp_path, 10)
    newest = save(tmp_path, 20)
    for path in (older, newest):  # as written before checksums were recorded
        meta = json.loads((path / layout.META).read_text())
        del meta[layout.CHECKSUMS]
        (path / layout.META).write_text(json.dumps(meta))
    assert checkpoint.load(newest)["step"] == 20
    damage(newest, "garbage rank json")  # sizes still match: only reading it fails
    with caplog.at_level(logging.WARNING):
        path, meta, _ = Checkpointer(tmp_path, rank=0, world_size=1, keep=2).load("auto")
    assert path == older and f"skipping checkpoint {newest}" in caplog.text
    with pytest.raises(layout.InvalidCheckpoint, match=str(newest)):
        Checkpointer(tmp_path / "b", rank=0, world_size=1, keep=2).load(str(newest))


def test_dgan_train_resumes_from_the_previous_checkpoint_past_a_damaged_one(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", f"run.dir={run}", *TINY, "train.steps=4"]) == 0
    damage(layout.checkpoint_dir(run) / "step-00000004", "garbage distcp")
    capsys.readouterr()
    assert main(["train", f"run.dir={run}", *TINY, "train.steps=6"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert layout.newest_valid(run)[1]["step"] == 6
    assert layout.read_meta(layout.checkpoint_dir(run) / "step-00000006")  # valid, checksummed


# -- resume=never over an old run ---------------------------------------------------------
def test_fresh_start_over_old_checkpoints_is_refused_before_any_work(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", f"run.dir={run}", *TINY, "train.steps=4"]) == 0
    before = sorted(os.listdir(layout.checkpoint_dir(run)))
    capsys.readouterr()
    assert main(["train", f"run.dir={run}", *TINY, "train.steps=2", "resume=never"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dgan: error: resume=never: ")
    assert "already holds checkpoints" in err and "another run.dir" in err
    assert sorted(os.listdir(layout.checkpoint_dir(run))) == before
    assert layout.newest_valid(run)[1]["step"] == 4


def test_pruning_never_deletes_the_checkpoint_just_written(tmp_path):
    save(tmp_path, 30)
    save(tmp_path, 40)  # e.g. another run's, with higher steps
    mine = save(tmp_path, 5, keep=2)
    assert mine.is_dir() and layout.read_meta(mine)["step"] == 5


# -- saves that fail ----------------------------------------------------------------------
def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/full/disk")


@pytest.mark.parametrize("async_save", [False, True])
@pytest.mark.parametrize("where", ["tensors", "meta.json"])
def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch,
                                                               async_save, where):
    save(tmp_path, 10)
    if where == "tensors":
        monkeypatch.setattr(dcp.FileSystemWriter, "write_data", no_space)
    else:
        monkeypatch.setattr(layout, "write_json", lambda path, data: no_space()
                            if path.name == layout.META else None)
    ck = Checkpointer(tmp_path, rank=0, world_size=1, keep=2, async_save=async_save)
    with pytest.raises(checkpoint.SaveFailed) as e:
        ck.save(20, {"w": torch.ones(3)}, {}, META)
        ck.close()
    tmp = layout.checkpoint_dir(tmp_path) / "step-00000020.tmp"
    assert str(e.value) == (f"cannot save checkpoint {tmp}: [Errno 28] No space left on device:"
                            " '/full/disk'; the previous checkpoint is unchanged (latest: "
                            "step-00000010)")
    assert not tmp.exists()
    assert (layout.checkpoint_dir(tmp_path) / "latest").read_text() == "step-00000010\n"
    assert layout.newest_valid(tmp_path)[1]["step"] == 10


@pytest.mark.parametrize("async_save", ["true", "false"])
def test_dgan_train_stops_with_one_line_when_the_disk_is_full(tmp_path, monkeypatch, capsys,
                                                             async_save):
    run = tmp_path / "run"
    assert main(["train", f"run.dir={run}", *TINY, "train.steps=2"]) == 0
    monkeypatch.setattr(dcp.FileSystemWriter, "write_data", no_space)
    capsys.readouterr()
    status = main(["train", f"run.dir={run}", *TINY, "train.steps=6",
                   f"checkpoint.async_save={async_save}"])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err, err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("dgan:")]
    assert line.startswith(f"dgan: error: cannot save checkpoint {layout.checkpoint_dir(run)}")
    assert "No space left on device" in line and "(latest: step-00000002)" in line
    assert layout.newest_valid(run)[1]["step"] == 2
    assert sorted(os.listdir(layout.checkpoint_dir(run))) == ["latest", "step-00000002"]
