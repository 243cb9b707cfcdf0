"""`task.name=cyclegan`: unpaired image-to-image translation (Zhu et al. 2017).

Two shard sets of single images: data.path is domain A, data.path_b domain B; the trainer
streams each with its own seed and resumable position (`second_source_key`). Networks, one
optimizer group each (Adam): "G" holds G_AB (A -> B) and G_BA, ResNet generators; "D" holds
D_A (judges domain A images) and D_B, PatchGANs on single images
(dgan.models.cyclegan). No EMA.

  G (every step, first): fake_b = G_AB(a), rec_a = G_BA(fake_b), and the B way; minimise
     LSGAN (D_B(fake_b) - 1)^2 + (D_A(fake_a) - 1)^2
     + loss.cycle_weight x (|rec_a - a|_1 + |rec_b - b|_1)
     + loss.cycle_weight x loss.identity_weight x (|G_AB(b) - b|_1 + |G_BA(a) - a|_1).
  D (every step, after G): on the fakes of G's phase (G before its update, as the paper's
     code) passed through a history pool of loss.pool_size per domain, minimise per D
     0.5 x (mean (D(real) - 1)^2 + mean D(pooled fake)^2).
The pool (`ImagePool`) is the paper's: until full it stores and returns each fake; then
each fake is, with probability 1/2, swapped with a random stored one (which D sees
instead). Its draws come from generators seeded by (run.seed, rank, step, phase), never
the global RNG, and the pools are this rank's state in checkpoints (`rank_state_dict`), so
a resumed run continues exactly. A step whose update is skipped (non-finite) leaves the
pools as they were.
The sample grid shows a | G_AB(a) | b | G_BA(b) strips of the first samples the run saw
(saved with the task's state). Evaluation (dgan.metrics.translation): cycle_l1, the mean
|G_BA(G_AB(a)) - a| over data.path and |G_AB(G_BA(b)) - b| over data.path_b; FD/KID of
G_AB(a) against B's images and of G_BA(b) against A's (keys ..._ab, ..._ba); on digits
digit_class_ab / _ba, the share of translations the digit classifier gives the source's
label.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from dgan.engine import losses
from dgan.engine.seeding import step_generator
from dgan.tasks import register
from dgan.tasks.base import Batch, KeepsGrid, Phase, Task, eval_mode

GRID_SAMPLES = 8  # samples in the sample grid (fewer when log.grid is smaller)
POOL_PHASES = {"a": 23, "b": 24}  # dgan.engine.seeding phases of the pools' draws


def pool_query(pool: Optional[torch.Tensor], images: torch.Tensor, size: int,
               gen: torch.Generator) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The paper's image pool as a pure function: (images for D, the pool after).

    `pool`: [k, C, H, W] stored fakes (k <= size) or None; `images`: this step's fakes
    (detached). Each image in turn: while the pool has room it is stored and returned;
    after that, with probability 1/2 a random stored image is returned and replaced by it,
    else it is returned. Every image draws (u, index) from `gen`, full pool or not, so the
    draws do not depend on the pool's state. size 0: no pool, the images themselves."""
    if size <= 0:
        return images, None
    u = torch.rand(len(images), generator=gen).tolist()
    idx = torch.randint(size, (len(images),), generator=gen).tolist()
    stored = list(pool.unbind(0)) if pool is not None else []
    out = []
    for image, ui, ii in zip(images, u, idx):
        if len(stored) < size:
            stored.append(image)
            out.append(image)
        elif ui > 0.5:
            out.append(stored[ii])
            stored[ii] = image
        else:
            out.append(image)
    return torch.stack(out), torch.stack(stored)


@register
class CycleGAN(KeepsGrid, Task):
    name = "cyclegan"
    models = ("cyclegan",)
    data_keys: ClassVar[tuple[str, ...]] = ("image",)  # domain A, from data.path
    second_source_key: ClassVar[Optional[str]] = "image_b"  # domain B, from data.path_b
    own_keys: ClassVar[tuple[str, ...]] = (
        "data.path_b", "model.g_width", "model.d_width", "model.d_layers", "model.g_blocks",
        "loss.cycle_weight", "loss.identity_weight", "loss.pool_size")
    ignored_keys: ClassVar[tuple[str, ...]] = ("model.z_dim", "loss.r1_gamma")
    metrics: ClassVar[tuple[str, ...]] = ("cycle_l1", "digit_class", "fd", "kid")
    default_metrics: ClassVar[tuple[str, ...]] = ("cycle_l1", "digit_class", "fd", "kid")
    takes_labels = False
    # D's phase takes the fakes of G's phase (one batch each): no micro-batches
    supports_grad_accum = False

    def __init__(self, cfg: Any, c_dim: int = 0) -> None:
        super().__init__(cfg, c_dim)
        self.grid: dict[str, torch.Tensor] = {}  # "a", "b": the grid's samples (CPU)
        self.pools: dict[str, Optional[torch.Tensor]] = {"a": None, "b": None}
        self._pending: dict[str, Optional[torch.Tensor]] = {}  # pools after this step
        self._fakes: dict[str, torch.Tensor] = {}  # G's phase -> D's phase
        self._step = 0

    @classmethod
    def validate_config(cls, cfg: DictConfig, defaults: DictConfig,
                        others: dict[str, tuple[str, ...]]) -> list[str]:
        problems = super().validate_config(cfg, defaults, others)
        if cfg.data.path_b is None:
            problems.insert(0, "task.name=cyclegan reads two unpaired shard sets: set "
                               "data.path_b (domain B; data.path is domain A)")
        return problems

    # -- networks -------------------------------------------------------------------------
    def network_names(self) -> tuple[str, ...]:
        return ("G", "D")

    def build_networks(self) -> dict[str, nn.Module]:
        from dgan.models.cyclegan import CycleDiscriminators, CycleGenerators

        m, ch = self.cfg.model, self.cfg.data.channels
        return {"G": CycleGenerators(ch, width=m.g_width, blocks=m.g_blocks),
                "D": CycleDiscriminators(ch, width=m.d_width, layers=m.d_layers)}

    def build_optimizers(self, nets: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        o = self.cfg.optim
        return {"G": torch.optim.Adam(nets["G"].parameters(), lr=o.lr_g, betas=(o.beta1, o.beta2)),
                "D": torch.optim.Adam(nets["D"].parameters(), lr=o.lr_d, betas=(o.beta1, o.beta2))}

    def phases(self) -> list[Phase]:
        return [Phase("G", "G", 1, self.g_phase), Phase("D", "D", 1, self.d_phase)]

    def ema_beta(self, step: int, global_batch: int) -> float:
        return 0.0  # no EMA

    def begin_step(self, step: int) -> None:
        self._step = step
        self._pending, self._fakes = {}, {}

    # -- the step -------------------------------------------------------------------------
    def draw(self, step: int, batch: Batch) -> None:
        a, b = batch["image"], batch[str(self.second_source_key)]
        assert a is not None and b is not None
        batch.setdefault("a", a)
        batch.setdefault("b", b)
        want = min(GRID_SAMPLES, self.cfg.log.grid)
        have = len(self.grid["a"]) if self.grid else 0
        if have < want:  # the first samples this rank sees, kept for the whole run
            take = {"a": a[:want - have].detach().float().cpu(),
                    "b": b[:want - have].detach().float().cpu()}
            self.grid = take if not self.grid else {
                k: torch.cat([self.grid[k], take[k]]) for k in ("a", "b")}

    def g_phase(self, mb: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        bk, lw = self.backend, self.cfg.loss
        a, b = mb["a"], mb["b"]
        assert a is not None and b is not None
        identity = lw.identity_weight > 0
        with bk.autocast():
            out = bk.wrapped["G"](a, b, identity=identity)
            d_a, d_b = bk.nets["D"](out["fake_a"], out["fake_b"])
        adv = losses.lsgan_g_loss(d_b) + losses.lsgan_g_loss(d_a)
        cycle = (F.l1_loss(out["rec_a"].float(), a.float())
                 + F.l1_loss(out["rec_b"].float(), b.float()))
        loss = adv + lw.cycle_weight * cycle
        stats = {"loss/G_adv": adv.detach(), "loss/G_cycle": cycle.detach()}
        if identity:
            idt = (F.l1_loss(out["idt_a"].float(), a.float())
                   + F.l1_loss(out["idt_b"].float(), b.float()))
            loss = loss + lw.cycle_weight * lw.identity_weight * idt
            stats["loss/G_identity"] = idt.detach()
        self._fakes = {"a": out["fake_a"].detach(), "b": out["fake_b"].detach()}
        return loss, {"loss/G": loss.detach(), **stats}

    def d_phase(self, mb: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        bk = self.backend
        real = {"a": mb["a"], "b": mb["b"]}
        pooled = {}
        for key in ("a", "b"):
            gen = step_generator(self.cfg.run.seed, bk.rank, self._step, POOL_PHASES[key])
            fake = self._fakes[key]
            pooled[key], self._pending[key] = pool_query(
                self.pools[key], fake, int(self.cfg.loss.pool_size), gen)
        ra, rb = real["a"], real["b"]
        assert ra is not None and rb is not None
        n = ra.shape[0]
        with bk.autocast():
            d_a, d_b = bk.wrapped["D"](torch.cat([ra, pooled["a"].to(ra.dtype)]),
                                       torch.cat([rb, pooled["b"].to(rb.dtype)]))
        loss_a = losses.lsgan_d_loss(d_a[:n], d_a[n:])
        loss_b = losses.lsgan_d_loss(d_b[:n], d_b[n:])
        loss = loss_a + loss_b
        return loss, {"loss/D": loss.detach(), "loss/D_A": loss_a.detach(),
                      "loss/D_B": loss_b.detach(), "D/real": d_b[:n].detach().float().mean(),
                      "D/fake": d_b[n:].detach().float().mean()}

    def end_step(self, step: int, stats: dict[str, torch.Tensor], skipped: bool
                 ) -> dict[str, torch.Tensor]:
        if not skipped:  # a skipped step's fakes never enter the pools
            self.pools.update(self._pending)
        self._pending, self._fakes = {}, {}
        return stats

    # -- state, grid, evaluation ----------------------------------------------------------
    def rank_state_dict(self) -> dict[str, Any]:
        """This rank's image pools (fakes of its own batches), on the CPU."""
        return {"pools": {k: (v.detach().cpu().clone() if v is not None else None)
                          for k, v in self.pools.items()}}

    def load_rank_state_dict(self, state: dict[str, Any]) -> None:
        device = self.backend.device if self.backend is not None else "cpu"
        saved = state.get("pools") or {}
        self.pools = {k: (saved[k].to(device) if saved.get(k) is not None else None)
                      for k in ("a", "b")}

    @torch.no_grad()
    def sample_grid(self) -> torch.Tensor:
        """[n, C, H, 4W]: a | G_AB(a) | b | G_BA(b) of the grid's samples."""
        with eval_mode(self.backend.nets["G"]) as g:
            a = self.grid["a"].to(self.backend.device)
            b = self.grid["b"].to(self.backend.device)
            fake_b, fake_a = g.AB(a).float(), g.BA(b).float()
        return torch.cat([a, fake_b, b, fake_a], dim=3)

    def evaluate(self, source: Any) -> dict[str, float]:
        from dgan.metrics.translation import evaluate_cycle

        return evaluate_cycle(self.cfg, self.backend.nets["G"], source, self.second_source,
                              self.backend.device, metrics=self.eval_metrics())
