"""Checkpoints: `torch.distributed.checkpoint` directories written by every rank, plus JSON.

See docs/checkpointing.md for the layout and the guarantees. The pieces:
  layout   names, meta.json, validation, atomic commit, `latest`, pruning (no torch)
  store    tensors through DCP, the rest as JSON, a reader whose only pickle is DCP's index
  safe_pickle  that index through an exact allow-list unpickler
  rng      RNG states as JSON
  manager  `Checkpointer`: one rank's async/sync saves and resume look-up
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from dgan.checkpoint.layout import (
    InvalidCheckpoint,
    checkpoint_dir,
    config_hash,
    disk_size,
    list_checkpoints,
    newest_valid,
    read_meta,
)
from dgan.checkpoint.manager import NATIVE, Checkpointer, SaveFailed

__all__ = ["MODEL_KEYS", "NATIVE", "Checkpointer", "InvalidCheckpoint", "checkpoint_dir",
           "config_hash", "disk_size", "list_checkpoints", "load", "load_latest",
           "model_key_differences", "newest_valid", "read_meta", "SaveFailed"]

# Keys whose change makes a checkpoint's weights meaningless for the current config.
MODEL_KEYS = ("model", "data.resolution", "data.channels")


def load(path: str | os.PathLike) -> dict[str, Any]:
    """The shared state of one checkpoint directory on the CPU (sizes and checksums checked;
    the only pickle, DCP's index, goes through safe_pickle)."""
    from dgan.checkpoint import store

    meta = read_meta(path)
    return store.join(meta["state"], store.read_tensors(Path(path)))


def load_latest(run_dir: str | os.PathLike) -> Optional[tuple[Path, dict[str, Any]]]:
    """(path, shared state) of the run's newest valid checkpoint; None when it has none.

    Invalid newer checkpoints are skipped with a warning, as are ones whose tensors fail to
    read (e.g. an old checkpoint without checksums, damaged after its size was recorded).
    Raises InvalidCheckpoint, naming the newest one and why, when none of them loads.
    """
    from dgan.checkpoint import layout

    errors = []
    for path in layout.candidates(run_dir):
        try:
            return path, load(path)
        except Exception as e:  # any failure to read means: not a usable checkpoint
            layout.log.warning("skipping checkpoint %s: %s", path, e)
            errors.append(f"{path.name}: {e}")
    if errors:
        raise InvalidCheckpoint(f"{checkpoint_dir(run_dir)}: none of its checkpoints can be "
                                f"loaded (newest: {errors[0]})")
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
    return [f"{k}: checkpoint {a.get(k)!r} vs now {b.get(k)!r}"
            for k in keys if a.get(k) != b.get(k)]
