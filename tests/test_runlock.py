"""One writer per run directory: the lock file, its stale-lock rules, and two real trainers."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_checkpoint_resume import ROOT, TINY, dgan_cmd, env, shards  # noqa: F401 (fixture)
from test_preempt import rank_pid

from dgan.checkpoint import layout
from dgan.runlock import LOCK_NAME, RunDirLocked, RunLock, _proc_start

HOST = socket.gethostname()


def write_lock(run: Path, age: float = 0.0, **fields) -> Path:
    """A lock file as another holder would have left it, its heartbeat `age` seconds old."""
    run.mkdir(parents=True, exist_ok=True)
    info = {"host": "node-b", "pid": 4321, "proc_start": "1", "boot_id": None,
            "slurm_job_id": None, "slurm_restart_count": 0, "since": "earlier",
            "since_epoch": 0, "token": "theirs", **fields}
    path = run / LOCK_NAME
    path.write_text(json.dumps(info))
    t = time.time() - age
    os.utime(path, (t, t))
    return path


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def no_slurm(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)


def test_lock_is_exclusive_and_released(tmp_path, no_slurm):
    first = RunLock(tmp_path / "run").acquire()
    held = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
    assert held["pid"] == os.getpid() and held["host"] == HOST
    with pytest.raises(RunDirLocked, match=f"pid {os.getpid()} on host {HOST}"):
        RunLock(tmp_path / "run").acquire()
    first.release()
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    RunLock(tmp_path / "run").acquire().release()
    assert os.listdir(tmp_path / "run") == []  # no private or moved-aside files left


def test_live_lock_of_another_host_refuses_naming_the_holder(tmp_path, no_slurm):
    write_lock(tmp_path, slurm_job_id="4242", since="2026-11-02 10:00:00 UTC")
    with pytest.raises(RunDirLocked) as e:
        RunLock(tmp_path, stale_after=300).acquire()
    text = str(e.value)
    assert "\n" not in text
    for part in ("pid 4321", "host node-b", "SLURM job 4242", "since 2026-11-02 10:00:00 UTC",
                 str(tmp_path / LOCK_NAME)):
        assert part in text
    assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == "theirs"


def test_other_host_without_heartbeat_is_stale(tmp_path, no_slurm, capsys):
    write_lock(tmp_path, age=301)
    lock = RunLock(tmp_path, stale_after=300).acquire()
    assert "taking over the stale lock of pid 4321 on host node-b" in capsys.readouterr().err
    assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == lock.info["token"]
    lock.release()


def test_same_host_dead_pid_or_reused_pid_is_stale(tmp_path, no_slurm, capsys):
    write_lock(tmp_path, host=HOST, pid=dead_pid())
    RunLock(tmp_path).acquire().release()
    assert "is gone" in capsys.readouterr().err
    # a live pid whose start time is not the holder's: the pid was reused
    write_lock(tmp_path, host=HOST, pid=os.getppid(), proc_start="1")
    RunLock(tmp_path).acquire().release()
    assert "is now another process" in capsys.readouterr().err
    # the live holder itself
    write_lock(tmp_path, host=HOST, pid=os.getppid(), proc_start=_proc_start(os.getppid()))
    with pytest.raises(RunDirLocked, match=f"pid {os.getppid()} on host {HOST}"):
        RunLock(tmp_path).acquire()


def test_same_host_name_in_another_pid_namespace_is_judged_by_heartbeat(tmp_path, no_slurm):
    # a container sharing the host's name: its pid means nothing here
    write_lock(tmp_path, host=HOST, pid=dead_pid(), pid_ns="pid:[1]")
    with pytest.raises(RunDirLocked, match=f"on host {HOST}"):
        RunLock(tmp_path).acquire()
    write_lock(tmp_path, age=301, host=HOST, pid=dead_pid(), pid_ns="pid:[1]")
    RunLock(tmp_path, stale_after=300).acquire().release()


def test_lock_removed_by_hand_is_reported(tmp_path, no_slurm, capfd):
    lock = RunLock(tmp_path, stale_after=0.5).acquire()
    (tmp_path / LOCK_NAME).unlink()
    lock._thread.join(30)  # the next beat notices and stops beating
    assert not lock._thread.is_alive()
    assert "dgan.lock was removed: run.dir is no longer protected" in capfd.readouterr().err
    lock.release()


def test_requeued_slurm_job_takes_over_its_own_lock(tmp_path, monkeypatch, capsys):
    # the previous incarnation ran on another node and its heartbeat is still fresh
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    write_lock(tmp_path, slurm_job_id="4242", slurm_restart_count=0)
    lock = RunLock(tmp_path).acquire()
    assert "SLURM job 4242 was requeued" in capsys.readouterr().err
    assert json.loads((tmp_path / LOCK_NAME).read_text())["slurm_restart_count"] == 1
    lock.release()
    # same job, dead pid on this host (a step restarted inside the allocation)
    write_lock(tmp_path, host=HOST, pid=dead_pid(), slurm_job_id="4242", slurm_restart_count=1)
    RunLock(tmp_path).acquire().release()
    # another job's live lock is not this job's
    monkeypatch.setenv("SLURM_JOB_ID", "4243")
    write_lock(tmp_path, slurm_job_id="4242", slurm_restart_count=0)
    with pytest.raises(RunDirLocked, match="SLURM job 4242"):
        RunLock(tmp_path).acquire()


def test_heartbeat_refreshes_the_mtime(tmp_path, no_slurm):
    lock = RunLock(tmp_path, stale_after=0.5).acquire()
    path = tmp_path / LOCK_NAME
    os.utime(path, (0, 0))
    deadline = time.monotonic() + 30
    while path.stat().st_mtime == 0:  # the beat comes every stale_after / 10
        assert time.monotonic() < deadline, "no heartbeat"
        time.sleep(0.01)
    lock.release()


def test_run_dir_that_is_a_file_is_one_line(tmp_path, no_slurm):
    (tmp_path / "file").write_text("")
    with pytest.raises(RunDirLocked, match="cannot lock it"):
        RunLock(tmp_path / "file").acquire()


# -- real processes -------------------------------------------------------------------------
@contextlib.contextmanager
def paused(tmp_path: Path, point: str, cmd: list[str], *,
           timeout: float = 120) -> Iterator[subprocess.Popen]:
    """Run `cmd` with the DGAN_TEST_PAUSE_AT hook and yield once rank 0 sits at `point`.

    Leaving the block lets the process go on (closes the FIFO); the caller waits for it.
    Output goes to tmp_path/out-<n>.txt (read it with `output(proc)`).
    """
    n = len(list(tmp_path.glob("out-*.txt")))
    fifo = tmp_path / f"pause-{n}"
    os.mkfifo(fifo)
    out = open(tmp_path / f"out-{n}.txt", "w")
    proc = subprocess.Popen(cmd, env=env(DGAN_TEST_PAUSE_AT=point, DGAN_TEST_PAUSE_FIFO=str(fifo)),
                            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    proc.out_path = tmp_path / f"out-{n}.txt"  # type: ignore[attr-defined]
    opened: dict[str, int] = {}
    # Opening a FIFO for writing returns once the process opened it for reading: then it
    # is at `point`. Done in a thread, so that a process dying first fails the test.
    opener = threading.Thread(target=lambda: opened.setdefault("fd", os.open(fifo, os.O_WRONLY)),
                              daemon=True)
    opener.start()
    deadline = time.monotonic() + timeout
    try:
        while opener.is_alive():
            opener.join(0.1)
            if opener.is_alive() and (proc.poll() is not None or time.monotonic() > deadline):
                os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # free the opener
                opener.join()
                os.close(opened["fd"])
                raise AssertionError(f"never reached pause point {point}:\n{output(proc)}")
        try:
            yield proc
        finally:
            os.close(opened["fd"])
    finally:
        out.close()
        if sys.exc_info()[0] is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


def output(proc: subprocess.Popen) -> str:
    return proc.out_path.read_text()  # type: ignore[attr-defined]


def finish(proc: subprocess.Popen, timeout: float = 120) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        raise AssertionError(f"still running after {timeout} s:\n{output(proc)}") from None


# synchronous saves: step 2's checkpoint is committed when step 3 begins
RUN = [*TINY, "train.steps=6", "checkpoint.every=2", "log.every=2", "checkpoint.async_save=false"]


@pytest.mark.slow
def test_second_trainer_refuses_then_kill_9_of_the_holder_and_restart_works(tmp_path):
    run = tmp_path / "run"
    cmd = dgan_cmd(1, "train", f"run.dir={run}", *RUN)
    with paused(tmp_path, "3", cmd) as holder:
        second = subprocess.run(cmd, env=env(), cwd=ROOT, capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2, second.stdout + second.stderr
        errors = [line for line in second.stderr.splitlines() if line.startswith("dgan: error:")]
        assert len(errors) == 1 and "Traceback" not in second.stderr, second.stderr
        assert f"pid {holder.pid} on host {HOST}" in errors[0]
        assert second.stdout == ""  # it did not start: no run line, nothing written
        holder.kill()  # kill -9 while it holds the lock
        holder.wait()
    assert (run / LOCK_NAME).exists()
    again = subprocess.run(cmd, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"taking over the stale lock of pid {holder.pid} on host {HOST}" in again.stderr
    assert "resumed from" in again.stdout + again.stderr
    assert not (run / LOCK_NAME).exists()


@pytest.mark.slow
def test_lock_is_released_when_start_up_fails(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run(dgan_cmd(1, "train", f"run.dir={run}", *RUN, f"resume={tmp_path}/none"),
                          env=env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "dgan: error: resume=" in proc.stderr, proc.stderr
    assert run.is_dir() and not (run / LOCK_NAME).exists()


@pytest.mark.slow
def test_two_rank_job_takes_the_lock_once_and_a_second_two_rank_job_refuses(tmp_path):
    run = tmp_path / "run"
    cmd = dgan_cmd(2, "train", f"run.dir={run}", *RUN)
    with paused(tmp_path, "1", cmd) as holder:
        rank0 = rank_pid(holder.pid, 0)
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == rank0
        second = subprocess.run(dgan_cmd(2, "train", f"run.dir={run}", *RUN), env=env(),
                                cwd=ROOT, capture_output=True, text=True, timeout=120)
        out = second.stdout + second.stderr
        assert second.returncode != 0
        errors = [line for line in out.splitlines() if line.startswith("dgan: error:")]
        # both ranks leave with the same line (none waits for the other)
        assert len(errors) == 2 and len(set(errors)) == 1, out[-4000:]
        assert f"pid {rank0} on host {HOST}" in errors[0]
        # torchrun prints a traceback of its own when a worker fails; none from dgan
        assert 'dgan/' not in "".join(re.findall(r'File "[^"]*"', out)), out[-4000:]
    assert finish(holder) == 0, output(holder)[-4000:]
    assert not (run / LOCK_NAME).exists()
    assert layout.newest_valid(run)[1]["step"] == 6
