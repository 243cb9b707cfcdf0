"""dgan.checkpoint in one process: layout, validation, pruning, pickle-free loading, CLI verbs."""

from __future__ import annotations

import json
import logging
import os
import pickle

import pytest
import torch
import torch.distributed.checkpoint as dcp

from dgan import checkpoint
from dgan.checkpoint import Checkpointer, layout, store
from dgan.cli import main

META = {"backend": "ddp", "precision": "fp32", "images_seen": 0, "config_hash": "x"}


def save(run, step, keep=10, milestone=0, async_save=False, **extra):
    ck = Checkpointer(run, rank=0, world_size=1, keep=keep, milestone=milestone,
                      async_save=async_save)
    state = {"w": torch.full((3,), float(step)), "step": step, "betas": (0.5, 0.9),
             "nested": {"none": None, "list": [1, torch.arange(2)]}, **extra}
    ck.save(step, state, {"rank": 0, "t": torch.tensor([step])}, dict(META, images_seen=step))
    ck.close()
    return layout.checkpoint_dir(run) / layout.step_name(step)


def test_split_join_round_trip_keeps_tuples_and_nesting():
    tree = {"a": torch.ones(2), "b": (1, "x", None), "c": [{"d": torch.zeros(1)}], "e": 1.5}
    skeleton, tensors = store.split(tree)
    json.dumps(skeleton)
    assert sorted(tensors) == ["a", "c/0/d"]
    back = store.join(skeleton, tensors)
    assert back["b"] == (1, "x", None) and back["e"] == 1.5
    assert torch.equal(back["c"][0]["d"], torch.zeros(1))
    with pytest.raises(TypeError, match="not saveable"):
        store.split({"bad": object()})


@pytest.mark.parametrize("async_save", [False, True])
def test_save_commits_and_loads_back(tmp_path, async_save):
    path = save(tmp_path, 7, async_save=async_save)
    assert sorted(os.listdir(path)) == [".metadata", "__0_0.distcp", "meta.json", "rank-00000.json"]
    assert (layout.checkpoint_dir(tmp_path) / "latest").read_text() == "step-00000007\n"
    meta = layout.read_meta(path)
    assert meta["step"] == 7 and meta["world_size"] == 1 and meta["images_seen"] == 7
    assert set(meta["files"]) == {".metadata", "__0_0.distcp", "rank-00000.json"}
    state = checkpoint.load(path)
    assert torch.equal(state["w"], torch.full((3,), 7.0)) and state["betas"] == (0.5, 0.9)
    ck = Checkpointer(tmp_path, rank=0, world_size=1, keep=2)
    found_path, found_meta = ck.find("auto")
    shared, own, first = ck.read(found_path, found_meta)
    assert torch.equal(own["t"], torch.tensor([7])) and first["rank"] == 0


def test_async_save_copies_tensors_before_returning(tmp_path):
    ck = Checkpointer(tmp_path, rank=0, world_size=1, keep=2, async_save=True)
    w = torch.zeros(1000)
    ck.save(1, {"w": w}, {}, META)
    w.add_(1)  # training goes on while the writer thread works
    ck.close()
    assert checkpoint.load(layout.checkpoint_dir(tmp_path) / "step-00000001")["w"].sum() == 0


def test_keep_newest_and_every_milestone(tmp_path):
    for step in range(10, 110, 10):
        save(tmp_path, step, keep=2, milestone=50)
    names = [p.name for p in checkpoint.list_checkpoints(tmp_path)]
    assert names == ["step-00000050", "step-00000090", "step-00000100"]


@pytest.mark.parametrize("damage", ["truncate", "drop_meta", "drop_rank", "bad_json"])
def test_invalid_newest_is_skipped_with_a_warning(tmp_path, caplog, damage):
    save(tmp_path, 10)
    newest = save(tmp_path, 20)
    if damage == "truncate":
        f = newest / "__0_0.distcp"
        f.write_bytes(f.read_bytes()[:100])
    elif damage == "drop_meta":
        (newest / "meta.json").unlink()
    elif damage == "drop_rank":
        (newest / "rank-00000.json").unlink()
    else:
        (newest / "meta.json").write_text("{")
    with caplog.at_level(logging.WARNING):
        path, meta = layout.newest_valid(tmp_path)
    assert path.name == "step-00000010" and meta["step"] == 10
    assert "skipping checkpoint" in caplog.text and "step-00000020" in caplog.text
    assert checkpoint.load_latest(tmp_path)[1]["step"] == 10


def test_unfinished_tmp_is_never_loaded_and_is_cleaned_up(tmp_path):
    save(tmp_path, 10)
    tmp = layout.checkpoint_dir(tmp_path) / "step-00000020.tmp"
    tmp.mkdir()
    (tmp / "__0_0.distcp").write_bytes(b"half")
    assert layout.newest_valid(tmp_path)[1]["step"] == 10
    with pytest.raises(layout.InvalidCheckpoint, match="unfinished"):
        layout.read_meta(tmp)
    Checkpointer(tmp_path, rank=0, world_size=1, keep=2)
    assert not tmp.exists()


def test_resume_never_and_path(tmp_path):
    a = save(tmp_path / "a", 10)
    ck = Checkpointer(tmp_path / "b", rank=0, world_size=1, keep=2)
    assert ck.find("never") is None and ck.find("auto") is None
    assert ck.find(str(a))[0] == a
    assert ck.find(str(tmp_path / "a"))[0] == a
    with pytest.raises(FileNotFoundError, match="no valid checkpoint"):
        ck.find(str(tmp_path / "nothing"))


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_index_with_foreign_objects_is_refused(tmp_path):
    path = save(tmp_path, 10)
    (path / ".metadata").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        store.read_tensors(path)


def test_pickled_non_tensor_entries_are_refused(tmp_path):
    dcp.save({"obj": {"a": [1, 2]}, "t": torch.ones(1)}, checkpoint_id=str(tmp_path), no_dist=True)
    with pytest.raises(ValueError, match="refusing to unpickle"):
        store.read_tensors(tmp_path)


def test_inspect_and_export(tmp_path, capsys):
    from safetensors.torch import load_file

    save(tmp_path, 10, G_ema={"w": torch.ones(2, 2)}, images_seen=80,
         config={"model": {"name": "dcgan"}})
    assert main(["ckpt", "inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "resume=auto  step-00000010" in out and "valid        yes" in out
    assert "world size   1" in out and "backend      ddp" in out
    assert main(["ckpt", "export", str(tmp_path), str(tmp_path / "out")]) == 0
    exported = load_file(str(tmp_path / "out" / "G_ema.safetensors"))
    assert torch.equal(exported["w"], torch.ones(2, 2))
    assert "name: dcgan" in (tmp_path / "out" / "config.yaml").read_text()
    broken = layout.checkpoint_dir(tmp_path) / "step-00000010"
    (broken / "rank-00000.json").unlink()
    assert main(["ckpt", "inspect", str(broken)]) == 1
    assert "valid        no: step-00000010: rank-00000.json is missing" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step()`")
def test_trainer_saves_lr_schedules_augment_state_and_rank_state(tmp_path):
    from test_train import small_config

    from dgan.cli import _resolve_data
    from dgan.engine.trainer import Trainer

    cfg = small_config(tmp_path / "run", "train.steps=6")

    def build():
        t = Trainer(cfg, _resolve_data(cfg))
        t.lr_schedules = {"G": torch.optim.lr_scheduler.StepLR(t.optimizers["G"], step_size=2, gamma=0.5)}
        return t

    first = build()
    for _ in range(3):
        first.lr_schedules["G"].step()
    first.augment = {"p": 0.25, "adjust": [1, 2]}
    assert first.fit() == 0
    meta = layout.newest_valid(tmp_path / "run")[1]
    assert meta["state"]["augment"] == {"p": 0.25, "adjust": [1, 2]}
    again = build()
    assert again.resume().endswith("step-00000006")
    # 3 steps by hand, then one per training step
    assert again.lr_schedules["G"].last_epoch == 3 + 6
    assert again.optimizers["G"].param_groups[0]["lr"] == cfg.optim.lr_g / 2 ** 4
    assert again.augment == {"p": 0.25, "adjust": [1, 2]} and again.images_seen == 6 * 16
    assert again.stream.state_dict() == first.stream.state_dict()
    rank_file = json.loads((layout.checkpoint_dir(tmp_path / "run") / "step-00000006" /
                            "rank-00000.json").read_text())
    assert set(rank_file) == {"rank", "rng", "data", "buffers"}
    assert set(rank_file["rng"]) >= {"python", "numpy", "torch"}


def test_native_backend_files_are_committed_listed_and_validated(tmp_path):
    ck = Checkpointer(tmp_path, rank=0, world_size=1, keep=2, async_save=True)

    def write_native(directory):
        (directory / "G").mkdir()
        (directory / "G" / "zero_pp_rank_0.pt").write_bytes(b"x" * 100)

    ck.save(5, {"w": torch.ones(1)}, {}, META, write_native=write_native)
    ck.close()
    path = layout.checkpoint_dir(tmp_path) / "step-00000005"
    assert layout.read_meta(path)["files"]["native/G/zero_pp_rank_0.pt"] == 100
    (path / "native" / "G" / "zero_pp_rank_0.pt").write_bytes(b"x" * 10)
    with pytest.raises(layout.InvalidCheckpoint, match="native/G/zero_pp_rank_0.pt has 10 bytes"):
        layout.read_meta(path)
