"""One writer per run directory: `<run.dir>/dgan.lock`, taken by rank 0 of `dgan train`.

A second `dgan train` on the same run.dir (a double submission) would interleave its
checkpoints with the first's, and its start-up clears the first's unfinished saves.
flock/fcntl locks are not reliable on NFS and Lustre, so the lock is a file created
atomically: the holder's description (JSON) is written to a private file, then hard-linked
to `dgan.lock` (link fails with EEXIST when the lock exists, on every filesystem that has
hard links; O_CREAT|O_EXCL where links are not supported). The holder refreshes the lock's
mtime from a daemon thread (the heartbeat).

A lock is stale, and taken over with a warning, when
- its holder ran on this host (and pid namespace) and that process is gone: no such pid,
  a different process under that pid (start time in /proc differs), or the host rebooted
  since (boot id);
- its holder ran under the same SLURM job id and an earlier SLURM_RESTART_COUNT: SLURM
  runs a requeued job only after the previous incarnation was killed, possibly elsewhere;
- its holder ran on another host and the heartbeat is older than `stale_after` seconds
  (clocks of the hosts and the file server must agree to well within that).
Anything else refuses, naming the holder. Take-over renames the stale file away (atomic,
so of two starters judging the same lock stale, one wins) and links a new lock.
"""

from __future__ import annotations

import atexit
import errno
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)
LOCK_NAME = "dgan.lock"


class RunDirLocked(Exception):
    """run.dir is held by another live `dgan train`, or cannot be locked; one line."""


def _proc_start(pid: int) -> Optional[str]:
    """Start time of `pid` in clock ticks since boot (/proc/PID/stat field 22), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    return stat.rsplit(")", 1)[1].split()[19]


def _boot_id() -> Optional[str]:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _pid_ns() -> Optional[str]:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def describe_self() -> dict[str, Any]:
    """What a lock records about its holder (this process)."""
    now = time.time()
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "proc_start": _proc_start(os.getpid()), "boot_id": _boot_id(), "pid_ns": _pid_ns(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "slurm_restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
            "since": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(now)),
            "since_epoch": now, "token": uuid.uuid4().hex}


def holder_text(info: dict[str, Any], age: Optional[float] = None) -> str:
    job = f", SLURM job {info['slurm_job_id']}" if info.get("slurm_job_id") else ""
    beat = f", last heartbeat {age:.0f} s ago" if age is not None else ""
    return f"pid {info.get('pid')} on host {info.get('host')}{job}, since {info.get('since')}{beat}"


def stale_reason(info: dict[str, Any], age: float, stale_after: float,
                 me: dict[str, Any]) -> Optional[str]:
    """Why the lock described by `info` (mtime `age` seconds ago) is stale; None if held."""
    job = info.get("slurm_job_id")
    if job and job == me["slurm_job_id"] and \
            int(info.get("slurm_restart_count") or 0) < me["slurm_restart_count"]:
        return f"SLURM job {job} was requeued (restart {me['slurm_restart_count']})"
    # containers on one host can share its name but not its pids: judge the pid only
    # within the same pid namespace, else as another host (by the heartbeat)
    same_ns = not (info.get("pid_ns") and me["pid_ns"] and info["pid_ns"] != me["pid_ns"])
    if info.get("host") == me["host"] and same_ns:
        pid = int(info.get("pid", -1))
        if info.get("boot_id") and me["boot_id"] and info["boot_id"] != me["boot_id"]:
            return "the host rebooted since"
        if pid <= 0 or not _alive(pid):
            return f"pid {pid} is gone"
        start = _proc_start(pid)
        if info.get("proc_start") and start and start != info["proc_start"]:
            return f"pid {pid} is now another process"
        return None
    if age > stale_after:
        return f"no heartbeat for {age:.0f} s (run.lock_stale_after={stale_after:g})"
    return None


class RunLock:
    """The lock of one run directory, held by this process until `release()`."""

    def __init__(self, run_dir: str | os.PathLike, stale_after: float = 300.0) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.stale_after = stale_after
        self.info = describe_self()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.held = False

    # -- taking -------------------------------------------------------------------------
    def acquire(self) -> "RunLock":
        """Take the lock or raise RunDirLocked naming the holder."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for _ in range(5):  # each retry follows a take-over raced by another starter
                if self._create():
                    break
                self._take_over_if_stale()
            else:
                raise RunDirLocked(f"run.dir {self.path.parent}: could not take {self.path}: "
                                   "other processes keep taking it")
        except OSError as e:
            raise RunDirLocked(f"run.dir {self.path.parent}: cannot lock it ({self.path}): "
                               f"{e.strerror or e}") from None
        self.held = True
        atexit.register(self.release)
        self._thread = threading.Thread(target=self._heartbeat, name="dgan-lock", daemon=True)
        self._thread.start()
        return self

    def _create(self) -> bool:
        """Atomically create the lock holding our description; False if it exists."""
        data = json.dumps(self.info, indent=1).encode()
        tmp = self.path.with_name(f".{LOCK_NAME}.{self.info['token']}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError as e:
            # NFS: a retransmitted LINK can report failure although it succeeded
            if os.stat(tmp).st_nlink == 2:
                return True
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            return self._create_excl(data)  # no hard links on this filesystem
        finally:
            tmp.unlink()

    def _create_excl(self, data: bytes) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True

    def read(self) -> tuple[dict[str, Any], float]:
        """The current lock's description and its heartbeat age in seconds."""
        st = self.path.stat()
        try:
            info = json.loads(self.path.read_text())
        except (ValueError, UnicodeDecodeError):
            info = {}
        return (info if isinstance(info, dict) else {}), time.time() - st.st_mtime

    def _take_over_if_stale(self) -> None:
        try:
            info, age = self.read()
        except FileNotFoundError:
            return  # released meanwhile: try to create again
        if not info:  # unreadable (e.g. half-written by O_EXCL elsewhere): trust it while fresh
            if age <= self.stale_after:
                raise RunDirLocked(f"run.dir {self.path.parent} is locked ({self.path}, "
                                   f"unreadable, modified {age:.0f} s ago); if no dgan train "
                                   "runs there, remove that file")
            reason = f"unreadable and {age:.0f} s old"
        else:
            reason = stale_reason(info, age, self.stale_after, self.info)
            if reason is None:
                raise RunDirLocked(
                    f"run.dir {self.path.parent} is in use by another dgan train: "
                    f"{holder_text(info, age)} (lock {self.path}); wait for it, or use another "
                    "run.dir; if that process is gone, remove the lock file "
                    "(docs/launching.md)")
        aside = self.path.with_name(f".{LOCK_NAME}.stale.{self.info['token']}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another starter moved it first
        try:
            moved = json.loads(aside.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            moved = {}
        if info and moved.get("token") != info.get("token"):
            # between our read and rename another starter replaced the stale lock with its
            # own live one: put that back (link fails only if a third one got in meanwhile)
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            aside.unlink()
            return
        aside.unlink()
        text = holder_text(info, age) if info else str(self.path)
        msg = (f"dgan: WARNING: run.dir {self.path.parent}: taking over the stale lock of "
               f"{text}: {reason}")
        print(msg, file=sys.stderr, flush=True)
        log.warning(msg)

    # -- holding ------------------------------------------------------------------------
    def _heartbeat(self) -> None:
        period = max(0.05, self.stale_after / 10)
        while not self._stop.wait(period):
            try:
                info, _ = self.read()
                if info.get("token") == self.info["token"]:
                    os.utime(self.path)
                    continue
                lost = f"lost the lock of run.dir {self.path.parent} to {holder_text(info)}"
            except FileNotFoundError:
                lost = f"the lock {self.path} was removed: run.dir is no longer protected"
            except OSError as e:  # a file server hiccup: the next beat may succeed
                log.warning("lock heartbeat %s: %s", self.path, e)
                continue
            if not self._stop.is_set():  # else release() removed it meanwhile
                print(f"dgan: WARNING: {lost}", file=sys.stderr, flush=True)
            return

    def release(self) -> None:
        """Remove the lock if this process still holds it (idempotent)."""
        if not self.held:
            return
        self.held = False
        self._stop.set()
        atexit.unregister(self.release)
        try:
            info, _ = self.read()
            if info.get("token") == self.info["token"]:
                self.path.unlink()
        except OSError as e:
            log.warning("could not remove the lock %s: %s", self.path, e)


def lock_run_dir(run_dir: str | os.PathLike, backend: Any,
                 stale_after: float) -> Optional[RunLock]:
    """Rank 0 takes the lock; every rank learns the outcome (a collective: call on all ranks).

    Returns the lock on rank 0 and None elsewhere. When rank 0 cannot take it, every rank
    closes the process group and raises the same RunDirLocked, so no rank is left waiting
    in a collective for a peer that has gone.
    """
    lock, error = None, None
    if backend.is_main:
        try:
            lock = RunLock(run_dir, stale_after).acquire()
        except Exception as e:  # any failure must reach the other ranks, not hang them
            error = str(e) if isinstance(e, RunDirLocked) else \
                f"run.dir {run_dir}: cannot lock it: {type(e).__name__}: {e}"
    if backend.distributed:
        import torch.distributed as dist

        box = [error]
        dist.broadcast_object_list(box, src=0, device=backend.device)
        error = box[0]
    if error is not None:
        backend.close(wait=False)  # every rank has just passed the broadcast: none waits
        raise RunDirLocked(error)
    return lock
