"""`Checkpointer`: one rank's side of saving (sync or async) and finding checkpoints of a run.

Save protocol (every rank calls `save` at the same step):
  1. wait for this rank's previous save (its collectives must be over before new ones);
  2. write `rank-RRRRR.json` (RNG, data position) into `step-N.tmp/`;
  3. copy the tensors to private CPU memory (async) and hand them to a writer thread, or
     write them in the caller (sync); DCP writes each rank's share on a dedicated gloo
     group, so the thread's collectives never interleave with the training's;
  4. when DCP returns on rank 0, every rank has finished steps 2-3 (DCP's coordinator
     gathers all ranks' write results before it writes `.metadata`), so rank 0 hashes
     every file, writes `meta.json`, renames `step-N.tmp/` to `step-N/`, moves `latest`;
  5. the ranks agree whether any of them failed (disk full, ...): if so the `.tmp` is
     removed and every rank raises SaveFailed, else rank 0 prunes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Collection, Optional

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException

from dgan.checkpoint import best as best_json
from dgan.checkpoint import layout, store

log = logging.getLogger(__name__)
# Test-only hook: `DGAN_TEST_KILL_IN_SAVE=N` makes rank 0 SIGKILL itself after the tensors
# of step N are written and before the checkpoint is committed (a kill during a save).
KILL_IN_SAVE_ENV = "DGAN_TEST_KILL_IN_SAVE"
NATIVE = "native"  # sub-directory for files a backend writes in its own format


class SaveFailed(RuntimeError):
    """A save could not be written (disk full, read-only, I/O error); one line naming the path."""


def describe(error: Optional[BaseException]) -> str:
    """One line for a save error; DCP wraps each rank's error with its traceback."""
    if isinstance(error, CheckpointException):
        failures = [f[0] if isinstance(f, tuple) else f for f in error.failures.values()]
        error = next((f for f in failures if isinstance(f, BaseException)), error)
    return (str(error).splitlines() or [type(error).__name__])[0]


class Checkpointer:
    """Saves, finds and reads the checkpoints of `run_dir` for process `rank` of `world_size`."""

    def __init__(self, run_dir: str | os.PathLike, *, rank: int, world_size: int, keep: int,
                 milestone: int = 0, async_save: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.rank, self.world_size = rank, world_size
        self.keep, self.milestone = keep, milestone
        self.group: Optional[dist.ProcessGroup] = None
        if world_size > 1 and dist.is_available() and dist.is_initialized():
            # gloo: DCP needs a CPU-capable group, also when training uses NCCL
            self.group = dist.new_group(backend="gloo")
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="dgan-ckpt") if async_save else None
        self._pending: Optional[Future] = None
        self.last_saved_step: Optional[int] = None
        if rank == 0:
            # Nobody is saving yet: every rank's first save follows a training step, which
            # needs rank 0, which is past this point.
            layout.remove_unfinished(self.run_dir)

    # -- saving -------------------------------------------------------------------------
    def save(self, step: int, state: dict[str, Any], rank_state: dict[str, Any],
             meta: dict[str, Any], blocking: bool = False,
             write_native: Optional[Callable[[Path], None]] = None,
             best: Optional[dict[str, Any]] = None) -> None:
        """Save `state` (identical on every rank) and this rank's `rank_state` as step `step`.

        Both may hold tensors; `rank_state`'s are stored under keys of this rank only (e.g.
        BatchNorm statistics, which DDP lets drift apart between ranks).

        `meta` (JSON) goes into meta.json; it must hold the same values on every rank.
        With `blocking=False` and async saving on, returns once the tensors are copied.
        `write_native(directory)`, called on every rank before the tensors are handed over,
        writes files in a backend's own format into `<checkpoint>/native/`; they are
        committed, listed and validated like the rest.
        `best`: a best.json record naming this checkpoint (dgan.checkpoint.best), which rank
        0 writes once the checkpoint is committed and before pruning: from then on pruning
        spares this checkpoint instead of the previous best.
        """
        self.wait()
        tmp = layout.checkpoint_dir(self.run_dir) / (layout.step_name(step) + layout.TMP_SUFFIX)
        tmp.mkdir(parents=True, exist_ok=True)
        rank_skeleton, rank_tensors = store.split(rank_state, rank_prefix(self.rank))
        layout.write_json(tmp / layout.rank_file(self.rank), rank_skeleton)
        if write_native is not None:
            (tmp / NATIVE).mkdir(exist_ok=True)
            write_native(tmp / NATIVE)
        skeleton, tensors = store.split(state)
        tensors.update(rank_tensors)
        meta = dict(meta, step=step, world_size=self.world_size, state=skeleton)
        if blocking or self._pool is None:
            self._write(tmp, step, tensors, meta, best)
        else:
            self._pending = self._pool.submit(self._write, tmp, step,
                                              store.stage_to_cpu(tensors), meta, best)

    def _write(self, tmp: Path, step: int, tensors: dict[str, Any], meta: dict[str, Any],
               best: Optional[dict[str, Any]] = None) -> None:
        error: Optional[BaseException] = None
        final = None
        try:
            store.write_tensors(tmp, tensors, self.group)
            if self.rank == 0:
                if os.environ.get(KILL_IN_SAVE_ENV) == str(step):
                    os.kill(os.getpid(), signal.SIGKILL)
                final = layout.commit(tmp, meta)
                if best is not None:
                    best_json.write_best(self.run_dir, best)
        except (OSError, CheckpointException) as e:  # disk full, read-only, quota, I/O error
            error = e
        # Also the barrier: nobody returns (and perhaps exits) before rank 0 has committed.
        if self._any(error is not None):
            if self.rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            latest = layout.checkpoint_dir(self.run_dir) / layout.POINTER
            kept = latest.read_text().strip() if latest.is_file() else "none"
            raise SaveFailed(f"cannot save checkpoint {tmp}: "
                             f"{describe(error) if error else 'failed on another rank'}; "
                             f"the previous checkpoint is unchanged (latest: {kept})")
        if final is not None:
            kept = best_json.kept_by_best(self.run_dir)
            removed = layout.prune(self.run_dir, self.keep, self.milestone, spare=final,
                                   also_spare=[kept] if kept is not None else [])
            log.info("saved checkpoint %s%s", final,
                     f" (removed {', '.join(p.name for p in removed)})" if removed else "")
        self.last_saved_step = step

    def _any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any (a collective on the gloo group)."""
        if self.group is None:
            return flag
        t = torch.tensor([int(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return bool(t.item())

    def wait(self) -> None:
        """Block until this rank's pending save is written (re-raises its error)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        self.wait()
        if self._pool is not None:
            self._pool.shutdown()

    # -- finding and reading ------------------------------------------------------------
    def find(self, resume: str, skip: Collection[Path] = ()
             ) -> Optional[tuple[Path, dict[str, Any]]]:
        """(checkpoint dir, meta) to resume from for `resume` = auto | never | PATH.

        auto: the newest valid checkpoint of the run not in `skip` (None: fresh start, only
        when the run has no committed checkpoint at all).
        never: None, refused when the run directory already holds checkpoints (pruning and
        `dgan sample` would mix the two runs). PATH: a checkpoint directory (must be valid)
        or another run's directory (its newest valid). Rank 0 chooses and tells the others,
        so all ranks load the same checkpoint even when a shared filesystem shows them
        different states for a moment.
        """
        choice: dict[str, Any] = {"path": None, "meta": None, "error": None}
        if self.rank == 0:
            try:
                found = self._find(resume, skip)
                if found is not None:
                    # the meta rank 0 validated (sizes, checksums) goes to every rank: one
                    # rank hashes the checkpoint, not all of them
                    choice["path"], choice["meta"] = str(found[0]), found[1]
            except (FileNotFoundError, layout.InvalidCheckpoint) as e:
                choice["error"] = f"{type(e).__name__}: {e}"
        if self.group is not None:
            box = [choice]  # unpickled by the other ranks: data from rank 0 of this job only
            dist.broadcast_object_list(box, src=0, group=self.group)
            choice = box[0]
        if choice["error"]:
            kind, _, message = choice["error"].partition(": ")
            raise (FileNotFoundError if kind == "FileNotFoundError" else
                   layout.InvalidCheckpoint)(message)
        if choice["path"] is None:
            return None
        return Path(choice["path"]), choice["meta"]

    def _find(self, resume: str, skip: Collection[Path]
              ) -> Optional[tuple[Path, dict[str, Any]]]:
        if resume == "never":
            existing = layout.list_checkpoints(self.run_dir)
            if existing:
                raise layout.InvalidCheckpoint(
                    f"{layout.checkpoint_dir(self.run_dir)} already holds checkpoints of another "
                    f"run ({existing[-1].name}); starting fresh there would mix the two runs. "
                    "Use another run.dir, move or delete the old checkpoints, or resume=auto "
                    "to continue them")
            return None
        if resume == "auto":
            found = layout.newest_valid(self.run_dir, skip)
            if found is None and layout.list_checkpoints(self.run_dir):
                # a fresh start would write next to them, and prune or sample the wrong run
                newest = layout.candidates(self.run_dir)[0]
                why = skip.get(newest) if isinstance(skip, dict) else None
                if why is None:
                    try:
                        layout.read_meta(newest)
                    except layout.InvalidCheckpoint as e:
                        why = str(e)
                raise layout.InvalidCheckpoint(
                    f"{layout.checkpoint_dir(self.run_dir)}: none of its checkpoints can be "
                    f"loaded (newest: {why}); move them aside to start fresh, or use another "
                    "run.dir")
            return found
        path = Path(resume)
        if (path / layout.META).is_file() or layout.NAME.match(path.name):
            return path, layout.read_meta(path)
        found = layout.newest_valid(path)
        if found is None:
            raise FileNotFoundError(f"resume={resume}: no valid checkpoint there")
        return found

    def load(self, resume: str, check: Optional[Callable[[dict[str, Any]], None]] = None
             ) -> Optional[tuple[Path, dict[str, Any], tuple[Any, ...]]]:
        """Find (see `find`), `check(meta)` and `read` the checkpoint to resume from.

        With resume=auto a checkpoint that fails to read on any rank (damaged after its
        checksums were taken, an old one without checksums, a refused index) is skipped with
        a warning naming it and the next older one is tried; otherwise the failure is raised
        as InvalidCheckpoint. `check` runs before anything is read (it refuses by raising).
        """
        skip: dict[Path, str] = {}  # checkpoints that failed to read: why
        while True:
            found = self.find(resume, skip)
            if found is None:
                return None
            path, meta = found
            if check is not None:
                try:
                    check(meta)
                except layout.InvalidCheckpoint as e:
                    raise layout.InvalidCheckpoint(f"{path}: {e}") from None
            error = None
            try:
                result = self.read(path, meta)
            except (OSError, ValueError, KeyError, RuntimeError, CheckpointException) as e:
                error = describe(e)
                error = error if str(path) in error else f"{path}: {error}"
            if not self._any(error is not None):
                return path, meta, result
            error = error or f"{path}: unreadable on another rank"
            if resume != "auto":
                raise layout.InvalidCheckpoint(error.splitlines()[0])
            log.warning("skipping checkpoint %s: %s", path, error.splitlines()[0])
            skip[path] = error.splitlines()[0]

    def read(self, path: Path, meta: dict[str, Any]
             ) -> tuple[dict[str, Any], Optional[dict[str, Any]], dict[str, Any]]:
        """(shared state, this rank's saved state or None, rank 0's saved state).

        This rank's own state exists only when the world size is unchanged.
        """
        tensors = store.read_tensors(path)

        def rank_state(r: int) -> dict[str, Any]:
            return store.join(json.loads((path / layout.rank_file(r)).read_text()), tensors)

        same = int(meta["world_size"]) == self.world_size
        return (store.join(meta["state"], tensors), rank_state(self.rank) if same else None,
                rank_state(0))


def rank_prefix(rank: int) -> str:
    """Key prefix of one rank's own tensors in the DCP checkpoint."""
    return layout.rank_file(rank).removesuffix(".json")
