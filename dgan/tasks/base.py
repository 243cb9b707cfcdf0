"""The task interface: what one kind of GAN trains, for the one training loop.

A task declares, by name:
- its networks (`build_networks`: {"G": ..., "D": ...}) and how they group into
  optimizers (`groups`: optimizer group -> networks; `build_optimizers`);
- its phases (`phases`: `Phase(name, group, interval, fn)` in order; a phase runs at the
  steps where `step % interval == 0` and trains its group's networks, the others frozen);
- which networks get an EMA (`emas`: {"G_ema": "G"}) and the decay per step (`ema_beta`);
- the sample keys it reads from the stream (`data_keys`) and the inputs it draws itself
  each step (`draw`: latents, fake labels), seeded by (run.seed, rank, step, phase);
- what it shows as a sample grid (`sample_grid`) and how it is evaluated (`evaluate`);
- its own state (`state_dict` / `load_state_dict`: path-length mean, ADA p, ...), its
  per-rank state (`rank_state_dict` / `load_rank_state_dict`: CycleGAN's image pools) and
  the modules whose buffers a skipped step puts back (`stateful_modules`);
- whether it reads a second shard set (`second_source_key`: data.path_b's images, streamed
  apart with their own seed and resumable position, e.g. CycleGAN's domain B);
- the config keys only it reads (`own_keys`) and what it supports (`supports_grad_accum`,
  `supports_compile`): `validate_config` makes a key that does nothing for the chosen task
  an error naming the task.

The trainer (dgan.engine.trainer) owns the loop, the backend, EMAs, checkpoints, logging
and the non-finite guard; a task never steps an optimizer itself. A new GAN is one file in
dgan/tasks/ (a `Task` subclass registered with `@register`) plus its config.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

Batch = dict[str, torch.Tensor | None]
# One micro-batch -> (scalar loss to backpropagate into the phase's group, detached stats).
PhaseFn = Callable[[Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class Phase:
    name: str  # for logs and `train.compile` (e.g. "D", "Gmain", "Dreg")
    group: str  # the optimizer group it trains
    interval: int  # runs when step % interval == 0 (1: every step)
    fn: PhaseFn

    def due(self, step: int) -> bool:
        return step % self.interval == 0


def one_hot(labels: torch.Tensor, c_dim: int) -> torch.Tensor | None:
    """[N] int -> [N, c_dim] float one-hot; None when c_dim is 0 (unconditional)."""
    if not c_dim:
        return None
    return torch.nn.functional.one_hot(labels.clamp(min=0), c_dim).float()


class Task:
    """Base class; see the module docstring. Subclasses set the class attributes."""

    name: ClassVar[str]
    models: ClassVar[tuple[str, ...]]  # the model.name values this task trains
    data_keys: ClassVar[tuple[str, ...]] = ("image", "label")
    # unpaired tasks: the batch key under which the trainer puts the images of a second,
    # single-image stream of data.path_b (its own seed and position, saved in the rank
    # state); None: the task reads data.path only
    second_source_key: ClassVar[Optional[str]] = None
    emas: ClassVar[dict[str, str]] = {}  # EMA name -> network it averages
    # config keys that only some tasks read: the ones of this task (a key of another task
    # set away from its default is an error, see validate_config)
    own_keys: ClassVar[tuple[str, ...]] = ()
    # keys no task lists as its own that this task does not read (e.g. loss.r1_gamma for
    # pix2pix): set away from their defaults, they are an error naming the task
    ignored_keys: ClassVar[tuple[str, ...]] = ()
    supports_grad_accum: ClassVar[bool] = True
    supports_compile: ClassVar[bool] = False
    # False: the shards' labels are not the model's classes (c_dim is 0)
    takes_labels: ClassVar[bool] = True
    # the eval.metrics this task computes; with eval.metrics at its default the task
    # evaluates `default_metrics`
    metrics: ClassVar[tuple[str, ...]] = ("fd", "kid", "pr", "fd_digits", "coverage", "modes")
    default_metrics: ClassVar[tuple[str, ...]] = ("fd", "coverage")

    def __init__(self, cfg: DictConfig, c_dim: int = 0) -> None:
        self.cfg, self.c_dim = cfg, c_dim
        self.backend: Any = None
        self.ema_nets: dict[str, nn.Module] = {}
        self.second_source: Any = None  # data.path_b's source (second_source_key), if read

    # -- before the backend -------------------------------------------------------------
    def build_networks(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def groups(self) -> dict[str, tuple[str, ...]]:
        """Optimizer group -> its networks; by default one group per network."""
        return {n: (n,) for n in self.network_names()}

    def network_names(self) -> tuple[str, ...]:
        raise NotImplementedError

    def build_optimizers(self, nets: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        """By default one Adam per network (its group): optim.lr_g for generators (names
        starting with G), optim.lr_d for the others, betas (optim.beta1, optim.beta2)."""
        o = self.cfg.optim
        return {name: torch.optim.Adam(net.parameters(),
                                       lr=o.lr_g if name.startswith("G") else o.lr_d,
                                       betas=(o.beta1, o.beta2))
                for name, net in nets.items()}

    # -- after backend.prepare ----------------------------------------------------------
    def bind(self, backend: Any, ema_nets: dict[str, nn.Module]) -> None:
        """Called once the backend holds the networks (`backend.nets` plain,
        `backend.wrapped` for the trained side) and the EMAs exist."""
        self.backend, self.ema_nets = backend, ema_nets

    def phases(self) -> list[Phase]:
        raise NotImplementedError

    def draw(self, step: int, batch: Batch) -> None:
        """Add this step's own inputs to `batch` (keys not already there), from generators
        seeded by (run.seed, rank, step, phase). Tensors are split into micro-batches."""

    def begin_step(self, step: int) -> None:
        """Called before the step's first phase."""

    def ema_beta(self, step: int, global_batch: int) -> float:
        raise NotImplementedError

    def end_step(self, step: int, stats: dict[str, torch.Tensor], skipped: bool
                 ) -> dict[str, torch.Tensor]:
        """After the EMA updates: the step's metrics from the phases' `stats` (averaged over
        micro-batches); `skipped`: some phase's update was skipped (non-finite)."""
        return stats

    def stateful_modules(self) -> list[nn.Module]:
        """Modules besides the networks whose buffers a step changes (put back on a skip)."""
        return []

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""

    def rank_state_dict(self) -> dict[str, Any]:
        """This rank's own state (differs between ranks), saved in its rank state."""
        return {}

    def load_rank_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `rank_state_dict` returned ({} from a checkpoint without it)."""

    def sample_grid(self) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, source: Any) -> dict[str, float]:
        return {}

    def eval_metrics(self) -> list[str]:
        """eval.metrics, or `default_metrics` when eval.metrics names none of this task's."""
        chosen = [m for m in self.cfg.eval.metrics if m in self.metrics]
        return chosen or list(self.default_metrics)

    # -- configuration ------------------------------------------------------------------
    @classmethod
    def validate_config(cls, cfg: DictConfig, defaults: DictConfig,
                        others: dict[str, tuple[str, ...]]) -> list[str]:
        """Problems of `cfg` for this task, one line each. `others`: every task's name ->
        its `own_keys`, so that a key only other tasks read is refused when set."""
        problems = []
        if cfg.model.name not in cls.models:
            problems.append(f"task.name={cls.name} trains model.name in {list(cls.models)}, "
                            f"not {cfg.model.name!r}")
        mine = set(cls.own_keys)
        for other, keys in others.items():
            for key in keys:
                if key in mine:
                    continue
                value = OmegaConf.select(cfg, key)
                if value != OmegaConf.select(defaults, key):
                    problems.append(f"'{key}'={value} does nothing for task.name={cls.name} "
                                    f"(a {other} key); remove it")
                    mine.add(key)
        for key in cls.ignored_keys:
            value = OmegaConf.select(cfg, key)
            if value != OmegaConf.select(defaults, key):
                problems.append(f"'{key}'={value} does nothing for task.name={cls.name}; "
                                "remove it")
        if list(cfg.eval.metrics) != list(defaults.eval.metrics):
            bad = [m for m in cfg.eval.metrics if m not in cls.metrics]
            if bad:
                problems.append(f"bad value in 'eval.metrics': {bad} for task.name={cls.name}; "
                                f"expected any of {list(cls.metrics)}")
        if cfg.train.grad_accum != 1 and not cls.supports_grad_accum:
            problems.append(f"bad value for 'train.grad_accum': {cfg.train.grad_accum}; "
                            f"task.name={cls.name} runs one batch per phase (use 1 and more "
                            "processes or a smaller train.batch_size)")
        if cfg.train.compile and not cls.supports_compile:
            problems.append(f"train.compile=true is not supported with task.name={cls.name}; "
                            "use train.compile=false")
        return problems


class KeepsGrid:
    """Task state of a task that shows the first inputs it saw as its sample grid (pix2pix,
    CycleGAN, sr): `self.grid`, {name: CPU tensor}, saved with the run so that a resumed
    run's grids show the same inputs."""

    grid: dict[str, torch.Tensor]

    def state_dict(self) -> dict[str, Any]:
        return {"grid": dict(self.grid)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.grid = {k: v.float().cpu() for k, v in (state.get("grid") or {}).items()}


@contextlib.contextmanager
def eval_mode(net: nn.Module) -> Iterator[nn.Module]:
    """`net` in eval mode for the block (no dropout, running norm statistics), then back in
    the mode it was in."""
    was = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was)
