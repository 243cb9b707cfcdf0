"""On-disk cache for real-data feature statistics and trained helper networks.

Location: $DGAN_CACHE, else ~/.cache/dgan. Files are written to a temporary name in
the same directory and renamed, so a reader never sees a half-written file even when
several jobs share the cache; they are read with allow_pickle=False.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Callable, Sequence

import numpy as np
import torch

from dgan.cache import cache_root
from dgan.metrics.core import FeatureStats


def cache_dir() -> Path:
    """The cache root, created on first use."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    return root


def digest(obj: object) -> str:
    """sha256 hex digest of a JSON-serialisable object with sorted keys."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def state_digest(module: torch.nn.Module) -> str:
    """sha256 hex digest of a module's parameters and buffers (names, dtypes, shapes,
    bytes): part of a feature net's name, so real statistics of other weights miss."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(tensor.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def real_stats_key(
    source: str | Sequence[str | os.PathLike],
    feature_net: str,
    resolution: int,
    n: int,
) -> str:
    """Cache key of real statistics: sha256 over the data identity, feature net name
    (which carries a hash of the net's weights, see `state_digest`), resolution and
    sample count.

    source: a dataset id string (e.g. "builtin:mnist5k") or the list of shard paths;
    each path contributes its absolute path and byte size, so re-written shards of a
    different size miss the cache. Remote (`pipe:`/URL) entries contribute their text.
    """
    if isinstance(source, str):
        identity: object = {"dataset": source}
    else:
        shards = []
        for item in source:
            text = os.fspath(item)
            path = Path(text)
            if path.exists():
                shards.append([str(path.resolve()), path.stat().st_size])
            else:
                shards.append([text, None])
        identity = {"shards": sorted(shards, key=lambda s: s[0])}
    return digest({"data": identity, "net": feature_net, "res": resolution, "n": n})


def stats_path(key: str) -> Path:
    return cache_root() / "real-stats" / f"{key}.npz"


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call write(file_object) on a temp file beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; a shared cache should get the usual umask permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_real_stats(key: str, stats: FeatureStats, features: torch.Tensor | None = None) -> Path:
    """Store mean/cov (float64) and optionally the features (N, D) float32 under `key`."""
    arrays = {
        "mu": stats.mu.cpu().numpy(),
        "sigma": stats.sigma.cpu().numpy(),
        "n": np.asarray(stats.n, dtype=np.int64),
    }
    if features is not None:
        arrays["features"] = features.detach().float().cpu().numpy()
    path = stats_path(key)
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return path


def load_real_stats(
    key: str, need_features: bool = False
) -> tuple[FeatureStats, torch.Tensor | None] | None:
    """(stats, features or None) stored under `key`, or None on a miss.

    With need_features=True an entry stored without features counts as a miss.
    """
    path = stats_path(key)
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as data:
        if need_features and "features" not in data:
            return None
        stats = FeatureStats(
            mu=torch.from_numpy(data["mu"]),
            sigma=torch.from_numpy(data["sigma"]),
            n=int(data["n"]),
        )
        features = torch.from_numpy(data["features"]) if "features" in data else None
    return stats, features
