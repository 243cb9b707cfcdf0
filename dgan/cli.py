"""The `dgan` command line: train, sample, translate, enhance, eval, data, ckpt.

Errors the user can fix (bad config, missing data, bad run directory) print one line
`dgan: error: ...` and exit with status 2 before any work starts.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

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


def _resolve_data(cfg, stored_in: Optional[str] = None, key: str = "path") -> object:
    """The ShardSource of `data.path` (or of `data.<key>`, e.g. path_b), checked against
    data.resolution and data.channels.

    `stored_in`: the stored file (a run's config.yaml) data.path was read from, when the
    user neither gave it nor confirmed it with --trust-pipe: its `pipe:` commands are refused.
    """
    from dgan.data.builtin import BUILTIN, builtin_shards
    from dgan.data.sources import DataPathError, resolve_source

    given = cfg.data[key]
    path = given or "builtin:mnist"
    if path.startswith("builtin:"):
        name = path.split(":", 1)[1]
        if name not in BUILTIN:
            raise UserError(f"data.{key} {path}: unknown built-in dataset; expected one of "
                            f"{', '.join('builtin:' + b for b in BUILTIN)}")
        try:
            path = str(builtin_shards(name, cfg.data.resolution))
        except ValueError as e:
            raise UserError(f"data.{key} {given}: {e}") from None
    try:
        source = resolve_source(path, stored_in=stored_in)
    except (DataPathError, FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    if source.channels is not None and source.channels != cfg.data.channels:
        raise UserError(f"data.{key} {path} has {source.channels}-channel images but "
                        f"data.channels={cfg.data.channels}")
    if source.resolution is not None and source.resolution != cfg.data.resolution:
        raise UserError(f"data.{key} {path} holds {source.resolution}x{source.resolution} "
                        f"images but data.resolution={cfg.data.resolution}; set data.resolution="
                        f"{source.resolution} or rebuild the shards with --resolution")
    return source


def _resolve_second(cfg, stored_in: Optional[str] = None) -> object:
    """data.path_b's ShardSource for a task that reads a second shard set (CycleGAN's
    domain B), else None; resolved and refused like data.path."""
    from dgan.tasks import task_class

    if task_class(cfg).second_source_key is None:
        return None
    return _resolve_data(cfg, stored_in, key="path_b")


def _stored_config(config: Optional[str], overrides: list[str], key: str = "data.path"
                   ) -> Optional[str]:
    """`config` when data.path (or `key`, e.g. data.path_b) comes from it and it is a stored
    run's own file (it sits in a run directory, beside checkpoints/): resuming a run received
    from someone else must not run their `pipe:` command unconfirmed. None when the user gave
    the key."""
    if config is None or any(o.split("=", 1)[0] == key for o in overrides):
        return None
    from dgan.checkpoint import layout

    return config if layout.checkpoint_dir(Path(config).resolve().parent).is_dir() else None


def cmd_train(args: argparse.Namespace) -> int:
    if args.config and "=" in args.config and not os.path.isfile(args.config):
        args.config, args.overrides = None, [args.config, *args.overrides]
    if args.print_config:
        print(to_yaml(load_config(args.config, args.overrides)), end="")
        return 0
    from dgan.engine.preempt import PreemptionFlag

    # Installed before the heavy imports (torch, the trainer), so that a signal during
    # start-up, set-up or resume is a request to stop, never a kill.
    preemption = PreemptionFlag().install()
    try:
        return _train(args, preemption)
    finally:
        # every way out but os._exit (a requeue exit keeps them): an error, a finished
        # run, or main() called in-process, which must not leave dgan's handlers behind
        preemption.uninstall()


def _train(args: argparse.Namespace, preemption: Any) -> int:
    from dgan.engine.preempt import REQUEUE_EXIT_CODE, pause_hook
    from dgan.runlock import RunDirLocked

    pause_hook("start")
    cfg = load_config(args.config, args.overrides)
    from dgan.trackers import check_trackers

    check_trackers(cfg.log.trackers)  # W&B / MLflow installed: before the data are built
    stored = None if args.trust_pipe else _stored_config(args.config, args.overrides)
    source = _resolve_data(cfg, stored)
    stored_b = (None if args.trust_pipe else
                _stored_config(args.config, args.overrides, "data.path_b"))
    source_b = _resolve_second(cfg, stored_b)
    from dgan.checkpoint import InvalidCheckpoint, SaveFailed
    from dgan.engine.guard import NonFiniteError
    from dgan.checkpoint.init_from import InitFromError
    from dgan.engine.trainer import ResumeMismatch, Trainer

    try:
        trainer = Trainer(cfg, source, source_b, lock_run_dir=True)
    except (RunDirLocked, InitFromError) as e:
        raise UserError(str(e)) from None
    b = trainer.backend
    try:
        if preemption.agreed(b.all_reduce, b.device):
            # Signalled before the first step: the run's checkpoints are as the last run
            # left them, so there is nothing to save; exit as a preempted run does.
            got = preemption.signal_name or "a signal to another rank"
            if b.is_main or preemption.requested:
                print(f"dgan: preempted during start-up ({got}): nothing new to save, exiting "
                      f"with {REQUEUE_EXIT_CODE} (requeue me; the same command resumes)",
                      file=sys.stderr)
            status = REQUEUE_EXIT_CODE
        else:
            status = trainer.fit(preemption)
    except (InvalidCheckpoint, ResumeMismatch, NonFiniteError, SaveFailed) as e:
        # a checkpoint that must not load, another model, a run gone non-finite, a save
        # that failed (disk full, read-only run.dir: the previous checkpoint stays)
        trainer.close(wait=False)
        _release(trainer)
        where = (f"resume={cfg.resume}: " if isinstance(e, InvalidCheckpoint) else
                 "" if isinstance(e, SaveFailed) else f"run.dir {cfg.run.dir}: ")
        raise UserError(f"{where}{e}") from None
    except BaseException:
        trainer.close(wait=False)  # a peer may be gone: no barrier
        _release(trainer)
        raise
    if status == REQUEUE_EXIT_CODE:
        # Saved and committed (every rank passed the commit barrier), or preempted before
        # the first step with nothing to save. Leave now, handlers
        # still installed: a launcher that saw a peer exit sends SIGTERM, which must not
        # turn this exit into a kill.
        _release(trainer)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    trainer.close()
    _release(trainer)
    return status


def _release(trainer: Any) -> None:
    """Give up run.dir's lock (rank 0 holds it), once this process writes nothing more."""
    if trainer.run_lock is not None:
        trainer.run_lock.release()


def cmd_sample(args: argparse.Namespace) -> int:
    from dgan.checkpoint import InvalidCheckpoint
    from dgan.sample import VIDEO_INSTALL, SampleError, load_generator, parse_seeds, \
        write_interpolation, write_samples

    try:
        if args.seeds is not None:
            if args.n is not None or args.seed is not None:
                raise UserError("--seeds replaces --n and --seed: give one or the other")
            seeds = parse_seeds(args.seeds)
        else:  # --n N --seed S: seeds S .. S+N-1
            seeds = list(range(args.seed or 0, (args.seed or 0) + (64 if args.n is None
                                                                    else args.n)))
        # every checkpoint of the run refused (damaged, or a hostile index) or a bad option
        g = load_generator(args.run, args.ckpt)
        kw = dict(class_idx=args.cls, truncation_psi=args.trunc, noise_mode=args.noise_mode)
        if args.interpolate:
            if args.fps < 1:
                raise UserError(f"--fps {args.fps}: expected a frame rate >= 1")
            paths = write_interpolation(g, seeds, args.out, args.frames, video=args.video,
                                        fps=args.fps, **kw)
            print(f"dgan: wrote {' and '.join(paths)} ({(len(seeds) - 1) * args.frames + 1} "
                  f"frames, step {g.step})" + ("" if len(paths) > 1 or args.video is False else
                                               f"; for a video too: {VIDEO_INSTALL}"))
            return 0
        paths = write_samples(g, seeds, args.out, grid=args.grid, **kw)
    except (InvalidCheckpoint, SampleError) as e:
        raise UserError(str(e)) from None
    print(f"dgan: wrote {len(paths)} images (step {g.step}) to {args.out}"
          + (" and grid.png" if args.grid else ""))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from dgan.checkpoint import InvalidCheckpoint
    from dgan.config import config_from_yaml_text
    from dgan.metrics.evaluate import format_table
    from dgan.metrics.inception import inception_available, resolve_weights
    from dgan.metrics.run_eval import evaluate_generator, select_metrics
    from dgan.config import METRIC_KEYS
    from dgan.sample import load_generator

    if _is_translation_run(args.run):
        return _eval_translation(args)
    if _run_task(args.run) == "sr":
        return _eval_sr(args)
    if args.best is not None and args.best not in {k for ks in METRIC_KEYS.values() for k in ks}:
        raise UserError(f"--best {args.best}: unknown metric; expected one of "
                        f"{', '.join(dict.fromkeys(k for ks in METRIC_KEYS.values() for k in ks))}")
    loaded = None
    if args.best is None:
        try:
            loaded = load_generator(args.run)
        except InvalidCheckpoint as e:
            raise UserError(str(e)) from None
    config_file = os.path.join(args.run, "config.yaml")
    if not os.path.isfile(config_file):
        raise UserError(f"{config_file}: no such file (--run takes a run directory)")
    cfg = config_from_yaml_text(open(config_file).read())
    if args.data:  # given here: the user's own, pipe: included
        cfg.data.path = args.data
    stored = None if args.data or args.trust_pipe else config_file
    if args.digit_metrics:
        cfg.eval.digit_metrics = args.digit_metrics
    metrics = args.metrics.split(",") if args.metrics else list(cfg.eval.metrics)
    from dgan.config import METRICS, metric_keys

    if args.best is not None and not args.metrics:  # only what gives the metric
        metrics = [args.best if args.best in METRIC_KEYS else
                   next(m for m, keys in METRIC_KEYS.items() if args.best in keys)]

    if set(metrics) - set(METRICS):
        raise UserError(f"--metrics {args.metrics}: unknown {sorted(set(metrics) - set(METRICS))}; "
                        f"expected any of {','.join(METRICS)}")
    if args.best is not None and args.best not in metric_keys(metrics):
        raise UserError(f"--best {args.best}: --metrics {args.metrics} does not compute it "
                        f"(it gives {', '.join(metric_keys(metrics))})")
    if args.inception_weights:
        resolve_weights(args.inception_weights)  # a wrong path is an error, not a fallback
        os.environ["DGAN_INCEPTION_WEIGHTS"] = args.inception_weights
    source = _resolve_data(cfg, stored)
    chosen, skipped = select_metrics(cfg, source, metrics, inception_available())
    if not chosen:
        raise UserError(f"nothing to evaluate: {skipped}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n = args.n or cfg.eval.n
    if args.best is not None:
        def evaluate_step(step: int) -> dict[str, float]:
            g = load_generator(args.run, str(step))
            return evaluate_generator(cfg, g.net.to(device), source, device, metrics, n)

        return _eval_best(args.run, args.best, n, evaluate_step)
    assert loaded is not None
    g, step = loaded.net, loaded.step
    results = evaluate_generator(cfg, g.to(device), source, device, metrics, n)
    print(f"run {args.run}, step {step}, {n} samples")
    print(format_table(results))
    _write_eval(args.run, step, n, results, {})
    return 0


def _stored_eval(run: str, step: int) -> dict[str, Any]:
    """RUN/eval-<step>.json as written by `dgan eval` ({} when missing or unreadable)."""
    import json

    try:
        stored = json.loads(Path(run, f"eval-{step:08d}.json").read_text())
    except (OSError, ValueError):
        return {}
    return stored if isinstance(stored, dict) else {}


def _write_eval(run: str, step: int, n: int, results: dict[str, float],
                stored: dict[str, Any]) -> None:
    """RUN/eval-<step>.json: `results` with the step and sample count, over the values of
    `stored` computed with the same count."""
    import json

    kept = stored if stored.get("n") == n else {}
    with open(os.path.join(run, f"eval-{step:08d}.json"), "w") as f:
        json.dump({**kept, "step": step, "n": n, **results}, f, indent=1)


def _report_eval(run: str, step: int, n: int, results: dict[str, float], count_key: str,
                 what: str) -> int:
    """Print `results` of a translation / sr run's `dgan eval` (`count_key`: how many were
    measured, `what` those were) as a table and store them in RUN/eval-<step>.json."""
    from dgan.metrics.evaluate import format_table

    print(f"run {run}, step {step}, {int(results[count_key])} {what}")
    print(format_table({k: v for k, v in results.items() if k != count_key}))
    _write_eval(run, step, n, results, {})
    return 0


def _eval_best(run: str, metric: str, n: int,
               evaluate_step: Callable[[int], dict[str, float]]) -> int:
    """`dgan eval --run RUN --best METRIC`: METRIC of every valid checkpoint of RUN (values
    stored in eval-<step>.json with the same n are reused; `evaluate_step(step)` measures
    the others, raising InvalidCheckpoint for one it cannot load), a table, and
    RUN/best.json. For every task: generation and translation runs."""
    import math

    from dgan.checkpoint import InvalidCheckpoint, layout
    from dgan.checkpoint import best as best_json
    from dgan.config import metric_direction

    direction = metric_direction(metric)
    rows: list[tuple[int, str, float, bool]] = []  # step, checkpoint, value, reused
    for path in layout.list_checkpoints(run):
        try:
            step = int(layout.read_meta(path)["step"])
        except InvalidCheckpoint as e:
            sys.stderr.write(f"dgan: eval: skipping {path.name}: {e}\n")
            continue
        stored = _stored_eval(run, step)
        value = stored.get(metric)
        if stored.get("n") == n and isinstance(value, (int, float)) and math.isfinite(value):
            rows.append((step, path.name, float(value), True))
            continue
        try:
            results = evaluate_step(step)
        except InvalidCheckpoint as e:
            sys.stderr.write(f"dgan: eval: skipping {path.name}: {e}\n")
            continue
        if metric not in results:
            raise UserError(f"--best {metric}: the evaluation of {path.name} gave no {metric} "
                            f"(it gave {', '.join(sorted(results)) or 'nothing'})")
        _write_eval(run, step, n, results, stored)
        rows.append((step, path.name, float(results[metric]), False))
    if not rows:
        raise UserError(f"{run}: no valid checkpoint in {layout.checkpoint_dir(run)}")
    best: Optional[dict[str, Any]] = None
    for step, name, value, _ in rows:
        if best_json.is_better(value, best, direction):
            best = best_json.make_record(metric, value, step)
    if best is None:
        raise UserError(f"--best {metric}: no checkpoint has a finite {metric}")
    better = "lower" if direction == "min" else "higher"
    print(f"run {run}, {metric} ({better} is better), {n} samples")
    width = max(len("step"), *(len(str(r[0])) for r in rows))
    print(f"{'step':<{width}}  {metric}")
    for step, name, value, reused in rows:
        marks = [m for m, on in (("best", step == best["step"]), ("stored", reused)) if on]
        print(f"{step:<{width}}  {value:.6g}" + (f"  ({', '.join(marks)})" if marks else ""))
    written = best_json.write_best(run, best)
    print(f"dgan: wrote {written}: {best['checkpoint']} ({metric} {best['value']:.6g})")
    return 0


def _run_task(run: str) -> Optional[str]:
    """The task of run directory `run`'s config.yaml (read as plain YAML; None when it
    cannot be read)."""
    from omegaconf import OmegaConf

    from dgan.tasks import task_name

    try:
        return task_name(OmegaConf.load(os.path.join(run, "config.yaml")))
    except Exception:  # missing, unreadable or not YAML
        return None


def _is_translation_run(run: str) -> bool:
    """Whether run directory `run`'s config.yaml names a translation task (read as plain
    YAML: its own errors are for the command's usual path to report)."""
    from omegaconf import OmegaConf

    from dgan.translate import TRANSLATION_TASKS

    try:
        cfg = OmegaConf.load(os.path.join(run, "config.yaml"))
        name = OmegaConf.select(cfg, "task.name") or OmegaConf.select(cfg, "model.name")
    except Exception:  # missing, unreadable or not YAML
        return False
    return str(name) in TRANSLATION_TASKS


def _inception_weights(args: argparse.Namespace) -> None:
    """--inception-weights PATH: FID Inception features for fd/kid (a wrong path is an error,
    not a fallback)."""
    from dgan.metrics.inception import resolve_weights

    if args.inception_weights:
        resolve_weights(args.inception_weights)
        os.environ["DGAN_INCEPTION_WEIGHTS"] = args.inception_weights


def _translation_metrics(args: argparse.Namespace, configured: Any,
                         allowed: tuple[str, ...], what: str) -> list[str]:
    """The metrics a translation run's `dgan eval` computes: --metrics, else (with --best)
    the one that gives --best, else the run's eval.metrics that `allowed` has, else all."""
    from dgan.config import METRIC_KEYS, metric_keys

    if args.metrics:
        metrics = args.metrics.split(",")
    elif args.best is not None:
        metrics = [m for m in allowed if args.best in METRIC_KEYS.get(m, ())][:1] or list(allowed)
    else:
        metrics = [m for m in configured if m in allowed] or list(allowed)
    if set(metrics) - set(allowed):
        raise UserError(f"--metrics {args.metrics}: {what} computes {','.join(allowed)}, not "
                        f"{','.join(sorted(set(metrics) - set(allowed)))}")
    if args.best is not None and args.best not in metric_keys(metrics):
        raise UserError(f"--best {args.best}: unknown metric for {what}; expected one of "
                        f"{', '.join(metric_keys(metrics))}")
    return metrics


def _eval_translation(args: argparse.Namespace) -> int:
    """dgan eval of a translation run: PSNR, SSIM, L1, FD/KID of G's outputs against the
    targets of data.path's pairs (or --data's: held-out pairs), digit_class on digits; with
    --best, of every checkpoint."""
    import torch

    from dgan.checkpoint import InvalidCheckpoint
    from dgan.metrics.translation import PAIRED_METRICS, evaluate_translation
    from dgan.tasks import task_name
    from dgan.translate import BOTH_WAYS, TranslateError, load_translator

    try:
        t = load_translator(args.run)
    except (InvalidCheckpoint, TranslateError) as e:
        raise UserError(str(e)) from None
    cfg = t.config
    if task_name(cfg) in BOTH_WAYS:
        return _eval_cycle(args)
    if args.data:
        cfg.data.path = args.data
    if args.digit_metrics:
        cfg.eval.digit_metrics = args.digit_metrics
    stored = None if args.data or args.trust_pipe else os.path.join(args.run, "config.yaml")
    metrics = _translation_metrics(args, cfg.eval.metrics, PAIRED_METRICS, "a translation run")
    _inception_weights(args)
    source = _resolve_data(cfg, stored)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    src, tgt = ("a", "b") if t.direction == "AtoB" else ("b", "a")
    n = args.n or cfg.eval.n

    def evaluate(net: Any) -> dict[str, float]:
        try:
            return evaluate_translation(cfg, net.to(device), source, device, src, tgt,
                                        metrics, n)
        except ValueError as e:
            raise UserError(f"data.path {cfg.data.path}: {e}") from None

    if args.best is not None:
        def evaluate_step(step: int) -> dict[str, float]:
            try:
                return evaluate(load_translator(args.run, step, t.direction).net)
            except TranslateError as e:
                raise InvalidCheckpoint(str(e)) from None

        return _eval_best(args.run, args.best, n, evaluate_step)
    results = evaluate(t.net)
    return _report_eval(args.run, t.step, n, results, "pairs",
                        f"pairs of {cfg.data.path} ({t.direction})")


def _eval_cycle(args: argparse.Namespace) -> int:
    """dgan eval of an unpaired translation run (CycleGAN): cycle_l1, FD/KID of each way's
    translations against the other domain, digit_class on digits, over data.path (domain A;
    --data: other A images) and data.path_b (domain B); with --best, of every checkpoint."""
    import torch

    from dgan.checkpoint import InvalidCheckpoint
    from dgan.metrics.translation import CYCLE_METRICS, evaluate_cycle
    from dgan.translate import TranslateError, load_translation_networks

    net, cfg, step, _ = load_translation_networks(args.run)
    config_file = os.path.join(args.run, "config.yaml")
    if args.data:
        cfg.data.path = args.data
    if args.digit_metrics:
        cfg.eval.digit_metrics = args.digit_metrics
    metrics = _translation_metrics(args, cfg.eval.metrics, CYCLE_METRICS,
                                   "an unpaired translation run")
    _inception_weights(args)
    stored = None if args.data or args.trust_pipe else config_file
    source = _resolve_data(cfg, stored)
    source_b = _resolve_data(cfg, None if args.trust_pipe else config_file, key="path_b")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n = args.n or cfg.eval.n

    def evaluate(nets: Any) -> dict[str, float]:
        try:
            return evaluate_cycle(cfg, nets.to(device), source, source_b, device, n, metrics)
        except ValueError as e:
            raise UserError(f"data.path {cfg.data.path}, data.path_b {cfg.data.path_b}: {e}"
                            ) from None

    if args.best is not None:
        def evaluate_step(at: int) -> dict[str, float]:
            try:
                return evaluate(load_translation_networks(args.run, at)[0])
            except TranslateError as e:
                raise InvalidCheckpoint(str(e)) from None

        return _eval_best(args.run, args.best, n, evaluate_step)
    results = evaluate(net)
    return _report_eval(args.run, step, n, results, "images",
                        f"images of each domain ({cfg.data.path}, {cfg.data.path_b})")


def _eval_sr(args: argparse.Namespace) -> int:
    """dgan eval of a super-resolution run: PSNR and SSIM on Y of G_ema's outputs and of
    bicubic upscaling against the HR images of data.path (or --data's: held-out photos),
    each degraded as in training (the same draws in every evaluation); with --best, of
    every checkpoint."""
    import torch

    from dgan.checkpoint import InvalidCheckpoint
    from dgan.config import ConfigError
    from dgan.enhance import EnhanceError, load_enhancer
    from dgan.metrics.sr import SR_METRICS, evaluate_sr
    from dgan.tasks import build_task

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        e = load_enhancer(args.run, device=device)
    except (InvalidCheckpoint, EnhanceError, ConfigError) as err:
        raise UserError(str(err)) from None
    cfg = e.config
    if args.data:
        cfg.data.path = args.data
    stored = None if args.data or args.trust_pipe else os.path.join(args.run, "config.yaml")
    metrics = _translation_metrics(args, cfg.eval.metrics, SR_METRICS,
                                   "a super-resolution run")
    _inception_weights(args)
    source = _resolve_data(cfg, stored)
    task = build_task(cfg)
    n = args.n or cfg.eval.n

    def evaluate(net: Any) -> dict[str, float]:
        try:
            return evaluate_sr(cfg, net, source, device, task.degrade_eval, metrics, n)
        except ValueError as err:
            raise UserError(f"data.path {cfg.data.path}: {err}") from None

    if args.best is not None:
        def evaluate_step(step: int) -> dict[str, float]:
            try:
                return evaluate(load_enhancer(args.run, step, device=device).net)
            except EnhanceError as err:
                raise InvalidCheckpoint(str(err)) from None

        return _eval_best(args.run, args.best, n, evaluate_step)
    results = evaluate(e.net)
    return _report_eval(args.run, e.step, n, results, "images",
                        f"images of {cfg.data.path} (x{e.scale}, LR by "
                        f"sr.degradation={cfg.sr.degradation})")


def _checkpoint_arg(path: Path) -> Optional[Path]:
    """The checkpoint directory `path` names itself, or None when it is a run directory."""
    from dgan.checkpoint import layout

    return path if layout.is_checkpoint_dir(path) else None


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
    from dgan.data.make import SKIPPED, MakeOptions, make_dataset, make_paired

    if args.paired and args.side_by_side:
        raise UserError("dgan data make: give --paired DIR_A DIR_B OUT or --side-by-side "
                        "DIR OUT, not both")
    need = 3 if args.paired else 2
    if len(args.paths) != need:
        raise UserError("dgan data make --paired DIR_A DIR_B OUT" if args.paired else
                        "dgan data make --side-by-side DIR OUT" if args.side_by_side else
                        "dgan data make SRC OUT (or --builtin NAME OUT)")
    *srcs, out = args.paths
    opts = MakeOptions(resolution=args.resolution, channels=args.channels, format=args.format,
                       quality=args.quality, per_shard=args.per_shard, workers=args.workers,
                       labels=args.labels, crop=args.crop, small=args.small,
                       background=args.background, seed=args.seed, name=args.name)
    try:
        if args.paired or args.side_by_side:
            index = make_paired(srcs, out, opts)
        else:
            index = make_dataset(srcs[0], out, opts)
    except ValueError as e:
        raise UserError(str(e)) from None
    source = index["source"]
    if "images" in index:
        kinds = ", ".join(f"{n} {k}" for k, n in source["skipped_by"].items())
        print(f"dgan: wrote {index['total']} pairs ({', '.join(index['images'])}; "
              f"{index['resolution']}x{index['resolution']}, {index['channels']} channels, "
              f"{source['options']['format']}) in {len(index['shards'])} shards to {out}; "
              f"skipped {source['skipped']} ({kinds}; listed in {os.path.join(out, SKIPPED)}); "
              f"ignored {source['ignored']} non-image files")
        return 0
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
    from dgan.checkpoint import layout, store

    path = Path(args.path)
    if not path.exists():
        raise UserError(f"{path}: no such checkpoint or run directory")
    chosen = _checkpoint_arg(path)
    if chosen is None:
        listed = layout.candidates(path)
        if not listed:
            raise UserError(f"{path}: no checkpoint found in {layout.checkpoint_dir(path)}")
        found = layout.newest_valid(path)
        print(f"run          {path}")
        print(f"checkpoints  {', '.join(p.name for p in sorted(listed))}")
        if found is None:
            chosen = listed[0]
        else:
            chosen = found[0]
            print(f"resume=auto  {chosen.name}")
    print(f"checkpoint   {chosen}")
    print(f"size         {layout.disk_size(chosen) / 2**20:.2f} MiB")
    try:
        # sizes, checksums, and the tensor index through the allow-list unpickler
        meta = layout.read_meta(chosen)
        store.SafeReader(str(chosen)).read_metadata()
    except layout.InvalidCheckpoint as e:
        print(f"valid        no: {e}")
        return 1
    versions = meta.get("versions", {})
    print(f"step         {meta['step']}")
    print(f"images seen  {meta['images_seen']}")
    print(f"world size   {meta['world_size']}")
    print(f"backend      {meta['backend']}")
    print(f"precision    {meta['precision']}")
    print(f"config hash  {meta['config_hash']}")
    print("versions     " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    print("valid        yes")
    return 0


def cmd_ckpt_export(args: argparse.Namespace) -> int:
    from dgan import checkpoint
    from dgan.export import EXPORT_CLASSES, ExportError, write_export

    path = Path(args.run)
    chosen = _checkpoint_arg(path)
    if args.ckpt is not None:
        from dgan.sample import SampleError, checkpoint_of

        if chosen is not None:
            raise UserError(f"--ckpt {args.ckpt}: {path} is itself a checkpoint; give its run "
                            "directory to choose another")
        try:
            chosen = checkpoint_of(path, args.ckpt)
        except SampleError as e:
            raise UserError(str(e)) from None
    if chosen is None:  # the newest checkpoint that loads; damaged ones skipped with a warning
        try:
            found = checkpoint.load_latest(path)
        except checkpoint.InvalidCheckpoint as e:
            raise UserError(str(e)) from None
        if found is None:
            raise UserError(f"{path}: no valid checkpoint in {checkpoint.checkpoint_dir(path)}")
        chosen, state = found
    else:
        try:
            state = checkpoint.load(chosen)
        except checkpoint.InvalidCheckpoint as e:
            raise UserError(f"{chosen}: {e}") from None
    out = Path(args.out)
    try:
        weights = write_export(state, chosen, out, args.format)
    except ExportError as e:
        raise UserError(f"{chosen}: {e}") from None
    written = [*weights, out / "config.yaml"] + (
        [out / EXPORT_CLASSES] if (out / EXPORT_CLASSES).is_file() else [])
    nets = " and ".join(w.name.split(".")[0] for w in weights)
    print(f"dgan: wrote {nets} of {chosen.name} (step {state['step']}) "
          f"to {', '.join(map(str, written[:-1]))} and {written[-1]}")
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    from dgan.checkpoint import InvalidCheckpoint
    from dgan.translate import TranslateError, load_translator, translate_files

    try:
        t = load_translator(args.run, args.ckpt, args.direction)
        written, skipped = translate_files(t, args.input, args.out)
    except (InvalidCheckpoint, TranslateError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    for path, why in skipped:
        print(f"dgan: skipped {path}: {why}", file=sys.stderr)
    if not written and not skipped:
        raise UserError(f"{args.input}: no images (expected {', '.join(_image_exts())})")
    print(f"dgan: translated {len(written)} image(s) {t.direction} (step {t.step}) into "
          f"{args.out}" + (f"; skipped {len(skipped)} (listed above)" if skipped else ""))
    return 1 if skipped and not written else 0


def cmd_enhance(args: argparse.Namespace) -> int:
    from dgan.checkpoint import InvalidCheckpoint
    from dgan.enhance import EnhanceError, enhance_files, load_enhancer

    try:
        e = load_enhancer(args.run, args.ckpt)
        if args.scale is not None and args.scale != e.scale:
            raise UserError(f"--scale {args.scale}: {args.run} is a x{e.scale} model "
                            f"(sr.scale={e.scale}), and a model's scale is fixed; omit --scale "
                            f"or give {e.scale}")
        written, skipped = enhance_files(e, e.scale, args.input, args.out, tile=args.tile,
                                         pad=args.tile_pad, precision=args.precision)
    except (InvalidCheckpoint, EnhanceError, FileNotFoundError) as err:
        raise UserError(str(err)) from None
    for path, why in skipped:
        print(f"dgan: skipped {path}: {why}", file=sys.stderr)
    if not written and not skipped:
        raise UserError(f"{args.input}: no images (expected {', '.join(_image_exts())})")
    print(f"dgan: enhanced {len(written)} image(s) x{e.scale} (step {e.step}) into "
          f"{args.out}" + (f"; skipped {len(skipped)} (listed above)" if skipped else ""))
    return 1 if skipped and not written else 0


def _image_exts() -> tuple[str, ...]:
    from dgan.translate import IMAGE_EXTS

    return IMAGE_EXTS


def cmd_ckpt_import(args: argparse.Namespace) -> int:
    from dgan.checkpoint import InvalidCheckpoint, nvlabs

    if not Path(args.pkl).is_file():
        raise UserError(f"{args.pkl}: no such file")
    try:
        print(f"dgan: wrote {nvlabs.export(args.pkl, args.out)} to {args.out}")
    except InvalidCheckpoint as e:
        raise UserError(str(e)) from None
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
    train.add_argument("--trust-pipe", action="store_true",
                       help="run a pipe: data.path read from a run directory's config.yaml "
                       "(refused without it; see docs/data.md)")
    train.set_defaults(func=cmd_train)

    sample = verbs.add_parser(
        "sample", help="write PNG samples from a run's G_ema",
        description="Write one PNG per seed (seed000005.png ...) from G_ema of a run's newest "
        "checkpoint (or --ckpt), a checkpoint or a `dgan ckpt export` folder. Image i depends "
        "only on its seed (and --class, --trunc, --noise-mode): the same seed gives the same "
        "bytes whatever the other seeds.")
    sample.add_argument("--run", required=True, help="a run directory (run.dir of the "
                        "training), a checkpoint directory or an export folder")
    sample.add_argument("--seeds", help="seeds and inclusive ranges, e.g. 0-99,200")
    sample.add_argument("--n", type=int, help="with --seed: N images of seeds S..S+N-1 "
                        "(default 64)")
    sample.add_argument("--seed", type=int, help="first seed of --n (default 0)")
    sample.add_argument("--class", dest="cls", metavar="NAME|INDEX",
                        help="class of every image (class-conditional G; default: each seed "
                        "draws one)")
    sample.add_argument("--trunc", type=float, default=1.0, metavar="PSI",
                        help="truncation psi, StyleGAN2 only (default 1: none)")
    sample.add_argument("--noise-mode", choices=["const", "random", "none"],
                        help="StyleGAN2 noise inputs (default const; random: from the seed)")
    sample.add_argument("--ckpt", metavar="STEP|best|PATH", help="the run's checkpoint of this "
                        "step, best (the one RUN/best.json names: checkpoint.keep_best or dgan "
                        "eval --best) or a checkpoint directory (default: the newest valid one)")
    sample.add_argument("--interpolate", action="store_true", help="write OUT/interpolation.png "
                        "instead: one row walking from each seed to the next, and "
                        "OUT/interpolation.mp4 when a video encoder is installed "
                        "(pip install 'dgan[video]')")
    sample.add_argument("--video", action=argparse.BooleanOptionalAction, default=None,
                        help="--interpolate: --video requires the MP4, --no-video skips it "
                        "(default: written when the encoder is installed)")
    sample.add_argument("--fps", type=int, default=24, help="--interpolate: video frame rate")
    sample.add_argument("--frames", type=int, default=8,
                        help="--interpolate: steps from one seed to the next (default 8)")
    sample.add_argument("--out", required=True, help="output directory")
    sample.add_argument("--grid", action="store_true", help="also write grid.png")
    sample.set_defaults(func=cmd_sample)

    tr = verbs.add_parser(
        "translate", help="translate images with a translation run's G (pix2pix, cyclegan)",
        description="Translate IN (a folder, recursively, or one image; any size) with G of "
        "RUN (a run, checkpoint or export directory) into OUT as PNGs with the same relative "
        "names. An alpha channel is carried over unchanged.")
    tr.add_argument("--run", required=True, help="run, checkpoint or export directory")
    tr.add_argument("input", metavar="IN", help="an image or a folder of images")
    tr.add_argument("out", metavar="OUT", help="output folder")
    tr.add_argument("--direction", choices=["AtoB", "BtoA"],
                    help="cyclegan: G_AB (AtoB, the default) or G_BA; pix2pix: checked "
                    "against the run's task.direction (default: that one)")
    tr.add_argument("--ckpt", metavar="STEP|PATH", help="the run's checkpoint of this step, "
                    "or a checkpoint directory (default: the newest valid one)")
    tr.set_defaults(func=cmd_translate)

    en = verbs.add_parser(
        "enhance", help="upscale images with a super-resolution run's G (task.name sr)",
        description="Upscale IN (a folder, recursively, or one image; any size) by the run's "
        "sr.scale with G_ema of RUN (a run, checkpoint or export directory) into OUT as PNGs "
        "with the same relative names. Large images go through G in overlapping tiles, "
        "cross-faded (see docs/enhancement.md). An alpha channel is upscaled bicubically.")
    en.add_argument("--run", required=True, help="run, checkpoint or export directory")
    en.add_argument("input", metavar="IN", help="an image or a folder of images")
    en.add_argument("out", metavar="OUT", help="output folder")
    en.add_argument("--scale", type=int, help="checked against the run's sr.scale (a model's "
                    "scale is fixed; default: that one)")
    en.add_argument("--tile", type=int, default=512, help="tile size in input pixels (0: the "
                    "whole image in one pass; default 512)")
    en.add_argument("--tile-pad", type=int, default=16, metavar="P", help="context pixels "
                    "around each tile; tiles equal the whole-image result when P is at least "
                    "G's receptive field radius (default 16)")
    en.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                    help="autocast dtype (fp16: CUDA only; default fp32)")
    en.add_argument("--ckpt", metavar="STEP|best|PATH", help="the run's checkpoint of this "
                    "step, best (the one RUN/best.json names) or a checkpoint directory "
                    "(default: the newest valid one)")
    en.set_defaults(func=cmd_enhance)

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
    ev.add_argument("--digit-metrics", choices=["auto", "true", "false"],
                    help="digit-classifier metrics: auto (only on the built-in digits), true "
                    "(the data are digits too), false (default: the run's eval.digit_metrics)")
    ev.add_argument("--data", help="real data (a data.path) instead of the run's data.path")
    ev.add_argument("--trust-pipe", action="store_true",
                    help="run a pipe: data.path read from the run's config.yaml (refused "
                    "without it; see docs/data.md)")
    ev.add_argument("--best", metavar="METRIC",
                    help="evaluate METRIC (a result key, e.g. fd_digits, fid, coverage_min; psnr, "
                    "digit_class_ab for translation runs) on "
                    "every valid checkpoint of the run, reusing values stored in "
                    "eval-<step>.json with the same --n; print step/value, mark the best and "
                    "write RUN/best.json (for --ckpt best); see docs/checkpointing.md")
    ev.set_defaults(func=cmd_eval)

    data = verbs.add_parser("data", help="make datasets (WebDataset shards)")
    data_verbs = data.add_subparsers(dest="data_verb", metavar="ACTION", required=True)
    make = data_verbs.add_parser(
        "make", help="convert an image folder, .zip or .npz into shards + index.json",
        description="Convert SRC (an image folder, searched recursively; a .zip of images, "
        "e.g. from NVlabs dataset_tool with its dataset.json labels; an .npz with uint8 "
        "'images' NHW/NHWC and optional 'labels') into WebDataset shards, "
        "index.json and skipped.txt in OUT. See docs/data.md.")
    make.add_argument("paths", nargs="+", metavar="SRC OUT", help="source and output directory "
                      "(only OUT with --builtin; DIR_A DIR_B OUT with --paired)")
    make.add_argument("--paired", action="store_true",
                      help="DIR_A DIR_B OUT: image-to-image pairs, files matched by relative "
                      "path without extension; samples hold a.<ext> and b.<ext>")
    make.add_argument("--side-by-side", action="store_true",
                      help="DIR OUT: pix2pix-style A|B pictures, split at half the width into "
                      "a and b (width must be 2 x height)")
    from dgan.data.builtin import BUILTIN

    make.add_argument("--builtin", choices=list(BUILTIN),
                      help="a built-in dataset instead of SRC")
    make.add_argument("--resolution", type=int,
                      help="square output size (default: 256; npz: its size; built-in: 28)")
    make.add_argument("--channels", type=int, choices=[1, 3],
                      help="1 (gray) or 3 (RGB) (default: 3; npz: from its shape)")
    make.add_argument("--format", choices=["jpg", "png", "webp"],
                      help="image encoding: png is lossless, jpg and webp lossy at "
                      "--quality (default: png for npz and 1 channel, else jpg)")
    make.add_argument("--quality", type=int, default=95, help="jpg/webp quality (default 95)")
    make.add_argument("--per-shard", type=int, default=1000, help="samples per shard "
                      "(default 1000)")
    make.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                      help="encoding processes (default: min(8, CPUs))")
    make.add_argument("--labels", choices=["none", "subdirs", "dataset.json"],
                      help="class labels: none; the top-level subdirectory; or SRC's "
                      "dataset.json (NVlabs dataset_tool) (default: dataset.json when SRC "
                      "has one, npz: its 'labels', else none)")
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

    ckpt = verbs.add_parser("ckpt", help="inspect and export checkpoints")
    ckpt_verbs = ckpt.add_subparsers(dest="ckpt_verb", metavar="ACTION", required=True)
    inspect = ckpt_verbs.add_parser(
        "inspect", help="step, images seen, world size, backend, size, valid or why not",
        description="Show what a checkpoint holds and whether it is valid (exit status 1 if "
        "not). Given a run directory: the checkpoint resume=auto would use.")
    inspect.add_argument("path", help="a checkpoint directory or a run directory")
    inspect.set_defaults(func=cmd_ckpt_inspect)
    export = ckpt_verbs.add_parser(
        "export", help="write G_ema alone (safetensors, torchscript or onnx) for inference",
        description="Write G_ema of the newest valid checkpoint of RUN (or of RUN itself when "
        "it is a checkpoint directory) into OUT, with OUT/config.yaml and OUT/classes.json. "
        "See docs/checkpointing.md.")
    export.add_argument("run", help="a run directory or a checkpoint directory")
    export.add_argument("out", help="output directory")
    export.add_argument("--ckpt", metavar="STEP|best|PATH", help="the run's checkpoint of "
                        "this step, best (the one RUN/best.json names) or a checkpoint "
                        "directory (default: the newest valid one)")
    export.add_argument("--format", choices=["safetensors", "torchscript", "onnx"],
                        default="safetensors", help="safetensors: G_ema.safetensors, read by "
                        "dgan sample / dgan.load_generator (default); torchscript: "
                        "G_ema.torchscript.pt for torch.jit.load; onnx: G_ema.onnx (needs "
                        "pip install 'dgan[onnx]')")
    export.set_defaults(func=cmd_ckpt_export)
    imp = ckpt_verbs.add_parser(
        "import", help="NVlabs StyleGAN2 network-snapshot-*.pkl -> an export folder",
        description="Read an NVlabs stylegan2-ada-pytorch / stylegan3 StyleGAN2 (config F) "
        "snapshot without running its code and write its G_ema as OUT/G_ema.safetensors, "
        "OUT/config.yaml and OUT/classes.json. To fine-tune G and D, give the .pkl to "
        "init.from instead.")
    imp.add_argument("pkl", help="an NVlabs network-snapshot-*.pkl")
    imp.add_argument("out", help="output directory")
    imp.set_defaults(func=cmd_ckpt_import)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="dgan: %(levelname)s: %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (UserError, ConfigError, FileNotFoundError) as e:
        # one write: the ranks of a launch share stderr, and print() writes the line and
        # its newline separately, so two ranks' lines could run together
        sys.stderr.write(f"dgan: error: {e}\n")
        return 2
    except ValueError as e:  # data found unusable once read (every shard bad), during work
        from dgan.data.sources import DataPathError

        if not isinstance(e, DataPathError):
            raise
        sys.stderr.write(f"dgan: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        print("dgan: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
