"""Checkpoint cost: save time, training stall of an async save, load time, bytes on disk.

    python benchmarks/checkpoint.py [--resolution 64] [--width 128] [--repeats 3] [key=value ...]

One process (the numbers per rank of a DDP job are the same: every rank writes its share,
which for replicated DDP state is about 1/N of the bytes). The default model is the
largest config dgan has today: the DCGAN at 64x64 with 128-channel widths (StyleGAN2
configs will replace it). Trailing key=value pairs are passed to the config.

Rows (median of --repeats):
  sync save       save(blocking=True): split, DCP write with fsync, commit, prune
  async: blocked  how long save(blocking=False) holds the training loop (CPU copy of the state)
  async: steps    wall time of K training steps while the writer thread runs, minus the
                  same K steps without a save (the slowdown the background write causes)
  async: written  from the save call until the checkpoint is committed
  load            find + validate + read + load into a fresh Trainer (resume=auto)
  validate        read_meta alone: sizes and every file's SHA-256 (part of load)
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="K steps timed around a save")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    from dgan import checkpoint
    from dgan.cli import _resolve_data
    from dgan.config import load_config
    from dgan.engine.trainer import Trainer

    run = Path(tempfile.mkdtemp(prefix="dgan-bench-ckpt-")) / "run"
    cfg = load_config(None, [f"run.dir={run}", f"data.resolution={args.resolution}",
                             f"model.g_width={args.width}", f"model.d_width={args.width}",
                             f"train.batch_size={args.batch}", "data.workers=0",
                             "log.progress=false", "checkpoint.keep=2", *args.overrides])
    trainer = Trainer(cfg, _resolve_data(cfg))

    def train(k: int) -> float:
        start = time.perf_counter()
        for _ in range(k):
            trainer.train_step(trainer.next_batch())
            trainer.step += 1
        return time.perf_counter() - start

    train(2)  # warm-up; also creates the optimizer state
    rows: dict[str, list[float]] = {k: [] for k in (
        "sync save", "async: blocked", "async: steps", "async: written", "load", "validate")}
    for _ in range(args.repeats):
        start = time.perf_counter()
        trainer.save(blocking=True)
        rows["sync save"].append(time.perf_counter() - start)
        baseline = train(args.steps)
        start = time.perf_counter()
        trainer.save(blocking=False)
        rows["async: blocked"].append(time.perf_counter() - start)
        during = train(args.steps)
        trainer.checkpointer.wait()
        rows["async: written"].append(time.perf_counter() - start)
        rows["async: steps"].append(during - baseline)
        start = time.perf_counter()
        fresh = Trainer(cfg, _resolve_data(cfg))
        built = time.perf_counter()
        fresh.resume()
        rows["load"].append(time.perf_counter() - built)
        fresh.checkpointer.close()
        newest = checkpoint.newest_valid(run)[0]
        start = time.perf_counter()
        checkpoint.read_meta(newest)
        rows["validate"].append(time.perf_counter() - start)
        train(1)
    trainer.checkpointer.close()
    newest = checkpoint.newest_valid(run)[0]
    size = checkpoint.disk_size(newest)
    params = sum(p.numel() for n in (trainer.backend.nets["G"], trainer.backend.nets["D"])
                 for p in n.parameters())
    shutil.rmtree(run.parent)

    print(f"DCGAN {args.resolution}x{args.resolution}, width {args.width}, "
          f"{params / 1e6:.1f} M parameters (G + D), torch {torch.__version__}, CPU, 1 process, "
          f"median of {args.repeats}; {args.steps} training steps take "
          f"{baseline:.2f} s without a save")
    print(f"checkpoint on disk: {size / 2**20:.1f} MiB ({newest.name}, G + D + G_ema + 2 Adam)")
    print()
    print("| what | seconds | MiB/s |")
    print("| --- | ---: | ---: |")
    for name, values in rows.items():
        t = statistics.median(values)
        timed_write = name in ("sync save", "async: written", "load", "validate") and t > 0
        rate = f"{size / 2**20 / t:.0f}" if timed_write else ""
        print(f"| {name} | {t:.3f} | {rate} |")


if __name__ == "__main__":
    main()
