"""`task.name=stylegan2`: phases Gmain, Greg, Dmain, Dreg (dgan.tasks.stylegan2_loss).

The schedule is data: Gmain and Dmain every step, path-length regularisation (Greg) every
`loss.pl_interval` steps and lazy R1 (Dreg) every `loss.r1_interval` steps, each scaled by
its interval (`Phase.interval`). Each phase runs inside `backend.phase(group)`, so the
network not being trained is frozen; in G phases D is called unwrapped (no gradient sync
for a frozen D), in D phases G runs without grad. G_ema's decay is a half-life of
`train.ema_kimg` thousand images; ADA (`loss.augment=ada`) updates its p every 4 steps.

The global torch RNG (latents, style mixing, noise inputs, augmentation) is reseeded
from (run.seed, rank, step, 17) at the start of every step: a resumed run draws exactly
what the uninterrupted one would have, with no RNG state to carry. `train.grad_accum` is
refused (each phase draws its own batch of fakes from that RNG).

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
from typing import Any, ClassVar

import torch
from omegaconf import DictConfig
from torch import nn

from dgan.augment import AdaptiveAugment
from dgan.config import resolve_compile
from dgan.engine import ema
from dgan.engine.seeding import seed_global
from dgan.tasks import register
from dgan.tasks.base import Batch, Phase
from dgan.tasks.noise import NoiseTask
from dgan.tasks.stylegan2_loss import StyleGAN2Loss, lazy_adam_hparams

PHASES = {"Gmain": "g_main", "Greg": "g_reg", "Dmain": "d_main", "Dreg": "d_reg"}
# The phases train.compile compiles (all of them; see compiled_phases for the exceptions).
COMPILED_PHASES = ("Gmain", "Dmain", "Greg", "Dreg")
ADA_INTERVAL = 4  # steps between augmentation-probability updates
log = logging.getLogger(__name__)


def build_optimizers(cfg: DictConfig, g: nn.Module, d: nn.Module
                     ) -> dict[str, torch.optim.Optimizer]:
    """Adam with the lazy-regularisation correction of lr and betas for each network."""
    o, loss = cfg.optim, cfg.loss
    fused = {"fused": True} if torch.cuda.is_available() else {}
    g_interval = loss.pl_interval if loss.pl_weight > 0 else 0
    d_interval = loss.r1_interval if loss.r1_gamma > 0 else 0
    lr_g, betas_g = lazy_adam_hparams(o.lr_g, (o.beta1, o.beta2), g_interval)
    lr_d, betas_d = lazy_adam_hparams(o.lr_d, (o.beta1, o.beta2), d_interval)
    return {"G": torch.optim.Adam(g.parameters(), lr=lr_g, betas=betas_g, eps=1e-8, **fused),
            "D": torch.optim.Adam(d.parameters(), lr=lr_d, betas=betas_d, eps=1e-8, **fused)}


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


RNG_PHASE = 17  # the seeding key's phase for the global RNG of a whole step


@register
class StyleGAN2(NoiseTask):
    name = "stylegan2"
    models = ("stylegan2",)
    own_keys: ClassVar[tuple[str, ...]] = (
        "model.w_dim", "model.channel_base", "model.channel_max", "model.mapping_layers",
        "model.ops", "model.channels_last", "loss.r1_interval", "loss.pl_weight",
        "loss.pl_interval", "loss.style_mixing", "loss.augment", "loss.augment_p",
        "loss.ada_target", "train.ema_kimg", "train.ema_rampup", "train.compile_cache")
    supports_grad_accum = False
    supports_compile = True

    def build_optimizers(self, nets: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        return build_optimizers(self.cfg, nets["G"], nets["D"])

    def bind(self, backend: Any, ema_nets: dict[str, nn.Module]) -> None:
        from dgan import ops

        super().bind(backend, ema_nets)
        cfg = self.cfg
        ops.set_impl(cfg.model.ops)
        lc = cfg.loss
        self.augment = None
        if lc.augment != "none":
            target = lc.ada_target if lc.augment == "ada" else None
            self.augment = AdaptiveAugment(p=lc.augment_p, target=target).to(backend.device)
        self.loss = StyleGAN2Loss(
            backend.wrapped["G"], backend.wrapped["D"], augment=self.augment,
            r1_gamma=lc.r1_gamma, r1_interval=lc.r1_interval, pl_weight=lc.pl_weight,
            pl_interval=lc.pl_interval, style_mixing_prob=lc.style_mixing,
            z_dim=cfg.model.z_dim).to(backend.device)
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

    def phases(self) -> list[Phase]:
        lc = self.loss
        out = [Phase("Gmain", "G", 1, self._phase_fn("Gmain"))]
        if lc.pl_weight > 0 and lc.pl_interval > 0:
            out.append(Phase("Greg", "G", lc.pl_interval, self._phase_fn("Greg")))
        out.append(Phase("Dmain", "D", 1, self._phase_fn("Dmain")))
        if lc.r1_gamma > 0 and lc.r1_interval > 0:
            out.append(Phase("Dreg", "D", lc.r1_interval, self._phase_fn("Dreg")))
        return out

    def networks(self, phase: str) -> tuple[nn.Module, nn.Module]:
        """(G, D) that `phase` calls: the trained network wrapped by the backend (gradient
        sync), the other one plain; compiled wrappers of those in the compiled phases under
        `train.compile`."""
        b = self.backend
        if phase[0] == "G":
            g, d = b.wrapped["G"], b.nets["D"]
        else:
            g, d = b.nets["G"], b.wrapped["D"]
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

    def _phase_fn(self, phase: str):  # -> PhaseFn
        method = getattr(self.loss, PHASES[phase])

        def run(mb: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            real = mb["image"]
            assert real is not None
            # Plain attributes, so the networks never become part of the loss's state_dict.
            g, d = self.networks(phase)
            object.__setattr__(self.loss, "G", g)
            object.__setattr__(self.loss, "D", d)
            with self.backend.autocast():
                return method(real.shape[0] if phase[0] == "G" else real, mb["label"])
        return run

    def begin_step(self, step: int) -> None:
        seed_global(self.cfg.run.seed, self.backend.rank, step, RNG_PHASE)

    def ema_beta(self, step: int, global_batch: int) -> float:
        t = self.cfg.train
        return ema.halflife_beta((step + 1) * global_batch, global_batch, t.ema_kimg,
                                 t.ema_rampup)

    def end_step(self, step: int, stats: dict[str, torch.Tensor], skipped: bool
                 ) -> dict[str, torch.Tensor]:
        b = self.backend
        # ADA waits for a step without skipped phases: the trainer puts back the statistics
        # of a skipped one
        if (self.augment is not None and self.augment.target is not None
                and step % ADA_INTERVAL == 0 and not skipped):
            self.augment.update(all_reduce=lambda t: b.all_reduce(t) * b.world_size)
            stats["augment/p"] = torch.tensor(float(self.augment.p))
        out = {"loss/G": stats.pop("G/loss"), "loss/D": stats.pop("D/loss"),
               "D/real": torch.sigmoid(stats.pop("D/real_score").float()),
               "D/fake": torch.sigmoid(stats.pop("D/fake_score").float())}
        stats.pop("G/fake_score", None)
        out.update(stats)
        return out

    def stateful_modules(self) -> list[nn.Module]:
        return [self.loss] + ([self.augment] if self.augment is not None else [])

    def state_dict(self) -> dict[str, Any]:
        state = {"loss": self.loss.state_dict()}
        if self.augment is not None:
            state["augment"] = self.augment.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss.load_state_dict(state["loss"])
        if self.augment is not None and "augment" in state:
            self.augment.load_state_dict(state["augment"])
