"""Backend semantics: gradient flow per phase, accumulation, DDP = bigger batch, ddp = deepspeed.

Runs that need a process group run in spawned processes (gloo on 127.0.0.1), so the
pytest process keeps no distributed state.
"""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from dgan.cli import _resolve_data
from dgan.config import ConfigError, load_config
from dgan.engine.backends.base import check_world_size
from dgan.engine.backends.deepspeed import engine_config

BATCH = 8  # global batch of the fixed data
STEPS = 3


class PlainSGD(torch.optim.SGD):
    """Stands in for the trainer's Adam in equivalence tests: Adam's first steps are nearly
    invariant to the gradient's scale and would hide a sum-instead-of-mean error."""

    def __init__(self, params, lr, betas):  # Adam's signature; betas unused
        super().__init__(params, lr=lr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_config(run_dir, *extra):
    return load_config(None, [f"run.dir={run_dir}", "data.workers=0", "log.progress=false",
                              "model.g_width=16", "model.d_width=16", "model.z_dim=16",
                              "model.conditional=false", *extra])


def fixed_batch(step: int):
    """Reals and latents of the global batch of `step`, the same in every process."""
    gen = torch.Generator().manual_seed(100 + step)
    real = torch.rand(BATCH, 1, 28, 28, generator=gen) * 2 - 1
    return real, torch.randn(BATCH, 16, generator=gen), torch.randn(BATCH, 16, generator=gen)


def _worker(rank, world, port, run_dir, overrides, out, sgd):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    if sgd:
        torch.optim.Adam = PlainSGD
    from dgan.engine.trainer import Trainer

    cfg = tiny_config(run_dir, *overrides)
    trainer = Trainer(cfg, _resolve_data(cfg))
    b = trainer.backend
    # Batch statistics of G's BatchNorm are per process by design (DDP does not sync
    # them); running statistics make G per-sample, so that batches can be split.
    for m in b.nets["G"].modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    leaks = []
    original_step = b.step

    def checked_step(name):
        other = b.nets["D" if name == "G" else "G"]
        leaks.extend(f"{name} step: {n}" for n, p in other.named_parameters()
                     if p.grad is not None and p.grad.any())
        original_step(name)

    b.step = checked_step
    share = BATCH // world
    for step in range(STEPS):
        real, z_d, z_g = (t[rank * share:(rank + 1) * share] for t in fixed_batch(step))
        trainer.train_step({"image": real, "label": None, "z_D": z_d, "z_G": z_g})
        trainer.step += 1
    leaks += [f"after: {n}" for net in b.nets.values() for n, p in net.named_parameters()
              if p.grad is not None and p.grad.any()]
    if rank == 0:
        torch.save({"G": [p.detach().clone() for p in b.nets["G"].parameters()],
                    "D": [p.detach().clone() for p in b.nets["D"].parameters()], "leaks": leaks},
                   out)
    trainer.close()


def train_fixed(tmp_path, name, world, *overrides, sgd=True):
    """STEPS train_steps on the fixed data in `world` spawned processes; rank 0's result."""
    _resolve_data(tiny_config(tmp_path))  # build the shards once, before the ranks start
    out = str(tmp_path / f"{name}.pt")
    mp.spawn(_worker, args=(world, free_port(), str(tmp_path / name), overrides, out, sgd),
             nprocs=world, join=True)
    return torch.load(out)


def assert_same_parameters(a, b, **tol):
    for net in ("G", "D"):
        for x, y in zip(a[net], b[net]):
            torch.testing.assert_close(x, y, **tol)


@pytest.mark.slow
@pytest.mark.parametrize("r1,accum", [("0", 1), ("1.0", 1), ("0", 2)])
def test_two_ranks_equal_one_rank_with_the_double_batch(tmp_path, r1, accum):
    lr = ["optim.lr_g=0.05", "optim.lr_d=0.05", f"loss.r1_gamma={r1}"]
    one = train_fixed(tmp_path, "one", 1, *lr, f"train.batch_size={BATCH}")
    two = train_fixed(tmp_path, "two", 2, *lr, f"train.batch_size={BATCH // 2 // accum}",
                      f"train.grad_accum={accum}")
    assert one["leaks"] == [] and two["leaks"] == []
    assert_same_parameters(one, two, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_accumulation_equals_the_whole_batch_in_one_process(tmp_path):
    lr = ["optim.lr_g=0.05", "optim.lr_d=0.05"]
    whole = train_fixed(tmp_path, "whole", 1, *lr, f"train.batch_size={BATCH}")
    parts = train_fixed(tmp_path, "parts", 1, *lr, f"train.batch_size={BATCH // 4}",
                        "train.grad_accum=4")
    assert_same_parameters(whole, parts, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 2])
def test_deepspeed_accumulates_like_ddp_and_leaks_no_gradient(tmp_path, stage):
    ddp = train_fixed(tmp_path, "ddp", 1, f"train.batch_size={BATCH}")
    ds = train_fixed(tmp_path, "ds", 1, f"train.batch_size={BATCH // 2}", "train.grad_accum=2",
                     "backend.name=deepspeed",
                     f"backend.zero_stage={stage}")
    assert ds["leaks"] == []
    assert_same_parameters(ddp, ds, rtol=1e-4, atol=1e-6)


def test_engine_config_fills_batch_keys_and_turns_clipping_off():
    c = engine_config(None, zero_stage=2, micro_batch=8, grad_accum=3, world_size=4)
    assert c["zero_optimization"]["stage"] == 2
    assert (c["train_micro_batch_size_per_gpu"], c["gradient_accumulation_steps"],
            c["train_batch_size"]) == (8, 3, 96)
    assert c["gradient_clipping"] == 0.0 and "bf16" not in c and "fp16" not in c


def test_launch_json_files_are_valid_engine_configs():
    root = os.path.join(os.path.dirname(__file__), "..", "launch")
    for net in "gd":
        c = engine_config(os.path.join(root, f"ds-zero2-{net}.json"), zero_stage=2,
                          micro_batch=4, grad_accum=2, world_size=8)
        assert c["train_batch_size"] == 64


@pytest.mark.parametrize("json_text,match", [
    ('{"zero_optimization": {"stage": 1}}', "backend.zero_stage"),
    ('{"train_micro_batch_size_per_gpu": 3}', "train_micro_batch_size_per_gpu"),
    ('{"bf16": {"enabled": true}}', "bf16"),
])
def test_engine_config_refuses_disagreement(tmp_path, json_text, match):
    path = tmp_path / "ds.json"
    path.write_text(json_text)
    with pytest.raises(ValueError, match=match):
        engine_config(str(path), zero_stage=2, micro_batch=8, grad_accum=1, world_size=1)


def test_deepspeed_refuses_r1_and_fp16():
    with pytest.raises(ConfigError, match="r1_gamma"):
        load_config(None, ["backend.name=deepspeed", "loss.r1_gamma=1"])
    with pytest.raises(ConfigError, match="bf16"):
        load_config(None, ["backend.name=deepspeed", "train.precision=fp16"])


def test_zero3_is_refused_with_what_to_do():
    with pytest.raises(ConfigError, match="zero_stage=2"):
        load_config(None, ["backend.name=deepspeed", "backend.zero_stage=3"])
    with pytest.raises(ValueError, match="not supported"):
        engine_config(None, zero_stage=3, micro_batch=1, grad_accum=1, world_size=1)


def test_config_keys():
    cfg = load_config(None, [])
    assert cfg.train.grad_accum == 1 and cfg.backend.zero_stage == 0
    assert cfg.backend.expect_world_size == 0 and cfg.backend.deepspeed_config_g is None
    with pytest.raises(ConfigError, match="grad_accum"):
        load_config(None, ["train.grad_accum=0"])


def test_lonely_process_warns_loudly(monkeypatch, capsys):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    check_world_size(1, 0)
    assert capsys.readouterr().err == ""
    check_world_size(2, 2)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    check_world_size(1, 0)
    assert "only this one process was started" in capsys.readouterr().err


@pytest.mark.parametrize("actual", [1, 3])
def test_expect_world_size_refuses_another_world_size(actual):
    with pytest.raises(ConfigError, match=rf"backend\.expect_world_size=2 but this launch "
                       rf"started {actual} process\(es\)"):
        check_world_size(actual, 2)


@pytest.mark.parametrize("current,saved", [(1, 0), (0, 2), (2, 2)])
def test_deepspeed_refuses_resume_it_cannot_make_exact(current, saved):
    from types import SimpleNamespace

    from dgan.engine.backends.deepspeed import DeepSpeedBackend

    me = SimpleNamespace(name="deepspeed", zero_stage=current)
    with pytest.raises(ValueError, match="silently diverge"):
        DeepSpeedBackend.load_state_dict(me, {"name": "deepspeed", "zero_stage": saved,
                                              "world_size": 1})
    DeepSpeedBackend.load_state_dict(SimpleNamespace(name="deepspeed", zero_stage=0),
                                     {"name": "ddp", "world_size": 2})
