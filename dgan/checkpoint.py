"""Single-file checkpoints in `<run.dir>/checkpoints/`.

Each checkpoint is `step-XXXXXXXX.pt`, a dict of tensors and plain Python values written
by the main process (under DDP every rank holds the same weights) to a temporary file
and renamed into place, so a crash never leaves a half-written file under the final
name. `latest` is a one-line text file naming the newest complete checkpoint; it is
replaced only after the checkpoint file is complete. Loading uses
`torch.load(weights_only=True)`: no arbitrary objects are unpickled.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Optional

import torch

log = logging.getLogger(__name__)
PATTERN = re.compile(r"^step-(\d{8})\.pt$")
# Keys whose change makes a checkpoint's weights meaningless for the current config.
MODEL_KEYS = ("model", "data.resolution", "data.channels")


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save(run_dir: str | os.PathLike, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write `state` as the checkpoint of `step`, move `latest`, keep the newest `keep`."""
    directory = checkpoint_dir(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step-{step:08d}.pt"
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _atomic_write_text(directory / "latest", path.name + "\n")
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint files, oldest first."""
    directory = checkpoint_dir(run_dir)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if PATTERN.match(p.name))


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint on the CPU without running arbitrary code."""
    return torch.load(path, map_location="cpu", weights_only=True)


def load_latest(run_dir: str | os.PathLike) -> Optional[tuple[Path, dict[str, Any]]]:
    """The newest checkpoint that loads, trying `latest` first; None for a fresh run.

    An unreadable newest checkpoint is skipped with a warning in favour of an older one.
    """
    directory = checkpoint_dir(run_dir)
    candidates = list_checkpoints(run_dir)[::-1]
    pointer = directory / "latest"
    if pointer.is_file():
        named = directory / pointer.read_text().strip()
        if named in candidates:
            candidates.remove(named)
            candidates.insert(0, named)
    for path in candidates:
        try:
            return path, load(path)
        except Exception as e:  # any failure to read means: not a usable checkpoint
            log.warning("skipping unreadable checkpoint %s: %s", path, e)
    return None


def model_key_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys under MODEL_KEYS whose values differ between two plain config dicts."""

    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(d, dict):
            return {prefix[:-1]: d}
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}."))
        return out

    a, b = flat(saved), flat(current)
    keys = sorted(k for k in set(a) | set(b)
                  if any(k == m or k.startswith(m + ".") for m in MODEL_KEYS))
    return [f"{k}: checkpoint {a.get(k)!r} vs now {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]
