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
    """The ShardSource of `data.path`, checked against data.resolution and data.channels."""
    from dgan.data.builtin import BUILTIN, builtin_shards
    from dgan.data.sources import DataPathError, resolve_source

    path = cfg.data.path or "builtin:mnist"
    if path.startswith("builtin:"):
        name = path.split(":", 1)[1]
        if name not in BUILTIN:
            raise UserError(f"data.path {path}: unknown built-in dataset; expected one of "
                            f"{', '.join('builtin:' + b for b in BUILTIN)}")
        try:
            path = str(builtin_shards(name, cfg.data.resolution))
        except ValueError as e:
            raise UserError(f"data.path {cfg.data.path}: {e}") from None
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

    Trainer(cfg, source).fit()
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from dgan.sample import write_samples

    paths = write_samples(args.run, args.n, args.seed, args.out, grid=args.grid)
    print(f"dgan: wrote {len(paths)} images to {args.out}" + (" and grid.png" if args.grid else ""))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    import torch

    from dgan.config import config_from_yaml_text
    from dgan.metrics.evaluate import format_table
    from dgan.metrics.run_eval import evaluate_generator
    from dgan.sample import load_generator

    g, step = load_generator(args.run)
    cfg = config_from_yaml_text(open(os.path.join(args.run, "config.yaml")).read())
    metrics = args.metrics.split(",") if args.metrics else list(cfg.eval.metrics)
    if args.inception_weights:
        os.environ["DGAN_INCEPTION_WEIGHTS"] = args.inception_weights
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = evaluate_generator(cfg, g.to(device), _resolve_data(cfg), device, metrics,
                                 args.n or cfg.eval.n)
    print(f"run {args.run}, step {step}, {args.n or cfg.eval.n} samples")
    print(format_table(results))
    out = os.path.join(args.run, f"eval-{step:08d}.json")
    with open(out, "w") as f:
        json.dump({"step": step, **results}, f, indent=1)
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

    ev = verbs.add_parser("eval", help="compute metrics of a run's G_ema",
                          description="FD/KID/precision-recall (Inception features when the "
                          "weights file is given, else the built-in digit classifier's), digit "
                          "class coverage, Stacked MNIST modes. Prints a table and writes "
                          "RUN_DIR/eval-<step>.json.")
    ev.add_argument("--run", required=True, help="run directory")
    ev.add_argument("--metrics", help="comma list of fd,kid,pr,fd_digits,coverage,modes "
                    "(default: the run's eval.metrics)")
    ev.add_argument("--n", type=int, help="generated samples (default: the run's eval.n)")
    ev.add_argument("--inception-weights", help="pt_inception-2015-12-05-6726825d.pth "
                    "(or set DGAN_INCEPTION_WEIGHTS); see docs/metrics.md")
    ev.set_defaults(func=cmd_eval)

    data = verbs.add_parser("data", help="make datasets (WebDataset shards)")
    data_verbs = data.add_subparsers(dest="data_verb", metavar="ACTION", required=True)
    make = data_verbs.add_parser("make", help="write WebDataset shards + index.json",
                                 description="Write WebDataset tar shards and index.json.")
    make.add_argument("out", help="output directory")
    make.add_argument("--builtin", choices=["mnist", "stacked_mnist"], help="a built-in dataset")
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
