"""`<run.dir>/best.json`: which checkpoint of a run is the best by one metric.

    {"metric": "fd_digits", "value": 12.5, "step": 40, "checkpoint": "step-00000040",
     "direction": "min"}

Written (atomically: a temporary file, then os.replace) by the training with
`checkpoint.keep_best=METRIC`, after the checkpoint it names is committed, and by
`dgan eval --run RUN --best METRIC`. Pruning spares the checkpoint it names; `dgan sample
--ckpt best`, `dgan ckpt export --ckpt best` and `dgan.load_generator(run, "best")` load it.
Plain JSON only: nothing here unpickles.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional

from dgan.checkpoint import layout
from dgan.config import metric_direction

BEST = "best.json"
FIELDS = ("metric", "value", "step", "checkpoint", "direction")


class BestError(ValueError):
    """best.json is missing or unusable; one line naming the file."""


def best_file(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / BEST


def make_record(metric: str, value: float, step: int) -> dict[str, Any]:
    """The best.json record of `metric` = `value` at checkpoint step `step`."""
    return {"metric": metric, "value": float(value), "step": int(step),
            "checkpoint": layout.step_name(int(step)), "direction": metric_direction(metric)}


def is_better(value: float, best: Optional[dict[str, Any]], direction: str) -> bool:
    """Whether `value` beats the record `best` (None: nothing yet); NaN never wins, ties lose."""
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best["value"] if direction == "min" else value > best["value"]


def write_best(run_dir: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write `record` to <run_dir>/best.json atomically (temporary file, fsync, os.replace)."""
    path = best_file(run_dir)
    tmp = path.with_name(BEST + layout.TMP_SUFFIX)
    layout.write_json(tmp, {k: record[k] for k in FIELDS})
    os.replace(tmp, path)
    layout.fsync_dir(path.parent)
    return path


def read_best(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The record in <run_dir>/best.json; BestError (one line naming the file) when it is
    missing, not JSON, or lacks a field."""
    path = best_file(run_dir)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise BestError(f"{path}: no such file (no best checkpoint recorded: train with "
                        "checkpoint.keep_best=METRIC or run dgan eval --run RUN --best "
                        "METRIC)") from None
    except (OSError, ValueError) as e:
        raise BestError(f"{path}: unreadable: {str(e).splitlines()[0]}") from None
    if not isinstance(record, dict) or any(k not in record for k in FIELDS):
        raise BestError(f"{path}: expected a JSON object with {', '.join(FIELDS)}")
    name = record["checkpoint"]
    if not isinstance(name, str) or not layout.NAME.match(name):
        raise BestError(f"{path}: 'checkpoint' must name a checkpoint (step-NNNNNNNN), "
                        f"not {name!r}")
    if not isinstance(record["value"], (int, float)) or isinstance(record["value"], bool):
        raise BestError(f"{path}: 'value' must be a number, not {record['value']!r}")
    return record


def best_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The checkpoint directory best.json names; BestError when there is none."""
    record = read_best(run_dir)
    path = layout.checkpoint_dir(run_dir) / record["checkpoint"]
    if not path.is_dir():
        raise BestError(f"{best_file(run_dir)}: names {record['checkpoint']}, which is not in "
                        f"{layout.checkpoint_dir(run_dir)}")
    return path


def kept_by_best(run_dir: str | os.PathLike) -> Optional[Path]:
    """The checkpoint that pruning must spare because best.json names it; None when there is
    no usable best.json (pruning then goes on as without one)."""
    if not best_file(run_dir).is_file():
        return None
    try:
        record = read_best(run_dir)
    except BestError as e:
        layout.log.warning("%s; no checkpoint is kept as the best", e)
        return None
    return layout.checkpoint_dir(run_dir) / record["checkpoint"]
