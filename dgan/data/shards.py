"""Writing WebDataset tar shards and their `index.json` manifest.

A dataset directory holds `<name>-000000.tar ...` and `index.json`:

    {"format": "dgan-shards/1", "name": ..., "shards": [{"name", "count", "sha256", "bytes"}],
     "total": N, "resolution": R, "channels": C, "labels": [names] or null}

Each sample is a tar member pair `<key>.<ext>` (png/jpg/webp image) plus `<key>.cls` (the
label index as text) when the dataset has labels. A multi-image sample (paired data) has
one member per image instead, `<key>.a.<ext>`, `<key>.b.<ext>`, and index.json lists the
image keys: `"images": ["a", "b"]` (absent: single-image samples). index.json is written
last, so its presence means the shards are complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from PIL import Image

INDEX = "index.json"
FORMAT = "dgan-shards/1"
MTIME = 946684800  # 2000-01-01, the members' mtime; an int, since a float adds a pax header


def encode_image(array: np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
    """uint8 HxW or HxWxC array -> encoded bytes."""
    img = Image.fromarray(array)
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=1)
    elif fmt == "jpg":
        img.save(buf, format="JPEG", quality=quality)
    elif fmt == "webp":
        img.save(buf, format="WEBP", quality=quality)
    else:
        raise ValueError(f"unknown image format {fmt!r}; expected png, jpg or webp")
    return buf.getvalue()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_shards(
    samples: Iterable[tuple[bytes | dict[str, bytes], str, int | None]],
    out: str | os.PathLike,
    name: str,
    *,
    resolution: int,
    channels: int,
    labels: list[str] | None = None,
    per_shard: int = 1000,
    extra: Callable[[], dict] | None = None,
) -> dict:
    """Write (encoded image, extension, label) samples into shards plus index.json.

    Returns the index. Keys are the running sample number, zero-padded. A dict of encoded
    images ({"a": ..., "b": ...}) gives members `a.<ext>`, `b.<ext>`. `extra` is called
    after the last sample and returns more index fields (facts known only at the end).
    """
    import webdataset as wds  # imports torch: keep `dgan` start-up and path checks fast

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pattern = str(out / f"{name}-%06d.tar")
    counts: list[int] = []
    # A fixed member mtime makes the same samples give the same bytes (and sha256).
    with wds.ShardWriter(pattern, maxcount=per_shard, verbose=0, mtime=MTIME) as sink:
        for i, (data, ext, label) in enumerate(samples):
            if i % per_shard == 0:
                counts.append(0)
            sample = {"__key__": f"{i:09d}"}
            if isinstance(data, dict):
                sample.update({f"{k}.{ext}": v for k, v in data.items()})
            else:
                sample[ext] = data
            if label is not None:
                sample["cls"] = str(int(label)).encode()
            sink.write(sample)
            counts[-1] += 1
    shards = []
    for k, count in enumerate(counts):
        path = Path(pattern % k)
        shards.append({"name": path.name, "count": count, "sha256": sha256_file(path),
                       "bytes": path.stat().st_size})
    index = {"format": FORMAT, "name": name, "shards": shards, "total": sum(counts),
             "resolution": resolution, "channels": channels, "labels": labels}
    if extra is not None:
        index.update(extra())
    tmp = out / (INDEX + ".tmp")
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, out / INDEX)
    return index


def read_index(directory: str | os.PathLike) -> dict:
    """Load and sanity-check a dataset's index.json."""
    path = Path(directory) / INDEX
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no index.json; is this a dgan shard directory?") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    for key in ("shards", "resolution", "channels"):
        if key not in index:
            raise ValueError(f"{path}: missing key '{key}'")
    return index
