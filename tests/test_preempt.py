"""Preemption: a signal sets a flag, ranks agree at the next step, save, exit 75, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from test_checkpoint_resume import ROOT, TINY, dgan_cmd, env, shards  # noqa: F401 (fixture)
from test_train import small_config

from dgan.checkpoint import layout
from dgan.cli import _resolve_data
from dgan.engine.preempt import REQUEUE_EXIT_CODE, PreemptionFlag
from dgan.engine.trainer import Trainer


@pytest.mark.parametrize("sig", [signal.SIGUSR2, signal.SIGTERM])
def test_signal_only_sets_the_flag_and_handlers_are_restored(sig):
    before = signal.getsignal(sig)
    flag = PreemptionFlag().install()
    try:
        assert not flag.requested
        assert not flag.agreed(lambda t: t)
        os.kill(os.getpid(), sig)
        assert flag.requested and flag.signal_name == sig.name
        assert flag.agreed(lambda t: t)
    finally:
        flag.uninstall()
    assert signal.getsignal(sig) == before


def test_any_rank_flagged_means_all_agree():
    flag = PreemptionFlag()
    # the mean over two ranks where only the other one was signalled
    assert flag.agreed(lambda t: (t + torch.ones(1)) / 2)


def test_sigterm_in_process_saves_exits_75_and_resumes(tmp_path, monkeypatch):
    cfg = small_config(tmp_path / "run")
    original = Trainer.train_step

    def signalled_at_step_7(self, *batch):
        if self.step == 7:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *batch)

    monkeypatch.setattr(Trainer, "train_step", signalled_at_step_7)
    trainer = Trainer(cfg, _resolve_data(cfg))
    assert trainer.fit() == REQUEUE_EXIT_CODE
    assert trainer.step == 8 and layout.newest_valid(tmp_path / "run")[1]["step"] == 8
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    monkeypatch.setattr(Trainer, "train_step", original)
    again = Trainer(cfg, _resolve_data(cfg))
    assert again.fit() == 0 and again.step == 12


@pytest.mark.parametrize("outcome", ["error", "finished"])
def test_train_in_process_puts_the_signal_handlers_back(tmp_path, outcome):
    from dgan.cli import main

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)}
    args = ["train", f"run.dir={tmp_path / 'r'}", *TINY, "train.steps=1"]
    status = main(args + (["train.lr_g=-1"] if outcome == "error" else []))
    assert status == (2 if outcome == "error" else 0)
    assert {s: signal.getsignal(s) for s in before} == before


@pytest.mark.slow
def test_sigusr2_to_one_rank_of_two_saves_on_both_and_exits_75_then_resumes(tmp_path):
    run = tmp_path / "run"
    cmd = dgan_cmd(2, "train", f"run.dir={run}", *TINY, "train.steps=100000", "log.every=5",
                   "checkpoint.every=100000")
    first = preempt_once(cmd, run, signal.SIGUSR2)
    assert "fresh start" in first["out"]
    second = preempt_once(cmd, run, signal.SIGUSR2)
    assert f"resumed from {run / 'checkpoints' / layout.step_name(first['step'])}" in second["out"]
    assert second["step"] > first["step"]


def preempt_once(cmd: list[str], run: Path, sig: signal.Signals) -> dict:
    """Start `cmd`, wait for a new log line, signal rank 1 only, check both ranks saved and left."""
    log_file = run / "log.jsonl"
    lines_before = len(log_file.read_text().splitlines()) if log_file.exists() else 0
    proc = subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (log_file.exists() and len(log_file.read_text().splitlines()) > lines_before):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the run logged nothing within 120 s"
            time.sleep(0.05)
        os.kill(rank_pid(proc.pid, 1), sig)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # torchrun itself exits 1 whenever a worker exits non-zero; it reports each worker's code
    assert out.count(f"exitcode  : {REQUEUE_EXIT_CODE}") == 2, out[-4000:]
    path, meta = layout.newest_valid(run)
    step = meta["step"]
    assert f"rank 1: {sig.name} at step {step}" in out, out[-4000:]
    assert f"saved step {step}, exiting with {REQUEUE_EXIT_CODE}" in out
    assert meta["world_size"] == 2 and meta["images_seen"] == step * 16
    return {"out": out, "step": step}


def rank_pid(torchrun_pid: int, rank: int) -> int:
    """The pid of the worker process with RANK=`rank` among torchrun's children."""
    children = Path(f"/proc/{torchrun_pid}/task/{torchrun_pid}/children").read_text().split()
    for pid in children:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    raise AssertionError(f"no worker with RANK={rank} among {children}")


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_to_the_process_group_with_data_workers_saves_exits_75_and_resumes(
        tmp_path, workers):
    from test_runlock import finish, output, paused

    run = tmp_path / "run"
    cmd = dgan_cmd(1, "train", f"run.dir={run}", *TINY, f"data.workers={workers}",
                   "train.steps=100000", "log.every=100000", "checkpoint.every=100000")
    with paused(tmp_path, "3", cmd) as proc:  # the workers are running, batches queued
        os.killpg(proc.pid, signal.SIGTERM)  # what `kill -TERM -PGID` and some schedulers do
    assert finish(proc) == REQUEUE_EXIT_CODE, output(proc)[-4000:]
    out = output(proc)
    assert "Traceback" not in out and "killed by signal" not in out, out[-4000:]
    assert "dgan: preempted (SIGTERM on this rank): saved step 4" in out
    assert layout.newest_valid(run)[1]["step"] == 4
    assert not (run / "dgan.lock").exists()  # released on the preemption exit too
    again = subprocess.run(dgan_cmd(1, "train", f"run.dir={run}", *TINY,
                                    f"data.workers={workers}", "train.steps=6"),
                           env=env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = f"resumed from {run / 'checkpoints' / layout.step_name(4)}"
    assert resumed in again.stdout + again.stderr


@pytest.mark.slow
def test_sigterm_during_start_up_exits_75_cleanly_with_nothing_saved(tmp_path):
    from test_runlock import finish, output, paused

    run = tmp_path / "run"
    cmd = dgan_cmd(1, "train", f"run.dir={run}", *TINY, "data.workers=1")
    # "start": the handlers are in place, nothing else (config, torch, trainer) is done yet
    with paused(tmp_path, "start", cmd) as proc:
        os.killpg(proc.pid, signal.SIGTERM)
    assert finish(proc) == REQUEUE_EXIT_CODE, output(proc)[-4000:]
    out = output(proc)
    assert "Traceback" not in out, out
    assert "preempted during start-up (SIGTERM): nothing new to save, exiting with 75" in out
    assert layout.candidates(run) == [] and not (run / "dgan.lock").exists()
