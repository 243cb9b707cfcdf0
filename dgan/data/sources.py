"""Resolve `data.path` into a list of shard URLs with (lazily known) sample counts."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dgan.data.shards import INDEX, read_index


class DataPathError(ValueError):
    """`data.path` names nothing usable; the message names the path."""


@dataclass
class ShardSource:
    """Shard URLs, and per-shard sample counts when index.json gives them."""

    urls: list[str]
    counts: list[int | None]
    resolution: int | None = None
    channels: int | None = None
    labels: list[str] | None = None
    _counted: dict[int, int] = field(default_factory=dict, repr=False)

    def count(self, shard: int) -> int:
        """Samples in shard `shard`: from the index, else counted from the tar's headers."""
        known = self.counts[shard]
        if known is not None:
            return known
        if shard not in self._counted:
            from dgan.data.tario import iter_tar, sample_key

            url = self.urls[shard]
            if os.path.isfile(url):
                with tarfile.open(url) as tar:  # seekable: headers only, no data read
                    keys = {sample_key(m.name) for m in tar.getmembers() if m.isfile()}
                self._counted[shard] = len(keys - {None})
            else:
                self._counted[shard] = sum(1 for _ in iter_tar(url))
        return self._counted[shard]

    @property
    def total(self) -> int | None:
        return None if None in self.counts else sum(self.counts)  # type: ignore[arg-type]


def _expand_braces(pattern: str) -> list[str]:
    import braceexpand

    return list(braceexpand.braceexpand(pattern))


def resolve_source(path: str | Sequence[str]) -> ShardSource:
    """A directory with index.json, a brace pattern, a single .tar, a list, or pipe: URLs."""
    if not isinstance(path, str):
        urls = [u for p in path for u in _expand_braces(str(p))]
        return _from_urls(urls, str(list(path)))
    if os.path.isdir(path):
        directory = Path(path)
        if not (directory / INDEX).is_file():
            tars = sorted(str(p) for p in directory.glob("*.tar"))
            if not tars:
                raise DataPathError(f"data.path {path}: a directory without index.json or .tar "
                                    "shards; convert images first with `dgan data make SRC OUT`")
            return _from_urls(tars, path)
        index = read_index(directory)
        urls = [str(directory / s["name"]) for s in index["shards"]]
        missing = [u for u in urls if not os.path.isfile(u)]
        if missing:
            raise DataPathError(f"data.path {path}: index.json lists missing shard {missing[0]}")
        return ShardSource(urls, [int(s["count"]) for s in index["shards"]],
                           index["resolution"], index["channels"], index.get("labels"))
    return _from_urls(_expand_braces(path), path)


def _from_urls(urls: list[str], what: str) -> ShardSource:
    if not urls:
        raise DataPathError(f"data.path {what}: no shards")
    for url in urls:
        is_remote = url.startswith("pipe:") or "://" in url
        if not is_remote and not os.path.isfile(url):
            raise DataPathError(f"data.path {what}: no such file or directory: {url}")
    return ShardSource(urls, [None] * len(urls))
