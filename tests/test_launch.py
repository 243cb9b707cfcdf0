"""Real multi-process runs on CPU (gloo, 127.0.0.1): accelerate launch, torchrun nodes.

Each run prints one "parameter digest" line per rank at the end (dgan -v); ranks that
trained in sync have bitwise-equal parameters, hence equal digests.
"""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["train.steps=20", "train.batch_size=8", "data.workers=0", "log.progress=false",
        "log.every=5", "log.grid=4", "checkpoint.every=20", "model.g_width=16",
        "model.d_width=16"]
DIGEST = re.compile(r"rank (\d+)/(\d+) parameter digest G=(\w+) D=(\w+)")
# DeepSpeed and DDP reduce the same fp32 gradients (a sum of two values is exact in
# either order) and step the same torch Adam: the measured difference over 20 steps is
# 0 (equal digests). The bound leaves room for other reduction orders (more ranks, GPUs).
LOSS_RTOL = 1e-4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    e = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(key, None)
    return e


def run(cmd: list[str], cwd: Path, timeout: int = 240) -> str:
    proc = subprocess.run(cmd, check=False, cwd=cwd, env=env(), capture_output=True,
                          text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "terminate called" not in out, out[-4000:]
    return out


def digests(out: str, world: int) -> set:
    found = {int(m[0]): (m[2], m[3]) for m in DIGEST.findall(out) if int(m[1]) == world}
    assert sorted(found) == list(range(world)), out[-4000:]
    return set(found.values())


def accelerate_train(run_dir: Path, *overrides: str) -> str:
    return run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(ROOT / "launch" / "cpu-ddp.yaml"), "--main_process_port", str(free_port()),
                "-m", "dgan", "-v", "train", *TINY, f"run.dir={run_dir}", *overrides],
               cwd=run_dir.parent)


def losses(run_dir: Path) -> list:
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss/D"], r["loss/G"]) for r in records]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ddp") / "run"
    run_dir.parent.mkdir(exist_ok=True)
    return run_dir, accelerate_train(run_dir, "backend.expect_world_size=2")


@pytest.mark.slow
def test_accelerate_cpu_ddp_two_ranks_stay_identical(ddp_run):
    run_dir, out = ddp_run
    assert len(digests(out, 2)) == 1
    assert "2 process(es)" in out and "global batch 16 = 8 per process x 2 x 1" in out
    assert "WARNING" not in out
    assert json.loads((run_dir / "log.jsonl").read_text().splitlines()[-1])[
        "progress/images_seen"] == 20 * 16
    inspect = subprocess.run([sys.executable, "-m", "dgan", "ckpt", "inspect", str(run_dir)],
                             env=env(), capture_output=True, text=True, check=True).stdout
    assert re.search(r"world size\s+2", inspect) and re.search(r"backend\s+ddp", inspect)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 1, 2])
def test_deepspeed_two_ranks_agree_and_match_ddp(tmp_path, ddp_run, stage):
    run_dir = tmp_path / "run"
    out = accelerate_train(run_dir, "backend.name=deepspeed", f"backend.zero_stage={stage}")
    assert len(digests(out, 2)) == 1
    reference = losses(ddp_run[0])
    mine = losses(run_dir)
    assert [s for s, *_ in mine] == [s for s, *_ in reference] == [5, 10, 15, 20]
    for (step, d0, g0), (_, d1, g1) in zip(reference, mine):
        assert abs(d1 - d0) <= LOSS_RTOL * abs(d0) + 1e-6, (step, d0, d1)
        assert abs(g1 - g0) <= LOSS_RTOL * abs(g0) + 1e-6, (step, g0, g1)
    inspect = subprocess.run([sys.executable, "-m", "dgan", "ckpt", "inspect", str(run_dir)],
                             env=env(), capture_output=True, text=True, check=True).stdout
    assert re.search(r"backend\s+deepspeed", inspect)


@pytest.mark.slow
@pytest.mark.parametrize("compile_", [True, False], ids=["compiled", "eager"])
def test_accelerate_ddp_stylegan2_two_ranks_stay_identical(tmp_path, compile_):
    """StyleGAN2 under DDP, every phase (path length and R1 on): gradients sync (equal
    digests). The regularisers take their inner gradient inside the DDP-wrapped forward.
    train.compile=true: each rank compiles every phase around its DDP-wrapped network."""
    from dgan.data.builtin import make_builtin

    make_builtin("stacked_mnist", tmp_path / "data", resolution=32, samples=64, per_shard=32)
    run_dir = tmp_path / "run"
    out = run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "launch" / "cpu-ddp.yaml"), "--main_process_port", str(free_port()),
               "-m", "dgan", "-v", "train", f"run.dir={run_dir}", "model.name=stylegan2",
               f"data.path={tmp_path / 'data'}", "data.resolution=32", "data.channels=3",
               "data.workers=0", "model.z_dim=32", "model.w_dim=32", "model.channel_base=256",
               "model.channel_max=32", "model.mapping_layers=2", "train.batch_size=4",
               "train.steps=4", "checkpoint.every=4", "log.every=2", "log.grid=4",
               "log.progress=false", "loss.r1_gamma=0.1", "loss.r1_interval=2",
               "loss.pl_weight=2", "loss.pl_interval=2", f"train.compile={str(compile_).lower()}",
               "backend.expect_world_size=2"],
              cwd=tmp_path, timeout=1200)
    assert len(digests(out, 2)) == 1
    assert "global batch 8 = 4 per process x 2 x 1" in out
    # Compiled: both ranks compiled both trained networks inside their DDP wrappers.
    for net in ("Generator", "Discriminator"):
        assert out.count(f"train.compile: {net} (DDP) runs through torch.compile in "
                         "Gmain/Dmain/Greg/Dreg") == (2 if compile_ else 0), out
    # ... into the compile cache both ranks share in the run directory
    assert (run_dir / "compile_cache" / "fxgraph").is_dir() == compile_
    assert out.count(f"compiled graphs and kernels cached in {run_dir / 'compile_cache'}") == (
        2 if compile_ else 0), out
    inspect = subprocess.run([sys.executable, "-m", "dgan", "ckpt", "inspect", str(run_dir)],
                             env=env(), capture_output=True, text=True, check=True).stdout
    assert re.search(r"world size\s+2", inspect) and re.search(r"step\s+4", inspect), inspect
    # Path length ran (only Greg moves its running mean).
    from dgan import checkpoint

    assert float(checkpoint.load_latest(run_dir)[1]["task"]["loss"]["pl_mean"]) > 0


@pytest.mark.slow
def test_stylegan2_trains_on_deepspeed_zero2(tmp_path):
    """StyleGAN2 on the DeepSpeed backend (ZeRO-2, one process), path length on: the
    engines take every parameter (the noise strengths are [1], not 0-dim, which
    DeepSpeed's broadcast cannot view as bytes) and Greg runs through G's engine."""
    from dgan import checkpoint
    from dgan.data.builtin import make_builtin

    make_builtin("stacked_mnist", tmp_path / "data", resolution=32, samples=64, per_shard=32)
    run_dir = tmp_path / "run"
    run([sys.executable, "-m", "dgan", "train", f"run.dir={run_dir}", "model.name=stylegan2",
         f"data.path={tmp_path / 'data'}", "data.resolution=32", "data.channels=3",
         "data.workers=0", "model.z_dim=32", "model.w_dim=32", "model.channel_base=256",
         "model.channel_max=32", "model.mapping_layers=2", "train.batch_size=4",
         "train.steps=2", "checkpoint.every=2", "log.progress=false", "loss.pl_weight=2",
         "loss.pl_interval=2", "backend.name=deepspeed", "backend.zero_stage=2"],
        cwd=tmp_path)
    state = checkpoint.load_latest(run_dir)[1]
    assert float(state["task"]["loss"]["pl_mean"]) > 0  # path length ran
    assert all(torch.isfinite(v).all() for v in state["G"].values()
               if isinstance(v, torch.Tensor) and v.is_floating_point())


@pytest.mark.slow
def test_two_torchrun_nodes_train_together(tmp_path):
    port = free_port()
    run_dir = tmp_path / "run"
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
               "--nproc_per_node", "1", "--node_rank", str(node), "--master_addr", "127.0.0.1",
               "--master_port", str(port), "-m", "dgan", "-v", "train", *TINY,
               f"run.dir={run_dir}", "train.steps=10"]
        procs.append(subprocess.Popen(cmd, cwd=tmp_path, env=env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
    assert len(digests("".join(outs), 2)) == 1
    assert "2 process(es)" in outs[0]


@pytest.mark.slow
def test_one_process_launch_that_asked_for_two_warns(tmp_path):
    # `accelerate launch --cpu --num_processes 2` starts a single process.
    run_dir = tmp_path / "run"
    out = run([sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes",
               "2", "--main_process_port", str(free_port()), "-m", "dgan", "train", *TINY,
               "train.steps=1", f"run.dir={run_dir}"], cwd=tmp_path)
    assert "only this one process was started" in out


@pytest.mark.slow
def test_deepspeed_stage0_resume_continues_exactly(tmp_path):
    def train(run_dir: Path, steps: int) -> str:
        return run([sys.executable, "-m", "dgan", "-v", "train", *TINY, f"run.dir={run_dir}",
                    f"train.steps={steps}", "backend.name=deepspeed",
                    "backend.trust_deepspeed_files=true"], cwd=tmp_path)

    straight = digests(train(tmp_path / "a", 4), 1)
    train(tmp_path / "b", 2)
    # DeepSpeed's own (pickled) engine files load only when trusted: refused before loading
    untrusted = subprocess.run(
        [sys.executable, "-m", "dgan", "train", *TINY, f"run.dir={tmp_path / 'b'}",
         "train.steps=4", "backend.name=deepspeed"], cwd=tmp_path, env=env(),
        capture_output=True, text=True)
    assert untrusted.returncode == 2 and "Traceback" not in untrusted.stderr
    assert "set backend.trust_deepspeed_files=true" in untrusted.stderr.splitlines()[-1]
    resumed = train(tmp_path / "b", 4)
    assert "resumed from" in resumed
    assert digests(resumed, 1) == straight
