"""Super-resolution (task.name=sr) with real processes (gloo on 127.0.0.1, CPU).

1. Equivalence: 2 ranks (DDP, and DeepSpeed ZeRO-2) train like 1 rank with the doubled
   batch across the pixel -> GAN stage boundary, fed the same fixed global batches of HR
   images through `Trainer.train_step` in spawned processes (as
   tests/test_translation_distributed.py), with SGD standing in for Adam (PlainSGD) and the
   linear LR decay on. The crops and the degradations (bicubic, and realistic) are drawn
   per sample from its index in the global batch, so both splits see the same inputs.
   Only with loss.gan=vanilla (the default, used here): relativistic's means over the
   micro-batch's logits change with the split.
2. `kill -9` at a random step before or after the stage boundary, then the same command: the
   final checkpoint equals an uninterrupted run's tensor by tensor (G, D, G_ema, both
   optimizers, LR schedules, every rank's state).
3. A 2-rank checkpoint resumes on 1 rank: the run continues and images seen add up.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from test_backend import PlainSGD, free_port
from test_checkpoint_resume import ROOT, dgan_cmd, env, ok
from test_translation_distributed import assert_same_final_checkpoint, read_checkpoint

from dgan.checkpoint import layout
from dgan.cli import _resolve_data
from dgan.config import load_config

pytestmark = pytest.mark.slow

CONFIG = "configs/sr_x4_photos.yaml"
# tests/test_sr.py's tiny overrides of the demo config (the built-in digits at 32 px, one
# channel, tiny widths), with 16 px crops of the 32 px images so that the crops' corners
# are drawn (4x4 LR inputs)
TINY = ["data.path=builtin:mnist", "data.resolution=32", "data.channels=1", "sr.patch=16",
        "model.g_width=8", "model.g_blocks=1", "model.g_growth=4", "model.d_width=4",
        "data.workers=0", "log.progress=off", "log.grid=2", "eval.every=0",
        "loss.perceptual_weight=0", "checkpoint.async_save=false"]
REALISTIC = ["sr.degradation=realistic"]
BICUBIC = ["sr.degradation=bicubic"]
BATCH = 8  # global batch of the fixed data
STEPS = 4
DS = ["backend.name=deepspeed", "backend.zero_stage=2"]


def overrides(run_dir, *extra: str) -> list[str]:
    return [f"run.dir={run_dir}", *TINY, *extra]


@pytest.fixture(scope="module", autouse=True)
def shards():
    """Build the built-in shards once, before several ranks would race to build them."""
    _resolve_data(load_config(CONFIG, overrides("unused")))


# -- 1. equivalence ------------------------------------------------------------------------
def fixed_batch(step: int) -> dict:
    """The global batch of `step`, the same in every process: HR images in [-1, 1]."""
    gen = torch.Generator().manual_seed(100 + step)
    return {"image": torch.rand(BATCH, 1, 32, 32, generator=gen) * 2 - 1, "label": None}


def train_case(rank: int, world: int, run_dir: str, extra: list[str]) -> dict:
    """STEPS train_steps on this rank's share of the fixed global batches: every network's
    parameters (before and after), G_ema's, the LR per step and group, and this rank's
    (HR, LR) inputs of each step."""
    from dgan.engine.trainer import Trainer

    cfg = load_config(CONFIG, overrides(run_dir, *extra))
    trainer = Trainer(cfg, _resolve_data(cfg))
    b = trainer.backend
    initial = {n: [p.detach().clone() for p in net.parameters()] for n, net in b.nets.items()}
    share = BATCH // world
    engine_opt = ({g: e.optimizer for g, e in b.engines.items()} if b.name == "deepspeed"
                  else b.opt)
    lrs, inputs, phases = [], [], []
    for step in range(STEPS):
        batch = {k: v[rank * share:(rank + 1) * share] if v is not None else None
                 for k, v in fixed_batch(step).items()}
        trainer.train_step(batch)
        inputs.append((batch["hr"].clone(), batch["lr"].clone()))
        phases.append([p.name for p in trainer.task.phases()])
        trainer.step += 1
        for schedule in trainer.lr_schedules.values():  # as Trainer.fit does
            schedule.step()
        lrs.append({g: [pg["lr"] for pg in engine_opt[g].param_groups] for g in b.groups})
    return {**{n: [p.detach().clone() for p in net.parameters()] for n, net in b.nets.items()},
            "G_ema": [p.detach().clone() for p in trainer.emas["G_ema"].parameters()],
            "initial": initial, "lrs": lrs, "inputs": inputs, "phases": phases,
            "trainer": trainer}


def _worker(rank, world, port, cases, run_root, out):
    """Every case in turn on one process group; rank 0 saves {case: [each rank's result]}
    (every rank's inputs gathered, the rest rank 0's)."""
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    torch.optim.Adam = PlainSGD
    results = {}
    for name, extra in cases:
        results[name] = train_case(rank, world, os.path.join(run_root, name), extra)
    trainers = [r.pop("trainer") for r in results.values()]
    inputs = {name: r.pop("inputs") for name, r in results.items()}
    gathered = [None] * world if world > 1 else [inputs]
    if world > 1:
        dist.all_gather_object(gathered, inputs)
    if rank == 0:
        for name, r in results.items():
            # the global batch's inputs of each step: the ranks' rows in rank order
            r["inputs"] = [tuple(torch.cat([g[name][s][i] for g in gathered]) for i in (0, 1))
                           for s in range(STEPS)]
        torch.save(results, out)
    trainers[-1].close()


def train_fixed(tmp_path, world: int, cases: list) -> dict:
    """`cases` ([(name, overrides)]) on `world` spawned ranks; {name: result}."""
    tmp_path.mkdir()
    out = str(tmp_path / f"world{world}.pt")
    mp.spawn(_worker, args=(world, free_port(), cases, str(tmp_path), out), nprocs=world,
             join=True)
    return torch.load(out)


# SGD with rates that move every weight far beyond the tolerance; the LR falls from step 1;
# G pretrains on steps 0-1, the GAN stage (G then D) is steps 2-3
LR = ["optim.lr_g=0.05", "optim.lr_d=0.05", f"train.steps={STEPS + 1}", "optim.lr_decay_from=1",
      "sr.pretrain_steps=2"]
ONE_RANK = {"bicubic": BICUBIC, "realistic": REALISTIC}
TWO_RANKS = {  # case: (the 1-rank run it must equal, overrides)
    "ddp-bicubic": ("bicubic", ["train.batch_size=4", *BICUBIC]),
    "ddp-realistic": ("realistic", ["train.batch_size=4", *REALISTIC]),
    "zero2-realistic": ("realistic", ["train.batch_size=4", *REALISTIC, *DS]),
}


@pytest.fixture(scope="module")
def equivalence(tmp_path_factory) -> tuple[dict, dict]:
    """({degradation: 1 rank (DDP) with the whole global batch}, {case: 2 ranks})."""
    tmp = tmp_path_factory.mktemp("equivalence")
    one = train_fixed(tmp / "one", 1, [(name, [*LR, f"train.batch_size={BATCH}", *extra])
                                       for name, extra in ONE_RANK.items()])
    two = train_fixed(tmp / "two", 2, [(c, [*LR, *extra]) for c, (_, extra) in TWO_RANKS.items()])
    return one, two


@pytest.mark.parametrize("case", list(TWO_RANKS))
def test_two_ranks_equal_one_rank_with_the_double_batch(equivalence, case):
    one, two = equivalence
    ref, got = one[TWO_RANKS[case][0]], two[case]
    # the same crops and LR inputs, bit for bit: a sample's draws follow its global index
    for step, ((hr1, lr1), (hr2, lr2)) in enumerate(zip(ref["inputs"], got["inputs"])):
        assert hr1.shape == (BATCH, 1, 16, 16) and lr1.shape == (BATCH, 1, 4, 4)
        assert torch.equal(hr1, hr2) and torch.equal(lr1, lr2), step
    assert ref["phases"] == got["phases"] == [["G"], ["G"], ["G", "D"], ["G", "D"]]
    for net in ("G", "D", "G_ema"):
        for x, y in zip(ref[net], got[net]):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6, msg=lambda m, net=net: f"{net}: {m}")
    assert ref["lrs"] == pytest.approx(got["lrs"], rel=1e-12)
    assert ref["lrs"][-1]["G"][0] < ref["lrs"][0]["G"][0]  # the decay acted
    # the equality is not trivial: every network moved by far more than the tolerance
    for net in ("G", "D"):
        moved = max((a - b).abs().max().item() for a, b in zip(ref[net], ref["initial"][net]))
        assert moved > 1e-3, net


def test_the_degradations_differ(equivalence):
    """The realistic cases do test the realistic degradation (not bicubic's inputs)."""
    one, _ = equivalence
    hr_b, lr_b = one["bicubic"]["inputs"][0]
    hr_r, lr_r = one["realistic"]["inputs"][0]
    assert torch.equal(hr_b, hr_r) and not torch.allclose(lr_b, lr_r, atol=0.02)


# -- 2. kill -9 and resume ------------------------------------------------------------------
# checkpoints at 3, 6 and 8; G pretrains on steps 0-4, the GAN stage is 5-7
RUN = ["train.batch_size=2", "train.steps=8", "checkpoint.every=3", "log.every=4",
       "optim.lr_decay_from=2", "sr.pretrain_steps=5", *REALISTIC]


def train(nproc: int, run_dir: Path, *extra: str, **extra_env: str
          ) -> subprocess.CompletedProcess:
    """`dgan train CONFIG ...` under torchrun (tests/test_checkpoint_resume.py)."""
    cmd = dgan_cmd(nproc, "train", CONFIG, *overrides(run_dir, *RUN, *extra))
    return subprocess.run(cmd, env=env(**extra_env), cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.fixture(scope="module")
def run_a(tmp_path_factory) -> Path:
    """The uninterrupted 2-rank run (8 steps, checkpoints at 3, 6 and 8)."""
    run = tmp_path_factory.mktemp("a") / "run"
    ok(train(2, run))
    return run


@pytest.mark.parametrize("kill_steps", [(4, 5), (6, 7)], ids=["pretrain", "gan"])
def test_sigkill_then_the_same_command_resumes_exactly(tmp_path, run_a, kill_steps):
    """Killed at step 4 or 5 it resumes from step 3, in pretraining, and crosses the
    boundary after the resume; at 6 or 7 it resumes from step 6, in the GAN stage."""
    kill_step = random.choice(kill_steps)
    run_b = tmp_path / "b"
    killed = train(2, run_b, DGAN_TEST_KILL_AT_STEP=str(kill_step))
    assert killed.returncode != 0, f"run B was not killed at step {kill_step}"
    found = layout.newest_valid(run_b)
    assert found is not None and found[1]["step"] == 3 * (kill_step // 3), kill_step
    out = ok(train(2, run_b))
    assert f"resumed from {found[0]} at step {found[1]['step']}" in out
    shared, _ = assert_same_final_checkpoint(run_a, run_b)
    # what was compared: G, D, G_ema and both optimizers' state, D's having stepped
    assert {"G", "D", "G_ema", "opt_G", "opt_D"} <= set(shared)
    d_steps = {float(st["step"]) for st in shared["opt_D"]["state"].values()}
    assert d_steps == {3.0}, d_steps  # D stepped in steps 5, 6 and 7 only
    assert shared["task"]["grid"]["lr"].shape == (2, 1, 4, 4)  # the task's state too


# -- 3. another world size ------------------------------------------------------------------
def test_two_rank_checkpoint_resumes_on_one_rank(tmp_path, run_a):
    from dgan.engine.trainer import Trainer

    run = tmp_path / "run"
    shutil.copytree(run_a, run)
    saved_shared, _ = read_checkpoint(layout.newest_valid(run)[0])
    cfg = load_config(CONFIG, overrides(run, *RUN, "train.steps=10"))
    trainer = Trainer(cfg, _resolve_data(cfg))
    assert trainer.resume() is not None and trainer.step == 8
    assert trainer.fit() == 0
    path, meta = layout.newest_valid(run)
    assert (meta["step"], meta["world_size"]) == (10, 1)
    assert meta["images_seen"] == saved_shared["images_seen"] + 2 * 2 == 8 * 4 + 2 * 2
    state, _ = read_checkpoint(path)
    for net in ("G", "D", "G_ema"):
        assert all(torch.isfinite(v).all() for v in state[net].values()
                   if v.is_floating_point()), net
        assert any(not torch.equal(v, saved_shared[net][k]) for k, v in state[net].items()), net
