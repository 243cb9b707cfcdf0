"""Resolve `data.path` into a list of shard URLs with (lazily known) sample counts.

Trust. A `pipe:` URL is a shell command (webdataset's `gopen` runs it). It runs only when
the user gave it: on the command line or in a config file passed to `dgan train`. One
read from a file dgan did not get from the user (a run directory's config.yaml) is refused
unless confirmed (`stored_in`, the CLI's --trust-pipe). Shard names that come from a
directory's contents (index.json entries, listed `*.tar` files) are only ever local files:
an index naming a `pipe:` or URL is refused, and a listed file called `pipe:...` is opened
as the file it is.
"""

from __future__ import annotations

import logging
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dgan.data.shards import INDEX, read_index

log = logging.getLogger(__name__)


class DataPathError(ValueError):
    """`data.path` names nothing usable; the message names the path."""


class StoredPipeError(DataPathError):
    """A `pipe:` command read from a stored file, not confirmed by the user."""


class NoSamplesError(DataPathError):
    """No shard gave a readable sample (raised by the stream, possibly in a worker)."""


@dataclass
class ShardSource:
    """Shard URLs, and per-shard sample counts when index.json gives them."""

    urls: list[str]
    counts: list[int | None]
    resolution: int | None = None
    channels: int | None = None
    labels: list[str] | None = None
    # the built-in dataset the shards were made from (index.json says so), else None:
    # evaluation computes digit metrics only on digits (docs/metrics.md)
    builtin: str | None = None
    # the image keys of each sample (index.json "images", e.g. ["a", "b"]); None: not
    # recorded (single-image shards have a bare `<key>.png`, key "image")
    images: list[str] | None = None
    # url -> why it cannot be read (found before training); the stream leaves these out
    problems: dict[str, str] = field(default_factory=dict)
    _counted: dict[int, int] = field(default_factory=dict, repr=False)

    def count(self, shard: int) -> int:
        """Samples in shard `shard`: from the index, else counted from the tar's headers
        (0 for a shard in `problems`; up to the damage for a damaged one, as read)."""
        if self.urls[shard] in self.problems:
            return 0
        known = self.counts[shard]
        if known is not None:
            return known
        if shard not in self._counted:
            from dgan.data.tario import iter_tar, sample_key

            url, n = self.urls[shard], 0
            try:
                if os.path.isfile(url):
                    with tarfile.open(url) as tar:  # seekable: headers only, no data read
                        keys = {sample_key(m.name) for m in tar.getmembers() if m.isfile()}
                    n = len(keys - {None})
                else:
                    n = sum(1 for _ in iter_tar(url))
            except (OSError, ValueError, tarfile.TarError):
                # damaged: count what reading it gives before the damage, as the stream does
                try:
                    for _ in iter_tar(url):
                        n += 1
                except (OSError, ValueError, tarfile.TarError):
                    pass
            self._counted[shard] = n
        return self._counted[shard]

    @property
    def total(self) -> int | None:
        return None if None in self.counts else sum(self.counts)  # type: ignore[arg-type]


def _expand_braces(pattern: str) -> list[str]:
    import braceexpand

    return list(braceexpand.braceexpand(pattern))


def _local(path: Path) -> str:
    """`path` as a URL that `gopen` opens as the file: a relative name such as
    `pipe:cmd.tar` or `s3:x.tar` (from a directory listing) gets a leading `./`."""
    text = str(path)
    return os.path.join(".", text) if ":" in text.split("/", 1)[0] else text


def _stored_pipe(urls: list[str], path: object, stored_in: str) -> StoredPipeError:
    pipes = [u for u in urls if u.startswith("pipe:")]
    more = f" (and {len(pipes) - 1} more)" if len(pipes) > 1 else ""
    return StoredPipeError(
        f"{stored_in}: data.path {path} runs the shell command {pipes[0][5:]!r}{more}, read "
        "from a stored file, not given by you: check it, then rerun with --trust-pipe (or "
        "give data.path on the command line)")


def resolve_source(path: str | Sequence[str], stored_in: str | None = None) -> ShardSource:
    """A directory with index.json, a brace pattern, a single .tar, a list, or pipe: URLs.

    `stored_in`: the file `path` was read from when the user did not give it (a run's
    config.yaml); its `pipe:` commands are then refused (StoredPipeError). Local shards
    that cannot give a sample (empty, not a tar) are left out with a warning naming each,
    or, when none is left, a DataPathError naming the first.
    """
    if not isinstance(path, str):
        urls = [u for p in path for u in _expand_braces(str(p))]
        if stored_in is not None and any(u.startswith("pipe:") for u in urls):
            raise _stored_pipe(urls, list(path), stored_in)
        return _checked(_from_urls(urls, str(list(path))), str(list(path)))
    if os.path.isdir(path):
        directory = Path(path)
        if not (directory / INDEX).is_file():
            tars = sorted(_local(p) for p in directory.glob("*.tar"))
            if not tars:
                raise DataPathError(f"data.path {path}: a directory without index.json or .tar "
                                    "shards; convert images first with `dgan data make SRC OUT`")
            return _checked(_from_urls(tars, path), path)
        return _checked(_from_index(directory), path)
    urls = _expand_braces(path)
    if stored_in is not None and any(u.startswith("pipe:") for u in urls):
        raise _stored_pipe(urls, path, stored_in)
    return _checked(_from_urls(urls, path), path)


def _from_index(directory: Path) -> ShardSource:
    """The shards index.json lists: file names beside it, never commands or URLs."""
    where = directory / INDEX
    index = read_index(directory)
    shards = index["shards"]
    if not isinstance(shards, list) or not shards:
        raise DataPathError(f"{where}: lists no shards; rebuild it with `dgan data make`")
    urls = []
    for entry in shards:
        name = str(entry.get("name", "")) if isinstance(entry, dict) else ""
        if not name or name.lower().startswith("pipe:") or "://" in name or \
                os.path.isabs(name):
            raise DataPathError(f"{where}: shard name {name!r} is not a file name beside "
                                "index.json (an index never runs commands or opens URLs; put "
                                "pipe: URLs in data.path)")
        urls.append(_local(directory / name))
    missing = [u for u in urls if not os.path.isfile(u)]
    if missing:
        raise DataPathError(f"data.path {directory}: index.json lists missing shard {missing[0]}")
    images = index.get("images")
    if images is not None and (not isinstance(images, list) or not images or
                               not all(isinstance(k, str) and k for k in images)):
        raise DataPathError(f"{where}: \"images\" must be a list of image keys, got {images!r}")
    return ShardSource(urls, [int(s["count"]) for s in shards],
                       index["resolution"], index["channels"], index.get("labels"),
                       builtin_name(index), images=images)


def builtin_name(index: dict) -> str | None:
    """The built-in dataset an index.json was written for: its "builtin" key, or, for
    built-in shards made before that key existed, a built-in name without the "source"
    that `dgan data make` always writes."""
    from dgan.data.builtin import BUILTIN

    name = index.get("builtin")
    if name is None and "source" not in index:
        name = index.get("name")
    return name if name in BUILTIN else None


def _from_urls(urls: list[str], what: str) -> ShardSource:
    if not urls:
        raise DataPathError(f"data.path {what}: no shards")
    for url in urls:
        is_remote = url.startswith("pipe:") or "://" in url
        if not is_remote and not os.path.isfile(url):
            raise DataPathError(f"data.path {what}: no such file or directory: {url}")
    return ShardSource(urls, [None] * len(urls))


def _checked(source: ShardSource, what: str) -> ShardSource:
    """Find the local shards that cannot give a sample (one header read each)."""
    from dgan.data.tario import shard_problem

    for url in source.urls:
        if "://" not in url and not url.startswith("pipe:"):
            problem = shard_problem(url)
            if problem is not None:
                source.problems[url] = problem
    if source.problems and len(source.problems) == len(source.urls):
        url, problem = next(iter(source.problems.items()))
        more = f" (and the other {len(source.urls) - 1})" if len(source.urls) > 1 else ""
        raise DataPathError(f"data.path {what}: no readable shard: {url}: {problem}{more}")
    for url, problem in source.problems.items():
        log.warning("data.path %s: leaving out shard %s: %s", what, url, problem)
    return source
