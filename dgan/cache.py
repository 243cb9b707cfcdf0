"""Where dgan keeps built-in shards, real-data statistics and helper networks."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$DGAN_CACHE, else ~/.cache/dgan; not created here (only writers create it)."""
    return Path(os.environ.get("DGAN_CACHE") or Path.home() / ".cache" / "dgan")
