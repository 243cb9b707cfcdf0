"""`dgan data inspect`: what shards hold, whether index.json matches them, a sample grid."""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from dgan.data.shards import INDEX, read_index, sha256_file
from dgan.data.sources import resolve_source
from dgan.data.stream import IMAGE_EXTS, decode, image_keys
from dgan.data.tario import iter_tar


@dataclass
class Report:
    """Totals and problems found; `problems` empty means index.json matches the shards."""

    shards: int = 0
    samples: int = 0
    bytes: int = 0
    sizes: Counter = field(default_factory=Counter)  # (width, height) -> samples
    modes: Counter = field(default_factory=Counter)  # Pillow mode -> samples
    formats: Counter = field(default_factory=Counter)  # image member extension -> images
    keys: Counter = field(default_factory=Counter)  # image keys of a sample -> samples
    quality: int | None = None  # jpg/webp quality index.json records for `dgan data make`
    labels: Counter = field(default_factory=Counter)  # label index (-1: none) -> samples
    label_names: list[str] | None = None
    resolution: int | None = None
    channels: int | None = None
    indexed: bool = False
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The human-readable report."""
        size = ", ".join(f"{w}x{h}: {n}" for (w, h), n in self.sizes.most_common())
        mode = ", ".join(f"{m}: {n}" for m, n in self.modes.most_common())
        names = self.label_names or []
        hist = "  ".join(f"{names[k] if 0 <= k < len(names) else k}: {n}"
                         for k, n in sorted(self.labels.items()) if k >= 0)
        out = [f"shards      {self.shards} ({self.bytes / 2**20:.1f} MiB)",
               f"samples     {self.samples}",
               f"images      {self._keys()}",
               f"resolution  {self.resolution} (stored sizes {size or '-'})",
               f"channels    {self.channels} (stored modes {mode or '-'})",
               f"format      {self._format()}",
               f"labels      {hist or 'none'}"]
        if self.labels.get(-1) and len(self.labels) > 1:
            out.append(f"unlabelled  {self.labels[-1]}")
        if not self.indexed:
            out.append("index.json  none (nothing to verify)")
            if self.problems:
                out += ["problems"] + [f"  {p}" for p in self.problems]
        elif self.problems:
            out += ["index.json  MISMATCH"] + [f"  {p}" for p in self.problems]
        else:
            out.append("index.json  ok (counts and sha256 of every shard)")
        return out


    def _keys(self) -> str:
        """The image keys of the samples: `image` (single-image), `a, b` (paired)."""
        if not self.keys:
            return "-"
        return "; ".join(f"{', '.join(k) or 'none'}: {n}" for k, n in self.keys.most_common())

    def _format(self) -> str:
        """The image encodings stored: png is lossless; jpg and webp (as written) lossy."""
        if not self.formats:
            return "-"
        kinds = ", ".join(f"{e}: {n}" for e, n in self.formats.most_common())
        if set(self.formats) <= {"png"}:
            return f"{kinds} (lossless)"
        quality = f", quality {self.quality}" if self.quality is not None else ""
        return f"{kinds} ({'lossy' if 'png' not in self.formats else 'partly lossy'}{quality})"


def inspect_shards(path: str, grid: str | os.PathLike | None, n_grid: int = 64,
                   seed: int = 0) -> Report:
    """Read every shard once: count samples, read image headers, check index.json.

    Writes a PNG grid of `n_grid` random samples (reservoir sampling) to `grid` if given.
    Undecodable image headers, and shards that are not tars or are damaged (each named,
    with what was read before the damage), are problems too.
    """
    source = resolve_source(path)
    report = Report(shards=len(source.urls), resolution=source.resolution,
                    channels=source.channels, label_names=source.labels)
    index = read_index(path) if os.path.isdir(path) and (Path(path) / INDEX).is_file() else None
    report.indexed = index is not None
    options = (index or {}).get("source", {}).get("options", {})
    if options.get("format") in ("jpg", "webp"):
        report.quality = options.get("quality")
    rng = np.random.default_rng(seed)
    picked: list[dict] = []
    for k, url in enumerate(source.urls):
        count = 0
        try:
            if url in source.problems:
                raise ValueError(source.problems[url])
            for sample in iter_tar(url):
                count += 1
                _read_header(sample, report)
                report.labels[int(sample["cls"]) if "cls" in sample else -1] += 1
                # Reservoir sampling keeps every sample equally likely in the grid.
                seen = report.samples + count
                if len(picked) < n_grid:
                    picked.append(sample)
                elif (j := int(rng.integers(seen))) < n_grid:
                    picked[j] = sample
        except (OSError, ValueError, tarfile.TarError) as e:
            report.problems.append(f"{url}: unreadable after {count} samples: {e}")
        report.samples += count
        if os.path.isfile(url):
            report.bytes += os.path.getsize(url)
        if index is not None:
            entry = index["shards"][k]
            if entry["count"] != count:
                report.problems.append(f"{entry['name']}: {count} samples, index says "
                                       f"{entry['count']}")
            if "sha256" in entry and sha256_file(url) != entry["sha256"]:
                report.problems.append(f"{entry['name']}: sha256 differs from index.json")
    if index is not None and index.get("total") not in (None, report.samples):
        report.problems.append(f"total: {report.samples} samples, index says {index['total']}")
    if grid is not None and picked:
        write_grid(picked, grid, report.channels or 3, report.resolution or _common_size(report))
    return report


def _read_header(sample: dict, report: Report) -> None:
    """Count the sample's image keys, and each image's format, size and mode."""
    keys = image_keys(sample)
    report.keys[keys] += 1
    members = [(f"{k}." if k != "image" else "", k) for k in keys]
    try:
        if not keys:
            raise ValueError("no image member")
        for prefix, key in members:
            ext = next(e for e in IMAGE_EXTS if prefix + e in sample)
            report.formats[ext] += 1
            with Image.open(io.BytesIO(sample[prefix + ext])) as img:
                report.sizes[img.size] += 1
                report.modes[img.mode] += 1
    except Exception as e:  # noqa: BLE001 - any decoder failure is reported, not raised
        report.problems.append(f"{sample.get('__url__')}: sample {sample['__key__']}: {e}")


def _common_size(report: Report) -> int:
    return max(report.sizes.most_common(1)[0][0]) if report.sizes else 64


def write_grid(samples: list[dict], path: str | os.PathLike, channels: int,
               resolution: int) -> None:
    """Tile decodable samples (uint8) into a near-square grid with 2-pixel gaps, as PNG.

    A multi-image sample is one tile of its images side by side (a|b), in key order; the
    grid shows the image keys of the first sample that has any."""
    tiles = []
    keys = next((k for k in map(image_keys, samples) if k), ())
    for sample in samples:
        # An undecodable sample was already reported by the header pass; leave it out.
        with contextlib.suppress(Exception):
            images = [decode(sample, channels, resolution, key=k)[0] for k in keys]
            tile = np.concatenate(images, axis=1)
            tiles.append(tile if tile.ndim == 3 else tile[:, :, None])
    if not tiles:
        return
    cols = int(np.ceil(np.sqrt(len(tiles))))
    rows = -(-len(tiles) // cols)
    step, width = resolution + 2, len(keys) * resolution
    canvas = np.zeros((rows * step - 2, cols * (width + 2) - 2, tiles[0].shape[2]), np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        x = c * (width + 2)
        canvas[r * step:r * step + resolution, x:x + width] = tile
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas[:, :, 0] if channels == 1 else canvas).save(path)
