"""Exact resume across real process kills and world-size changes (2 gloo ranks on CPU).

Run A trains 60 steps without interruption. Run B is the same command killed with SIGKILL
(at a random step after its first checkpoint, or inside a save) and started again; its
final state and G_ema samples must equal A's bit for bit. Kills go through the test-only
hooks DGAN_TEST_KILL_AT_STEP / DGAN_TEST_KILL_IN_SAVE, so nothing here waits on time.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dgan import checkpoint
from dgan.checkpoint import layout

ROOT = Path(__file__).resolve().parents[1]
TINY = ["train.batch_size=8", "data.workers=0", "log.progress=false", "model.g_width=16",
        "model.d_width=16", "log.grid=16"]
RUN = [*TINY, "train.steps=60", "checkpoint.every=20", "log.every=20"]
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
             # accelerate starts a gloo process group on a CUDA-less machine only when told
             ACCELERATE_USE_CPU="1")
    for k in ("DGAN_TEST_KILL_AT_STEP", "DGAN_TEST_KILL_IN_SAVE"):
        e.pop(k, None)
    e.update(extra)
    return e


def dgan_cmd(nproc: int, *args: str) -> list[str]:
    """`dgan` under torchrun (nproc > 1) or as one plain process."""
    if nproc == 1:
        return [sys.executable, "-m", "dgan", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "dgan", *args]


def train(nproc: int, run_dir: Path, *overrides: str, timeout: float = 150,
          **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(dgan_cmd(nproc, "train", f"run.dir={run_dir}", *overrides),
                          env=env(**extra_env), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module", autouse=True)
def shards():
    """Build the demo shards once, before two ranks would race to build them."""
    from dgan.data.builtin import builtin_shards

    builtin_shards("mnist", 28)


@pytest.fixture(scope="module")
def run_a(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("a") / "run"
    ok(train(2, run, *RUN))
    return run


def final_state(run: Path) -> dict:
    path, state = checkpoint.load_latest(run)
    assert path.name == "step-00000060"
    return state


def assert_same_state(a: Path, b: Path) -> None:
    sa, sb = final_state(a), final_state(b)
    assert (sa["step"], sa["images_seen"]) == (sb["step"], sb["images_seen"])
    for part in ("G", "D", "G_ema"):
        assert sa[part].keys() == sb[part].keys()
        for k in sa[part]:
            assert torch.equal(sa[part][k], sb[part][k]), f"{part}.{k}"
    for opt in ("opt_G", "opt_D"):
        assert sa[opt]["param_groups"] == sb[opt]["param_groups"]
        for name, st in sa[opt]["state"].items():
            for k, v in st.items():
                assert torch.equal(v, sb[opt]["state"][name][k]), f"{opt}.{name}.{k}"


def samples(run: Path, out: Path) -> dict[str, bytes]:
    cmd = [sys.executable, "-m", "dgan", "sample", "--run", str(run), "--n", "16", "--seed", "5",
           "--out", str(out)]
    ok(subprocess.run(cmd, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=120))
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_sigkill_at_a_random_step_then_same_command_resumes_exactly(run_a, tmp_path):
    kill_step = random.randint(21, 59)
    run_b = tmp_path / "run"
    killed = train(2, run_b, *RUN, DGAN_TEST_KILL_AT_STEP=str(kill_step))
    assert killed.returncode != 0, f"run B was not killed at step {kill_step}"
    found = layout.newest_valid(run_b)
    assert found is not None and found[1]["step"] == 20 * (kill_step // 20), kill_step
    out = ok(train(2, run_b, *RUN))
    assert f"resumed from {found[0]} at step {found[1]['step']}" in out
    assert_same_state(run_a, run_b)
    assert samples(run_a, tmp_path / "sa") == samples(run_b, tmp_path / "sb")


def test_sigkill_inside_a_save_leaves_nothing_loadable_and_resumes_exactly(run_a, tmp_path):
    run_b = tmp_path / "run"
    killed = train(2, run_b, *RUN, DGAN_TEST_KILL_IN_SAVE="40")
    assert killed.returncode != 0
    names = sorted(p.name for p in layout.checkpoint_dir(run_b).iterdir())
    # the tensors of step 40 were written, but the checkpoint was never committed
    assert "step-00000040.tmp" in names and "step-00000040" not in names, names
    assert (layout.checkpoint_dir(run_b) / "latest").read_text().strip() == "step-00000020"
    assert layout.newest_valid(run_b)[1]["step"] == 20
    out = ok(train(2, run_b, *RUN))
    assert "at step 20" in out
    assert not (layout.checkpoint_dir(run_b) / "step-00000040.tmp").exists()
    assert_same_state(run_a, run_b)


def test_two_rank_checkpoint_resumes_on_one_rank_and_back_on_two(tmp_path):
    run = tmp_path / "run"
    common = [*TINY, "checkpoint.every=10", "log.every=10"]
    ok(train(2, run, *common, "train.steps=20"))
    out = ok(train(1, run, *common, "train.steps=30"))
    assert "written by 2 process(es), resuming on 1" in out
    meta = layout.newest_valid(run)[1]
    assert (meta["step"], meta["world_size"], meta["images_seen"]) == (30, 1, 20 * 16 + 10 * 8)
    out = ok(train(2, run, *common, "train.steps=40"))
    assert "written by 1 process(es), resuming on 2" in out
    meta = layout.newest_valid(run)[1]
    assert (meta["step"], meta["world_size"]) == (40, 2)
    assert meta["images_seen"] == 20 * 16 + 10 * 8 + 10 * 16
    state = checkpoint.load_latest(run)[1]
    assert all(torch.isfinite(v).all() for v in state["G"].values() if v.is_floating_point())


def tensors_of(tree, prefix=""):
    """Every tensor in a nested structure, by path."""
    if torch.is_tensor(tree):
        return {prefix: tree}
    items = (tree.items() if isinstance(tree, dict) else
             enumerate(tree) if isinstance(tree, (list, tuple)) else ())
    out = {}
    for k, v in items:
        out.update(tensors_of(v, f"{prefix}/{k}"))
    return out


def test_deepspeed_zero2_resumes_exactly_on_the_same_world_size_and_refuses_another(tmp_path):
    ds = [*TINY, "train.steps=10", "checkpoint.every=5", "log.every=5",
          "backend.name=deepspeed", "backend.zero_stage=2", "backend.trust_deepspeed_files=true"]
    ok(train(2, tmp_path / "a", *ds))
    killed = train(2, tmp_path / "b", *ds, DGAN_TEST_KILL_AT_STEP="7")
    assert killed.returncode != 0
    assert "at step 5" in ok(train(2, tmp_path / "b", *ds))
    sa, sb = (checkpoint.load_latest(tmp_path / r)[1] for r in "ab")
    for part in ("G", "D", "G_ema"):
        for k in sa[part]:
            assert torch.equal(sa[part][k], sb[part][k]), f"{part}.{k}"
    # the engines' optimizer partitions (DeepSpeed's own pickles; written by this test)
    final = tmp_path / "a" / "checkpoints" / "step-00000010"
    native = [p.relative_to(tmp_path / "a") for p in final.rglob("*optim_states.pt")]
    assert len(native) == 4  # G and D, 2 ranks each
    for rel in native:
        a, b = (tensors_of(torch.load(tmp_path / r / rel, weights_only=False)) for r in "ab")
        assert a.keys() == b.keys() and a
        for k in a:
            assert torch.equal(a[k], b[k]), f"{rel}{k}"
    refused = train(1, tmp_path / "b", *ds[:-5], "train.steps=12", "backend.name=deepspeed",
                    "backend.zero_stage=2", "backend.trust_deepspeed_files=true")
    assert refused.returncode != 0
    assert "partitioned over 2 process(es) and this run has 1" in refused.stderr
    assert "ds_to_universal --inject_missing_state" in refused.stderr
    assert refused.returncode == 2 and "Traceback" not in refused.stderr  # one dgan: error: line
