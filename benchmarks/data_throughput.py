"""Images per second per worker: the training stream next to a bare PIL decode loop.

    python benchmarks/data_throughput.py [--images 2000] [--repeats 3] [--workers 0 1 2]

For 64^2 and 256^2 JPEG (quality 95) and PNG shards of synthetic, photo-like pictures
(smooth multi-scale noise), it times

- bare: a loop over the same encoded bytes held in memory that only opens, decodes and
  converts each picture with PIL into the output the stream produces, uint8 [B, R, R, 3]
  batches (a new array per batch, as a stream hands each one off), written the way the
  stream writes them (`pack_into`, PIL's packed pixels straight into the batch); no tar,
  no shuffle, no bookkeeping;
- bare arr: the bare loop of the earlier tables (before the stream wrote batches in place): each
  picture to its own uint8 array (`np.asarray`), kept by nobody;
- worker: what one DataLoader worker does, in this process: `ShardStream` (tar reading,
  block shuffle, decode, x-flip, uint8 batching), without the consumer's float conversion;
- stream W: `DataStream` (all of the above, the transfer from the workers, and the float
  conversion to [-1, 1] in the consuming process) with W DataLoader workers (0: everything
  in this process), reported per worker: total img/s divided by max(1, W).

The machine is usually shared, so every case runs `repeats` rounds, each timing all columns
back to back; a cell is the median over rounds, and a ratio is the median of the per-round
ratios (paired, so load drifting between rounds cancels). The issue's bar: the stream
delivers >= 90% of the bare img/s per worker at 256^2 JPEG. The last ratio printed is
worker / bare arr.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dgan.data.shards import encode_image, write_shards
from dgan.data.sources import resolve_source
from dgan.data.stream import DataStream, ShardStream, pack_into


def photo_like(rng: np.random.Generator, size: int) -> np.ndarray:
    """uint8 (size, size, 3): smooth noise at several scales plus fine grain."""
    image = np.zeros((size, size, 3), np.float32)
    for cells, weight in ((4, 0.5), (16, 0.3), (size // 2, 0.15)):
        coarse = rng.random((cells, cells, 3), dtype=np.float32)
        layer = Image.fromarray((coarse * 255).astype(np.uint8)).resize(
            (size, size), Image.Resampling.BICUBIC)
        image += weight * np.asarray(layer, np.float32)
    image += rng.normal(0, 4, image.shape).astype(np.float32)
    return np.clip(image / 0.95, 0, 255).astype(np.uint8)


def make_shards(directory: Path, size: int, fmt: str, n: int) -> list[bytes]:
    """Write n pictures as shards of 500; return their encoded bytes (for the bare loop)."""
    rng = np.random.default_rng(size)
    encoded = [encode_image(photo_like(rng, size), fmt) for _ in range(n)]
    write_shards(((e, fmt, None) for e in encoded), directory, "bench", resolution=size,
                 channels=3, per_shard=500)
    return encoded


def bare(encoded: list[bytes], size: int, batch: int = 64) -> float:
    """img/s of open + decode + convert into uint8 [batch, size, size, 3] batches."""
    shape, per = (batch, size, size, 3), size * size * 3
    count = len(encoded) // batch * batch
    start = time.perf_counter()
    for first in range(0, count, batch):
        images = np.empty(shape, np.uint8)
        pixels = memoryview(images).cast("B")
        for k, data in enumerate(encoded[first:first + batch]):
            with Image.open(io.BytesIO(data)) as img:
                if img.mode != "RGB":
                    img = img.convert("RGB")
                pack_into(img, pixels[k * per:(k + 1) * per])
        pixels.release()
        torch.from_numpy(images)
    return count / (time.perf_counter() - start)


def bare_array(encoded: list[bytes]) -> float:
    """img/s of open + decode + convert to a uint8 RGB array each (the old bare loop)."""
    start = time.perf_counter()
    for data in encoded:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode != "RGB":
                img = img.convert("RGB")
            np.asarray(img)
    return len(encoded) / (time.perf_counter() - start)


def worker(directory: Path, size: int, n: int, xflip: bool, batch: int = 64) -> float:
    """img/s of one worker's share of the stream (uint8 batches, no float conversion)."""
    s = ShardStream(resolve_source(str(directory)), batch_size=batch, resolution=size,
                    channels=3, shuffle_buffer=256, xflip=xflip)
    batches = iter(s)
    next(batches)
    count = max(1, n // batch)
    start = time.perf_counter()
    for _ in range(count):
        next(batches)
    return count * batch / (time.perf_counter() - start)


def stream(directory: Path, size: int, n: int, workers: int, xflip: bool,
           batch: int = 64) -> float:
    """Per-worker img/s of DataStream over about n images, after one warm-up batch each."""
    s = DataStream(resolve_source(str(directory)), batch_size=batch, resolution=size,
                   channels=3, seed=0, rank=0, world_size=1, workers=workers,
                   shuffle_buffer=256, xflip=xflip)
    for _ in range(max(1, workers)):  # worker start-up is not throughput
        next(s)
    batches = max(1, n // batch)
    start = time.perf_counter()
    for _ in range(batches):
        next(s)
    elapsed = time.perf_counter() - start
    s.close()
    return batches * batch / elapsed / max(1, workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="pictures per 256^2 case "
                        "(4x as many at 64^2)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds per case (median)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--formats", nargs="+", default=["jpg", "png"])
    parser.add_argument("--xflip", action="store_true", help="x-flip half the pictures in the "
                        "stream (an augmentation the bare loop does not do; off by default)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {load:.1f} at start; median of {args.repeats} rounds; img/s per worker; "
          f"xflip {'on' if args.xflip else 'off'}")
    streams = ["worker"] + [f"stream W={w}" for w in args.workers]
    cols = ["bare", "bare arr", *streams]
    print(f"{'case':<10}" + "".join(f"{c:>12}" for c in cols) + "  ratio to bare: " +
          " ".join(f"{c.replace('stream ', ''):>7}" for c in streams) + "  worker/bare arr")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            for fmt in args.formats:
                n = args.images * (4 if size == 64 else 1)
                directory = Path(tmp) / f"{size}-{fmt}"
                encoded = make_shards(directory, size, fmt, n)
                rates: dict[str, list[float]] = {c: [] for c in cols}
                for _ in range(args.repeats):
                    rates["bare"].append(bare(encoded, size))
                    rates["bare arr"].append(bare_array(encoded))
                    rates["worker"].append(worker(directory, size, n, args.xflip))
                    for w in args.workers:
                        rates[f"stream W={w}"].append(stream(directory, size, n, w, args.xflip))
                med = {c: float(np.median(r)) for c, r in rates.items()}
                ratios = [float(np.median(np.array(rates[c]) / np.array(rates[ref])))
                          for c, ref in [*((c, "bare") for c in streams), ("worker", "bare arr")]]
                print(f"{f'{size}^2 {fmt}':<10}" + "".join(f"{med[c]:>12,.0f}" for c in cols)
                      + "                 " + " ".join(f"{r:>7.2f}" for r in ratios[:-1])
                      + f"  {ratios[-1]:>15.2f}",
                      flush=True)
    end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# load average {end:.1f} at end")


if __name__ == "__main__":
    main()
