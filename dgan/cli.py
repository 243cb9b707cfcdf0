"""The `dgan` command line: train, sample, data, ckpt.

Errors the user can fix (bad config, missing data, bad run directory) print one line
`dgan: error: ...` and exit with status 2 before any work starts.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Optional

from dgan import __version__
from dgan.config import ConfigError, all_keys, load_config, to_yaml

TRAIN_EPILOG = """\
overrides are dotted config keys, e.g.:
  dgan train                                   the built-in MNIST demo
  dgan train configs/mnist.yaml train.steps=3000 run.dir=runs/long
  accelerate launch -m dgan train configs/mnist.yaml train.batch_size=32

the same command twice continues the same run (run.dir, default runs/<config name>).
`dgan train --print-config` shows every key with its default.
"""


class UserError(Exception):
    """A problem the user can fix; printed as one line."""


def _resolve_data(cfg) -> object:
    from dgan.data.builtin import builtin_shards
    from dgan.data.sources import DataPathError, resolve_source

    path = cfg.data.path
    if path is None:
        if cfg.data.channels != 1:
            raise UserError("the built-in MNIST demo has 1 channel; set data.channels=1 or data.path")
        path = str(builtin_shards("mnist", cfg.data.resolution))
    try:
        source = resolve_source(path)
    except (DataPathError, FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    if source.channels is not None and source.channels != cfg.data.channels:
        raise UserError(f"data.path {path} has {source.channels}-channel images but "
                        f"data.channels={cfg.data.channels}")
    if source.resolution is not None and source.resolution != cfg.data.resolution:
        raise UserError(f"data.path {path} holds {source.resolution}x{source.resolution} images "
                        f"but data.resolution={cfg.data.resolution}; set data.resolution="
                        f"{source.resolution} or rebuild the shards with --resolution")
    return source


def cmd_train(args: argparse.Namespace) -> int:
    if args.config and "=" in args.config and not os.path.isfile(args.config):
        args.config, args.overrides = None, [args.config, *args.overrides]
    if args.print_config:
        print(to_yaml(load_config(args.config, args.overrides)), end="")
        return 0
    cfg = load_config(args.config, args.overrides)
    source = _resolve_data(cfg)
    from dgan.engine.trainer import Trainer

    trainer = Trainer(cfg, source)
    try:
        trainer.fit()
    except BaseException:
        trainer.close(wait=False)  # a peer may be gone: no barrier
        raise
    trainer.close()
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from dgan.sample import write_samples

    paths = write_samples(args.run, args.n, args.seed, args.out, grid=args.grid)
    print(f"dgan: wrote {len(paths)} images to {args.out}" + (" and grid.png" if args.grid else ""))
    return 0


def cmd_data_make(args: argparse.Namespace) -> int:
    from dgan.data.builtin import make_builtin

    if not args.builtin:
        raise UserError("dgan data make: give --builtin NAME (folders and zips come with the "
                        "streaming-data work)")
    index = make_builtin(args.builtin, args.out, resolution=args.resolution or 28,
                         per_shard=args.per_shard)
    print(f"dgan: wrote {index['total']} samples in {len(index['shards'])} shards to {args.out}")
    return 0


def cmd_ckpt_inspect(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dgan import checkpoint

    path = Path(args.path)
    found = (path, checkpoint.load(path)) if path.is_file() else checkpoint.load_latest(path)
    if found is None:
        raise UserError(f"{path}: no checkpoint found")
    file, state = found
    print(f"checkpoint   {file}")
    print(f"step         {state['step']}")
    print(f"images seen  {state['images_seen']}")
    print(f"world size   {state.get('world_size')}")
    print(f"backend      {state.get('backend_name')}")
    print(f"precision    {state['config']['train']['precision']}")
    print(f"size         {file.stat().st_size / 2**20:.2f} MiB")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dgan", description="Train generative adversarial networks, from a laptop CPU to "
        "a preempted multi-node cluster.")
    parser.add_argument("--version", action="version", version=f"dgan {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    train = verbs.add_parser(
        "train", help="train G and D (the built-in MNIST demo without arguments)",
        description="Train a GAN from a YAML config and key=value overrides.",
        epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("config", nargs="?", help="YAML config file (see configs/)")
    train.add_argument("overrides", nargs="*", metavar="key=value",
                       help=f"config overrides; keys: {', '.join(all_keys())}")
    train.add_argument("--print-config", action="store_true",
                       help="print the resolved config and exit")
    train.set_defaults(func=cmd_train)

    sample = verbs.add_parser("sample", help="write PNG samples from a run's G_ema",
                              description="Write N PNG images from G_ema of a run's newest "
                              "checkpoint. The same run, N and seed give the same bytes.")
    sample.add_argument("--run", required=True, help="run directory (run.dir of the training)")
    sample.add_argument("--n", type=int, default=64, help="number of images (default 64)")
    sample.add_argument("--seed", type=int, default=0, help="latent seed (default 0)")
    sample.add_argument("--out", required=True, help="output directory")
    sample.add_argument("--grid", action="store_true", help="also write grid.png")
    sample.set_defaults(func=cmd_sample)

    data = verbs.add_parser("data", help="make datasets (WebDataset shards)")
    data_verbs = data.add_subparsers(dest="data_verb", metavar="ACTION", required=True)
    make = data_verbs.add_parser("make", help="write WebDataset shards + index.json",
                                 description="Write WebDataset tar shards and index.json.")
    make.add_argument("out", help="output directory")
    make.add_argument("--builtin", choices=["mnist"], help="a built-in dataset")
    make.add_argument("--resolution", type=int, help="image size (built-in MNIST: 28, 32, 64)")
    make.add_argument("--per-shard", type=int, default=1000, help="samples per shard")
    make.set_defaults(func=cmd_data_make)

    ckpt = verbs.add_parser("ckpt", help="inspect checkpoints")
    ckpt_verbs = ckpt.add_subparsers(dest="ckpt_verb", metavar="ACTION", required=True)
    inspect = ckpt_verbs.add_parser("inspect", help="step, images seen, world size, backend",
                                    description="Show what a checkpoint holds.")
    inspect.add_argument("path", help="a checkpoint file or a run directory")
    inspect.set_defaults(func=cmd_ckpt_inspect)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="dgan: %(levelname)s: %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (UserError, ConfigError, FileNotFoundError) as e:
        print(f"dgan: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dgan: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
