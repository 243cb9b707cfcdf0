"""Peak memory and time of tiled super-resolution inference (dgan.enhance) on one big photo.

    python benchmarks/enhance_memory.py [--size 4000x3000] [--scale 4] [--tile 512]
                                        [--pad 16] [--batch N] [--png OUT.png]

A random RGB image through a cheap stand-in G (nearest upsampling + one 3x3 conv) on the
CPU, as `dgan enhance` runs it: tiles into a uint8 output (tiled_uint8), optionally saved
as PNG. Prints the process's peak resident memory (ru_maxrss) before and after, so the
number includes Python and torch themselves (about 0.3 GB).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from torch import nn

from dgan.enhance import tiled_uint8


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="4000x3000", help="WIDTHxHEIGHT of the input")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--pad", type=int, default=16)
    p.add_argument("--batch", type=int, help="tiles per call of G (default: 1 on the CPU)")
    p.add_argument("--png", help="also save the output here (PNG)")
    args = p.parse_args()
    w, h = map(int, args.size.split("x"))
    net = nn.Sequential(nn.Upsample(scale_factor=args.scale, mode="nearest"),
                        nn.Conv2d(3, 3, 3, padding=1), nn.Tanh()).eval()
    x = torch.rand(1, 3, h, w) * 2 - 1
    before = peak_gb()
    start = time.perf_counter()
    y = tiled_uint8(net, x, args.scale, tile=args.tile, pad=args.pad, batch=args.batch)
    took = time.perf_counter() - start
    print(f"{w}x{h} x{args.scale} -> {y.shape[1]}x{y.shape[0]} RGB, tile {args.tile} pad "
          f"{args.pad} batch {args.batch}, {torch.get_num_threads()} threads: {took:.1f} s; "
          f"peak RSS {before:.2f} GB before (input, torch), {peak_gb():.2f} GB after "
          f"(output uint8 alone {y.nbytes / 2**30:.2f} GB)")
    if args.png:
        from dgan.images import save_png

        start = time.perf_counter()
        save_png(y, args.png)
        print(f"saved {args.png} in {time.perf_counter() - start:.1f} s; peak RSS "
              f"{peak_gb():.2f} GB")


if __name__ == "__main__":
    main()
