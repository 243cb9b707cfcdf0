"""Checkpoint directories on disk: names, `meta.json`, validation, commit, `latest`, pruning.

    <run.dir>/checkpoints/
        latest                      one line: the name of the newest committed checkpoint
        step-00000040/              a committed checkpoint (renamed from step-00000040.tmp/)
            .metadata               DCP index of the tensors (written last by DCP's coordinator)
            __0_0.distcp ...        DCP tensor data, one file per rank that wrote a share
            rank-00000.json ...     per-rank state: RNG states, data-stream position
            meta.json               written last: step, world size, versions, config, the
                                    non-tensor state, and every other file with its size
                                    and SHA-256
            native/...              files a backend writes in its own format (hooks.py), if any
        step-00000060.tmp/          a save in progress (or torn by a kill): never loaded

A directory counts only when it has the final name *and* `meta.json` lists files that all
exist with the listed sizes and checksums (checkpoints written before checksums were
recorded: sizes only); anything else is skipped with a warning. Nothing here needs
torch.distributed; `store` reads and writes the tensors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Collection, Optional

log = logging.getLogger(__name__)
FORMAT = 1
META = "meta.json"
CHECKSUMS = "sha256"  # meta.json key: {file: hex digest}; absent in older checkpoints
POINTER = "latest"
NAME = re.compile(r"^step-(\d{8})$")
TMP_SUFFIX = ".tmp"


class InvalidCheckpoint(ValueError):
    """A checkpoint directory that must not be loaded; the message says why."""


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def is_checkpoint_dir(path: str | os.PathLike) -> bool:
    """Whether `path` names a checkpoint directory itself (not a run directory)."""
    path = Path(path)
    return ((path / META).is_file() or (path / ".metadata").is_file()
            or bool(NAME.match(path.name.removesuffix(TMP_SUFFIX))))


def config_hash(config: dict[str, Any]) -> str:
    """A short stable hash of a plain config dict (key order does not matter)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable (no-op where directories can't be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data: Any) -> None:
    """Write JSON and fsync it; callers rename directories, not this file."""
    with open(path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def file_sizes(directory: Path) -> dict[str, int]:
    """Every file under `directory` (not its meta.json) by relative path, with its size in bytes."""
    return {p.relative_to(directory).as_posix(): p.stat().st_size
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != META}


def file_hash(path: Path) -> str:
    """SHA-256 of a file, read in chunks (hashlib releases the GIL: training goes on)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """meta.json of a committed checkpoint, after checking every listed file's size and checksum.

    Raises InvalidCheckpoint saying why the directory must not be loaded.
    """
    path = Path(path)
    if path.name.endswith(TMP_SUFFIX):
        raise InvalidCheckpoint(f"{path.name} is an unfinished save")
    if not path.is_dir():
        raise InvalidCheckpoint(f"{path} is not a checkpoint directory")
    try:
        meta = json.loads((path / META).read_text())
    except FileNotFoundError:
        raise InvalidCheckpoint(f"{path.name} has no {META} (the save did not finish)") from None
    except (OSError, ValueError) as e:
        raise InvalidCheckpoint(f"{path.name}/{META} is unreadable: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InvalidCheckpoint(f"{path.name}/{META}: unknown format {meta.get('format')!r}")
    files = meta.get("files")
    if not isinstance(files, dict) or ".metadata" not in files:
        raise InvalidCheckpoint(f"{path.name}/{META} has no file list")
    for name, size in files.items():
        f = path / name
        if not f.is_file():
            raise InvalidCheckpoint(f"{path.name}: {name} is missing")
        if f.stat().st_size != size:
            raise InvalidCheckpoint(f"{path.name}: {name} has {f.stat().st_size} bytes, "
                                    f"{size} expected (torn write)")
    checksums = meta.get(CHECKSUMS)
    if checksums is not None:
        if not isinstance(checksums, dict) or set(checksums) != set(files):
            raise InvalidCheckpoint(f"{path.name}/{META}: its checksums do not cover its files")
        for name, digest in checksums.items():
            if file_hash(path / name) != digest:
                raise InvalidCheckpoint(f"{path / name} does not match its checksum in {META} "
                                        "(damaged after it was written)")
    world = int(meta.get("world_size", 0))
    missing = [r for r in range(world) if rank_file(r) not in files]
    if world < 1 or missing:
        raise InvalidCheckpoint(f"{path.name}: per-rank state missing for ranks {missing}")
    return meta


def rank_file(rank: int) -> str:
    return f"rank-{rank:05d}.json"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Committed checkpoint directories (by name only, not validated), oldest first."""
    directory = checkpoint_dir(run_dir)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if NAME.match(p.name) and p.is_dir())


def candidates(run_dir: str | os.PathLike) -> list[Path]:
    """Checkpoints to try, best first: the one `latest` names, then newest to oldest."""
    found = list_checkpoints(run_dir)[::-1]
    pointer = checkpoint_dir(run_dir) / POINTER
    if pointer.is_file():
        named = checkpoint_dir(run_dir) / pointer.read_text().strip()
        if named in found:
            found.remove(named)
            found.insert(0, named)
    return found


def newest_valid(run_dir: str | os.PathLike, skip: Collection[Path] = ()
                 ) -> Optional[tuple[Path, dict[str, Any]]]:
    """(path, meta) of the best valid checkpoint not in `skip`; invalid newer ones are skipped
    with a warning."""
    for path in candidates(run_dir):
        if path in skip:
            continue
        try:
            return path, read_meta(path)
        except InvalidCheckpoint as e:
            log.warning("skipping checkpoint %s: %s", path, e)
    return None


def commit(tmp: Path, meta: dict[str, Any]) -> Path:
    """Seal a fully written `step-N.tmp/`: meta.json with the file list, rename, move `latest`.

    Called by one process after every rank finished writing into `tmp`.
    """
    sizes = file_sizes(tmp)
    meta = dict(meta, format=FORMAT, files=sizes, **{CHECKSUMS: {
        name: file_hash(tmp / name) for name in sizes}})
    write_json(tmp / META, meta)
    fsync_dir(tmp)
    final = tmp.with_name(tmp.name[: -len(TMP_SUFFIX)])
    if final.exists():  # the same step saved again after a resume: the new one wins
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer = final.parent / POINTER
    pointer_tmp = final.parent / (POINTER + TMP_SUFFIX)
    pointer_tmp.write_text(final.name + "\n")
    os.replace(pointer_tmp, pointer)
    fsync_dir(final.parent)
    return final


def prune(run_dir: str | os.PathLike, keep: int, milestone: int,
          spare: Optional[Path] = None, also_spare: Collection[Path] = ()) -> list[Path]:
    """Delete committed checkpoints beyond the newest `keep`, sparing every `milestone`-th step,
    `spare` (the one just written, even when older-named ones of another run are newer) and
    those in `also_spare` (the best one, see dgan.checkpoint.best)."""
    removed = []
    kept = {Path(p) for p in also_spare} | ({Path(spare)} if spare is not None else set())
    for path in list_checkpoints(run_dir)[:-keep]:
        step = int(NAME.match(path.name).group(1))  # type: ignore[union-attr]
        if (milestone > 0 and step % milestone == 0) or path in kept:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def remove_unfinished(run_dir: str | os.PathLike) -> None:
    """Delete `*.tmp` leftovers of saves that a kill interrupted."""
    directory = checkpoint_dir(run_dir)
    if directory.is_dir():
        for p in directory.iterdir():
            if p.name.endswith(TMP_SUFFIX) and p.is_dir():
                log.warning("removing unfinished checkpoint %s", p)
                shutil.rmtree(p, ignore_errors=True)


def disk_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
