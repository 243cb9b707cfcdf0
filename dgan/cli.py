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
    if args.builtin:
        from dgan.data.builtin import make_builtin

        if len(args.paths) != 1:
            raise UserError("dgan data make --builtin NAME OUT: give only OUT")
        index = make_builtin(args.builtin, args.paths[0], resolution=args.resolution or 28,
                             per_shard=args.per_shard)
        print(f"dgan: wrote {index['total']} samples in {len(index['shards'])} shards to "
              f"{args.paths[0]}")
        return 0
    if len(args.paths) != 2:
        raise UserError("dgan data make SRC OUT (or --builtin NAME OUT)")
    from dgan.data.make import SKIPPED, MakeOptions, make_dataset

    src, out = args.paths
    opts = MakeOptions(resolution=args.resolution, channels=args.channels, format=args.format,
                       quality=args.quality, per_shard=args.per_shard, workers=args.workers,
                       labels=args.labels, crop=args.crop, small=args.small,
                       background=args.background, seed=args.seed, name=args.name)
    try:
        index = make_dataset(src, out, opts)
    except ValueError as e:
        raise UserError(str(e)) from None
    source = index["source"]
    print(f"dgan: wrote {index['total']} samples ({index['resolution']}x{index['resolution']}, "
          f"{index['channels']} channels, {source['options']['format']}) in "
          f"{len(index['shards'])} shards to {out}; skipped {source['skipped']} (listed in "
          f"{os.path.join(out, SKIPPED)}); ignored {source['ignored']} non-image files")
    return 0


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from dgan.data.inspect import inspect_shards
    from dgan.data.sources import DataPathError

    grid = args.grid or (os.path.join(args.shards, "inspect.png")
                         if os.path.isdir(args.shards) and os.access(args.shards, os.W_OK)
                         else "inspect.png")
    try:
        report = inspect_shards(args.shards, grid, n_grid=args.n, seed=args.seed)
    except (DataPathError, ValueError) as e:
        raise UserError(str(e)) from None
    print("\n".join(report.lines()))
    print(f"grid        {grid}")
    return 1 if report.problems else 0


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
    make = data_verbs.add_parser(
        "make", help="convert an image folder, .zip or .npz into shards + index.json",
        description="Convert SRC (an image folder, searched recursively; a .zip of images; "
        "an .npz with uint8 'images' NHW/NHWC and optional 'labels') into WebDataset shards, "
        "index.json and skipped.txt in OUT. See docs/data.md.")
    make.add_argument("paths", nargs="+", metavar="SRC OUT", help="source and output directory "
                      "(only OUT with --builtin)")
    make.add_argument("--builtin", choices=["mnist", "stacked_mnist"],
                      help="a built-in dataset instead of SRC")
    make.add_argument("--resolution", type=int,
                      help="square output size (default: 256; npz: its size; built-in: 28)")
    make.add_argument("--channels", type=int, choices=[1, 3],
                      help="1 (gray) or 3 (RGB) (default: 3; npz: from its shape)")
    make.add_argument("--format", choices=["jpg", "png", "webp"],
                      help="image encoding (default: png for npz and 1 channel, else jpg)")
    make.add_argument("--quality", type=int, default=95, help="jpg/webp quality (default 95)")
    make.add_argument("--per-shard", type=int, default=1000, help="samples per shard "
                      "(default 1000)")
    make.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                      help="encoding processes (default: min(8, CPUs))")
    make.add_argument("--labels", choices=["none", "subdirs"], help="class labels: none, or "
                      "the top-level subdirectory (default: none; npz: its 'labels')")
    make.add_argument("--crop", choices=["center", "pad", "stretch"], default="center",
                      help="non-square pictures: centre square crop, pad to square, or "
                      "stretch (default center)")
    make.add_argument("--small", choices=["upscale", "skip"], default="upscale",
                      help="pictures below the resolution (default upscale)")
    make.add_argument("--background", default="white", help="colour under transparent "
                      "pixels and of --crop pad bars (default white)")
    make.add_argument("--seed", type=int, default=0, help="input order shuffle (default 0)")
    make.add_argument("--name", help="shard name prefix (default: SRC's name)")
    make.set_defaults(func=cmd_data_make)
    inspect_data = data_verbs.add_parser(
        "inspect", help="totals, sizes, labels; verify index.json; sample grid",
        description="Read every shard once: totals, resolution, channels, label histogram; "
        "check index.json counts and sha256 against the shards (exit status 1 on a mismatch); "
        "write a PNG grid of random samples.")
    inspect_data.add_argument("shards", help="a shard directory or a brace pattern")
    inspect_data.add_argument("--grid", help="grid PNG path (default: SHARDS/inspect.png, or "
                              "./inspect.png when that is not a writable directory)")
    inspect_data.add_argument("--n", type=int, default=64, help="samples in the grid (64)")
    inspect_data.add_argument("--seed", type=int, default=0, help="grid sample choice (0)")
    inspect_data.set_defaults(func=cmd_data_inspect)

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
