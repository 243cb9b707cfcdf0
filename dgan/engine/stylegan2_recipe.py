"""The StyleGAN2 training step on a backend: phases Gmain, Greg, Dmain, Dreg.

The schedule is data (`StyleGAN2Loss.phases`): Gmain and Dmain every step, path-length
regularisation (Greg) every `loss.pl_interval` steps and lazy R1 (Dreg) every
`loss.r1_interval` steps, each scaled by its interval. Each phase runs inside
`backend.phase(name)`, so the network not being trained is frozen; in G phases D is
called unwrapped (no gradient sync for a frozen D), in D phases G runs without grad.

The global torch RNG (latents, style mixing, noise inputs, augmentation) is reseeded
from (run.seed, rank, step) at the start of every step: a resumed run draws exactly
what the uninterrupted one would have, with no RNG state to carry.

`train.compile`: every phase calls `torch.compile` wrappers of the same networks. Greg and
Dreg differentiate a gradient, which a compiled graph cannot do with autograd, so there the
compiled networks write their inner gradient out as forward ops
(`SynthesisNetwork.forward_and_vjp`, `Discriminator.forward_and_input_grad`) and each phase
is one graph differentiated once. Greg stays eager under fp16 and Dreg with augmentation
(see `compiled_phases`). A wrapper holds the module, not a copy, so parameters, buffers,
optimizers and checkpoints are the eager modules' own. The loss object is the same one; only
the G/D it calls per phase differ. Compiling every phase takes minutes (224 s on an H200 for
StyleGAN2-256), so Inductor's on-disk caches go to `train.compile_cache` (default
`<run.dir>/compile_cache`): a restarted or requeued run finds its graphs and kernels there
(see `use_compile_cache`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from dgan.augment import AdaptiveAugment
from dgan.config import resolve_compile
from dgan.engine.stylegan2_loss import StyleGAN2Loss, lazy_adam_hparams, update_ema

PHASES = {"Gmain": "g_main", "Greg": "g_reg", "Dmain": "d_main", "Dreg": "d_reg"}
# The phases train.compile compiles (all of them; see compiled_phases for the exceptions).
COMPILED_PHASES = ("Gmain", "Dmain", "Greg", "Dreg")
ADA_INTERVAL = 4  # steps between augmentation-probability updates
log = logging.getLogger(__name__)


def build_optimizers(cfg: DictConfig, g: nn.Module, d: nn.Module
                     ) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Adam with the lazy-regularisation correction of lr and betas for each network."""
    o, loss = cfg.optim, cfg.loss
    fused = {"fused": True} if torch.cuda.is_available() else {}
    g_interval = loss.pl_interval if loss.pl_weight > 0 else 0
    d_interval = loss.r1_interval if loss.r1_gamma > 0 else 0
    lr_g, betas_g = lazy_adam_hparams(o.lr_g, (o.beta1, o.beta2), g_interval)
    lr_d, betas_d = lazy_adam_hparams(o.lr_d, (o.beta1, o.beta2), d_interval)
    return (torch.optim.Adam(g.parameters(), lr=lr_g, betas=betas_g, eps=1e-8, **fused),
            torch.optim.Adam(d.parameters(), lr=lr_d, betas=betas_d, eps=1e-8, **fused))


def compiled_phases(cfg: DictConfig) -> tuple[str, ...]:
    """The phases `train.compile` runs through torch.compile. Greg and Dreg compile as
    written-out gradients; not Greg under fp16, whose modulation rescales the weights and
    styles first (that form leaves it out), and not Dreg with augmentation, whose R1
    gradient also runs through the augmentation pipeline (eager autograd)."""
    eager = set()
    if cfg.train.precision == "fp16":
        eager.add("Greg")
    if cfg.loss.augment != "none":
        eager.add("Dreg")
    return tuple(p for p in COMPILED_PHASES if p not in eager)


_CACHE_SET_HERE: str | None = None  # the TORCHINDUCTOR_CACHE_DIR this process set


def use_compile_cache(cfg: DictConfig) -> str:
    """Point Inductor's on-disk caches (compiled FX graphs, AOTAutograd entries, Triton
    kernels under `triton/`) at `train.compile_cache`, null meaning
    `<run.dir>/compile_cache`; returns the directory in use. Torch's default is a node-local
    `/tmp/torchinductor_<user>`, lost when SLURM requeues the job elsewhere; in the run
    directory a restart recompiles little (tiny StyleGAN2 on 2 CPU cores: the first 16 steps
    224 s cold, 30 s with the cache). A `TORCHINDUCTOR_CACHE_DIR` the user exported is kept.
    The entries are keyed by graph, torch version and device, so a stale entry is a miss,
    never a wrong kernel."""
    global _CACHE_SET_HERE
    env = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    ours = {_CACHE_SET_HERE}
    try:  # torch writes its default into the variable on first use: not the user's choice
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
        ours.add(os.path.abspath(default_cache_dir()))
    except ImportError:  # pragma: no cover - older torch
        pass
    if env and os.path.abspath(env) not in ours:
        return env
    path = os.path.abspath(cfg.train.compile_cache
                           or os.path.join(str(cfg.run.dir), "compile_cache"))
    os.makedirs(path, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _CACHE_SET_HERE = path
    return path


class StyleGAN2Recipe:
    def __init__(self, cfg: DictConfig, backend: Any, g_ema: nn.Module, c_dim: int = 0) -> None:
        from dgan import ops

        ops.set_impl(cfg.model.ops)
        self.cfg, self.backend, self.g_ema, self.c_dim = cfg, backend, g_ema, c_dim
        lc = cfg.loss
        self.augment = None
        if lc.augment != "none":
            target = lc.ada_target if lc.augment == "ada" else None
            self.augment = AdaptiveAugment(p=lc.augment_p, target=target).to(backend.device)
        self.loss = StyleGAN2Loss(
            backend.g, backend.d, augment=self.augment, r1_gamma=lc.r1_gamma,
            r1_interval=lc.r1_interval, pl_weight=lc.pl_weight, pl_interval=lc.pl_interval,
            style_mixing_prob=lc.style_mixing, z_dim=cfg.model.z_dim).to(backend.device)
        self.compile = resolve_compile(cfg, backend.device)
        if cfg.train.compile is None:
            log.info("train.compile=null (auto): %s", "torch.compile for all phases on CUDA"
                     if self.compile else "eager (auto compiles on CUDA with the ddp backend)")
        # module -> its torch.compile wrapper (made on first use; never part of any state)
        self.compiled: dict[nn.Module, nn.Module] = {}
        self.compiled_phases = compiled_phases(cfg) if self.compile else ()
        if self.compile:
            log.info("train.compile: compiled graphs and kernels cached in %s",
                     use_compile_cache(cfg))

    def networks(self, phase: str) -> tuple[nn.Module, nn.Module]:
        """(G, D) that `phase` calls: the trained network wrapped by the backend (gradient
        sync), the other one plain; compiled wrappers of those in the compiled phases under
        `train.compile`."""
        b = self.backend
        g, d = (b.g, b.d_module) if phase[0] == "G" else (b.g_module, b.d)
        if phase in self.compiled_phases:
            g, d = self._compiled(g), self._compiled(d)
        return g, d

    def _compiled(self, module: nn.Module) -> nn.Module:
        if module not in self.compiled:
            inner = getattr(module, "module", module)  # the network inside a DDP wrapper
            log.info("train.compile: %s%s runs through torch.compile in %s (first calls compile)",
                     type(inner).__name__, " (DDP)" if inner is not module else "",
                     "/".join(self.compiled_phases))
            # Static shapes: D sees two batch sizes (fakes alone in Gmain, fakes + reals in
            # Dmain); each gets its own specialised graph instead of one dynamic one.
            self.compiled[module] = torch.compile(module, dynamic=False)
        return self.compiled[module]

    def step(self, step: int, real: torch.Tensor, c: torch.Tensor | None
             ) -> dict[str, torch.Tensor]:
        """All phases due at `step` on reals [N, C, R, R] with one-hot labels c [N, c_dim]."""
        b, cfg = self.backend, self.cfg
        key = np.random.SeedSequence([cfg.run.seed, b.rank, step, 17]).generate_state(1)[0]
        torch.manual_seed(int(key))
        n = real.shape[0]
        stats: dict[str, torch.Tensor] = {}
        for phase in self.loss.phases(step):
            net = phase[0]
            with b.phase(net):
                # G phases: G wrapped (its gradients sync), D frozen and unwrapped; D phases:
                # D wrapped, G only generates (no grad) unwrapped. Plain attributes, so the
                # networks never become part of the loss's state_dict.
                g, d = self.networks(phase)
                object.__setattr__(self.loss, "G", g)
                object.__setattr__(self.loss, "D", d)
                with b.autocast():
                    arg = n if net == "G" else real
                    value, phase_stats = getattr(self.loss, PHASES[phase])(arg, c)
                b.backward(value, net)
                b.step(net)
            stats.update(phase_stats)
        global_batch = n * b.world_size
        if not b.skipped:  # a phase with a non-finite gradient skips G_ema's update too
            update_ema(self.g_ema, b.g_module, (step + 1) * global_batch, global_batch,
                       cfg.train.ema_kimg, cfg.train.ema_rampup)
        # ADA waits for a step without skipped phases: the trainer puts back the statistics
        # of a skipped one
        if (self.augment is not None and self.augment.target is not None
                and step % ADA_INTERVAL == 0 and not b.skipped):
            self.augment.update(all_reduce=lambda t: b.all_reduce(t) * b.world_size)
            stats["augment/p"] = torch.tensor(float(self.augment.p))
        out = {"loss/G": stats.pop("G/loss"), "loss/D": stats.pop("D/loss"),
               "D/real": torch.sigmoid(stats.pop("D/real_score").float()),
               "D/fake": torch.sigmoid(stats.pop("D/fake_score").float())}
        stats.pop("G/fake_score", None)
        out.update(stats)
        return out

    def state_dict(self) -> dict[str, Any]:
        state = {"loss": self.loss.state_dict()}
        if self.augment is not None:
            state["augment"] = self.augment.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss.load_state_dict(state["loss"])
        if self.augment is not None and "augment" in state:
            self.augment.load_state_dict(state["augment"])
