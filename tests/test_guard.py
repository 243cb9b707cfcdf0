"""The non-finite guard: skipped steps, the counter, the stop, and no non-finite checkpoint.

Non-finite values come from an exploding learning rate, or from the test hook
DGAN_TEST_NONFINITE_LOSS=N[@R], which adds inf to D's loss from step N on (on rank R).
inf added to a loss leaves its gradient finite: only the guard's poisoning of the loss
makes such a step skip, on every rank.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dgan import checkpoint
from dgan.cli import _resolve_data
from dgan.config import load_config
from dgan.engine.guard import NONFINITE_ENV, NonFiniteError
from dgan.engine.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = ["train.batch_size=8", "log.every=1", "log.progress=false", "data.workers=0",
        "log.grid=4", "model.g_width=16", "model.d_width=16", "checkpoint.async_save=false"]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_exploding_learning_rate_skips_logs_and_stops_via_the_cli(tmp_path):
    """optim.lr_d=1e10: D's first update makes every later loss NaN. Steps 1-4 are
    skipped (G's in step 1, both after), the run stops at step 4 with one line, and the
    checkpoint of step 2 (finite weights) stays the latest."""
    run = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "dgan", "train", f"run.dir={run}", "optim.lr_d=1e10",
         "train.steps=30", "checkpoint.every=2", "train.max_bad_steps=4", *TINY],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 2, out.stderr
    errors = [line for line in out.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("dgan: error: run.dir "), out.stderr
    assert "4 steps in a row up to step 4" in errors[0] and "max_bad_steps=4" in errors[0]
    assert "Traceback" not in out.stderr
    assert "dgan: step 1: non-finite loss or gradient; skipped the update of G" in out.stdout
    assert [(r["step"], r["guard/skipped_steps"]) for r in records(run)] == [
        (1, 1), (2, 2), (3, 3)]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest",
                                                                        "step-00000002"]
    path, state = checkpoint.load_latest(run)
    assert path.name == "step-00000002" and state["guard"] == {"skipped_steps": 2}
    for net in ("G", "D", "G_ema"):
        assert all(torch.isfinite(v).all() for v in state[net].values()), net


def test_a_skipped_step_changes_neither_d_nor_g_ema(tmp_path, monkeypatch):
    """inf in D's loss from step 4 on: D, its Adam state and G_ema stay those of step 4
    (G, whose loss is finite, still trains); the run stops after 3 bad steps."""
    monkeypatch.setenv(NONFINITE_ENV, "4")
    run = tmp_path / "run"
    cfg = load_config(None, [f"run.dir={run}", "train.steps=20", "checkpoint.every=4",
                             "train.max_bad_steps=3", *TINY])
    trainer = Trainer(cfg, _resolve_data(cfg))
    with pytest.raises(NonFiniteError, match="3 steps in a row up to step 7"):
        trainer.fit()
    assert trainer.step == 7
    path, saved = checkpoint.load_latest(run)
    assert path.name == "step-00000004"
    now = trainer.state_dict()
    for net in ("D", "G_ema"):
        for k, v in saved[net].items():
            assert torch.equal(v, now[net][k]), (net, k)
    for pid, st in saved["opt_D"]["state"].items():
        for k, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(now["opt_D"]["state"][pid][k]))
    assert any(not torch.equal(v, now["G"][k]) for k, v in saved["G"].items())
    # the skipped steps' forwards wrote G's BatchNorm statistics; they were put back
    _, own, _ = trainer.checkpointer.read(path, checkpoint.read_meta(path))
    for k, v in trainer.backend.nets["G"].named_buffers():
        assert torch.equal(v, own["buffers"]["G"][k]), k
    assert trainer.guard.skipped_steps == 3
    assert [r["guard/skipped_steps"] for r in records(run)][3:] == [0, 1, 2]


def test_max_bad_steps_zero_never_stops(tmp_path, monkeypatch):
    monkeypatch.setenv(NONFINITE_ENV, "2")
    cfg = load_config(None, [f"run.dir={tmp_path / 'run'}", "train.steps=6",
                             "checkpoint.every=6", "train.max_bad_steps=0", *TINY])
    trainer = Trainer(cfg, _resolve_data(cfg))
    assert trainer.fit() == 0
    assert trainer.guard.skipped_steps == 4
    assert checkpoint.load_latest(tmp_path / "run")[1]["guard"] == {"skipped_steps": 4}


def test_fp16_scaler_skips_are_counted_once(tmp_path, monkeypatch):
    """fp16 (ddp): the GradScaler skips the poisoned D step and halves its scale; the
    guard counts the step once."""
    monkeypatch.setenv(NONFINITE_ENV, "2")
    cfg = load_config(None, [f"run.dir={tmp_path / 'run'}", "train.steps=4",
                             "checkpoint.every=4", "train.max_bad_steps=0",
                             "train.precision=fp16", *TINY])
    trainer = Trainer(cfg, _resolve_data(cfg))
    trainer.fit()
    assert trainer.guard.skipped_steps == 2
    scaler = trainer.backend.scalers["D"]
    assert scaler.get_scale() == 2.0**16 / 4  # two overflows from the initial scale


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path):
    run = tmp_path / "run"
    cfg = load_config(None, [f"run.dir={run}", "train.steps=2", "checkpoint.every=2", *TINY])
    trainer = Trainer(cfg, _resolve_data(cfg))
    trainer.fit()
    with torch.no_grad():
        next(trainer.backend.nets["D"].parameters()).view(-1)[0] = float("nan")
    trainer.step = 3
    with pytest.raises(NonFiniteError, match="refusing to save step 3: .* stays the latest"):
        trainer.save()
    assert checkpoint.load_latest(run)[0].name == "step-00000002"
    assert not list((run / "checkpoints").glob("step-00000003*"))


@pytest.mark.slow
@pytest.mark.parametrize("backend", [[], ["backend.name=deepspeed"],
                                     ["backend.name=deepspeed", "backend.zero_stage=1"]],
                         ids=["ddp", "deepspeed-zero0", "deepspeed-zero1"])
def test_two_ranks_skip_together_when_one_rank_loss_is_not_finite(tmp_path, monkeypatch,
                                                                  backend):
    """inf in D's loss on rank 1 only, from step 3 on: its gradient stays finite, so only
    the poisoned loss makes the averaged gradient NaN. Both ranks skip D's steps 4-6: D
    is the same in the checkpoints of steps 3 and 6, and the ranks end equal (digests)."""
    from test_launch import DIGEST, accelerate_train

    run = tmp_path / "run"
    monkeypatch.setenv(NONFINITE_ENV, "3@1")
    out = accelerate_train(run, "train.steps=6", "checkpoint.every=3", "checkpoint.keep=2",
                           "log.every=3", "train.max_bad_steps=0", *backend)
    digests = {m[0]: m[2:] for m in DIGEST.findall(out)}
    assert sorted(digests) == ["0", "1"] and digests["0"] == digests["1"], out[-3000:]
    assert [r["guard/skipped_steps"] for r in records(run)] == [0, 3]
    step3 = checkpoint.load(run / "checkpoints" / "step-00000003")
    step6 = checkpoint.load(run / "checkpoints" / "step-00000006")
    for k, v in step3["D"].items():
        assert torch.equal(v, step6["D"][k]), k
    assert any(not torch.equal(v, step6["G"][k]) for k, v in step3["G"].items())


def test_stylegan2_phases_skip_and_put_back_their_state(tmp_path, monkeypatch):
    """StyleGAN2 with every phase (R1, path length, ADA): inf in D's loss from step 2 on
    skips Dmain and Dreg; D, G_ema and the augmentation statistics stay those of step 2
    (those of a run that stopped there)."""
    from test_stylegan2_train import sg2_config

    from dgan.data.builtin import make_builtin

    make_builtin("stacked_mnist", tmp_path / "data", resolution=32, samples=64, per_shard=32)
    cfg = sg2_config(tmp_path / "two", tmp_path / "data", "train.steps=2")
    two = Trainer(cfg, _resolve_data(cfg))
    two.fit()
    monkeypatch.setenv(NONFINITE_ENV, "2")
    cfg = sg2_config(tmp_path / "run", tmp_path / "data", "train.max_bad_steps=0",
                     "checkpoint.async_save=false")
    trainer = Trainer(cfg, _resolve_data(cfg))
    trainer.fit()
    assert trainer.guard.skipped_steps == 2
    saved = checkpoint.load(tmp_path / "run" / "checkpoints" / "step-00000002")
    now = trainer.state_dict()
    for net in ("D", "G_ema"):
        for k, v in saved[net].items():
            assert torch.equal(v, now[net][k]), (net, k)
    assert torch.equal(trainer.task.augment._stat, two.task.augment._stat)
    assert torch.equal(trainer.task.loss.pl_mean, two.task.loss.pl_mean)
