"""`init.from=PATH`: a new run (step 0, fresh optimizers, augmentation and data position)
that starts from saved weights, where `resume` continues a run with all of its state.

PATH is a dgan run directory (its newest valid checkpoint), a checkpoint directory, a
`dgan ckpt export` folder (G_ema alone: it initialises G and G_ema, D starts fresh), or an
NVlabs StyleGAN2 `network-snapshot-*.pkl` (dgan.checkpoint.nvlabs, read without running it).
Everything is read through dgan's safe readers: DCP with the allow-list index
(checkpoint.load), safetensors, or the NVlabs reader.

A run directory that already has checkpoints resumes (the requeue of a run started with
init.from runs the same command): allowed only when those checkpoints were written by a run
with the same init.from; anything else is refused, since init.from would be ignored.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dgan import checkpoint
from dgan.checkpoint import layout

log = logging.getLogger(__name__)
SHOWN = 4  # mismatching tensors named in the error; the rest are counted


class InitFromError(ValueError):
    """init.from cannot be used as given; the message (one line) says why and what to do."""


def _saved_init_from(run_dir: str) -> Optional[str]:
    """init.from of the run that wrote run_dir's newest checkpoint with a readable meta.json."""
    for path in layout.candidates(run_dir):
        try:
            saved = json.loads((path / layout.META).read_text())["state"]["config"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        return (saved.get("init") or {}).get("from")
    return None


def source_of(cfg: DictConfig) -> Optional[str]:
    """init.from when this run starts from it; None when unset or when the run resumes."""
    source = OmegaConf.select(cfg, "init.from")
    if source is None:
        return None
    if str(cfg.resume) not in ("auto", "never"):
        raise InitFromError(f"init.from={source} and resume={cfg.resume} both name weights to "
                            "start from; give one (init.from starts a new run at step 0, "
                            "resume continues a run)")
    found = layout.list_checkpoints(cfg.run.dir)
    if not found:
        return source
    if str(cfg.resume) == "auto" and _saved_init_from(str(cfg.run.dir)) == source:
        return None  # this run's own checkpoints (a requeue): resume wins
    raise InitFromError(f"init.from={source}: run.dir {cfg.run.dir} already has checkpoints "
                        f"({found[-1].name}) of a run not started from it, and resume wins "
                        "there; drop init.from to continue that run, or give a new run.dir")


def read_networks(path: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], Optional[dict]]:
    """({"G", "D", "G_ema"} -> state dict, those present; the source's dgan config or None)."""
    path = Path(path)
    if path.is_file():
        from dgan.checkpoint import nvlabs

        return nvlabs.networks(path), None
    if not path.is_dir():
        raise InitFromError(f"init.from={path}: no such file or directory; expected a dgan "
                            "run, checkpoint or export directory, or an NVlabs .pkl")
    from dgan.sample import EXPORT_WEIGHTS

    if (path / EXPORT_WEIGHTS).is_file():
        from safetensors.torch import load_file

        config = OmegaConf.to_container(OmegaConf.load(path / "config.yaml"))
        return {"G_ema": load_file(str(path / EXPORT_WEIGHTS))}, config  # type: ignore
    if layout.is_checkpoint_dir(path):
        state = checkpoint.load(path)
    else:
        found = checkpoint.load_latest(path)
        if found is None:
            raise InitFromError(f"init.from={path}: no checkpoint in "
                                f"{checkpoint.checkpoint_dir(path)}, no {EXPORT_WEIGHTS}")
        state = found[1]
    return {k: state[k] for k in ("G", "D", "G_ema") if k in state}, state.get("config")


class InitialWeights:
    """The networks read from init.from, loaded into this run's modules by `load`."""

    def __init__(self, cfg: DictConfig, source: str) -> None:
        self.source = source
        try:
            self.states, config = read_networks(source)
        except layout.InvalidCheckpoint as e:
            raise InitFromError(f"init.from={source}: {e}") from None
        if "G" not in self.states:  # an export holds G_ema only: it starts G too
            self.states["G"] = self.states["G_ema"]
        diff = (checkpoint.model_key_differences(config, OmegaConf.to_container(cfg, resolve=True))
                if config else [])
        self.hint = f" (its config differs: {'; '.join(diff)})" if diff else ""
        if not config and Path(source).is_file():
            from dgan.checkpoint import nvlabs

            self.hint = (" (its generator needs " + " ".join(
                nvlabs.generator_overrides(self.states["G_ema"])) + ")")

    def load(self, nets: dict[str, nn.Module]) -> None:
        """Copy the saved weights into `nets` ("G", "D", "G_ema"); a network the source
        lacks (D of an export) keeps its fresh initialisation."""
        for name, net in nets.items():
            saved = self.states.get(name)
            if saved is None:
                log.warning("init.from=%s has no %s: it starts from scratch", self.source, name)
                continue
            self._check(name, saved, net.state_dict())
            with torch.no_grad():
                net.load_state_dict(saved)

    def _check(self, name: str, saved: dict[str, Any], want: dict[str, torch.Tensor]) -> None:
        problems = [f"{k} {list(saved[k].shape)} there vs {list(t.shape)} here"
                    for k, t in want.items() if k in saved and saved[k].shape != t.shape
                    and not saved[k].numel() == t.numel() == 1]  # 0-dim vs [1] scalars
        problems += [f"{k} missing there" for k in want if k not in saved]
        problems += [f"{k} not in this model" for k in saved if k not in want]
        if problems:
            more = f" (and {len(problems) - SHOWN} more)" if len(problems) > SHOWN else ""
            raise InitFromError(f"init.from={self.source}: its {name} does not fit this "
                                f"config's model: {', '.join(problems[:SHOWN])}{more}{self.hint}")

    def summary(self) -> str:
        nets = "/".join(k for k in ("G", "D", "G_ema") if k in self.states)
        return (f"new run from init.from={self.source} ({nets} weights; step 0, fresh "
                "optimizers and data order)")


def initial_weights(cfg: DictConfig) -> Optional[InitialWeights]:
    """The weights this run starts from (init.from), or None (unset, or resuming)."""
    source = source_of(cfg)
    return InitialWeights(cfg, source) if source is not None else None
