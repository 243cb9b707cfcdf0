"""`task.name=dcgan`: the non-saturating GAN with optional R1, as two phases.

  D (every step): real x from the stream, z ~ N(0, I); minimise softplus(-D(x)) +
     softplus(D(G(z))) (+ r1_gamma / 2 * ||grad_x D(x)||^2); G is frozen and runs
     without grad.
  G (every step): fresh z; minimise softplus(-D(G(z))); D is frozen (no gradient reaches it).
  G_ema <- EMA of G with decay min(train.ema_beta, (1 + step) / (10 + step)).
Latents and fake labels come from generators seeded by (run.seed, rank, step, phase):
phase 0 for D's latents, 1 for G's, 2 for the fake labels. Works with any
`train.grad_accum` (the loop splits every batch tensor into micro-batches).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from dgan.engine import ema, losses
from dgan.tasks import register
from dgan.tasks.base import Batch, Phase
from dgan.tasks.noise import NoiseTask


@register
class DCGAN(NoiseTask):
    name = "dcgan"
    models = ("dcgan",)
    own_keys: ClassVar[tuple[str, ...]] = ("model.g_width", "model.d_width", "train.ema_beta")

    def phases(self) -> list[Phase]:
        return [Phase("D", "D", 1, self.d_phase), Phase("G", "G", 1, self.g_phase)]

    def draw(self, step: int, batch: Batch) -> None:
        batch.setdefault("z_D", self.latents(step, 0))
        batch.setdefault("z_G", self.latents(step, 1))
        batch.setdefault("c_fake", self.fake_labels(step, 2))

    def ema_beta(self, step: int, global_batch: int) -> float:
        return ema.ramped_beta(self.cfg.train.ema_beta, step)

    def d_phase(self, mb: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b = self.backend
        real, c_real, c_fake = mb["image"], mb["label"], mb["c_fake"]
        assert real is not None
        gamma = self.cfg.loss.r1_gamma
        n = real.shape[0]
        with torch.no_grad(), b.autocast():
            fake = b.nets["G"](mb["z_D"], c_fake)
        x = torch.cat([real, fake.to(real.dtype)])
        c = torch.cat([c_real, c_fake]) if c_fake is not None else None
        if gamma > 0:
            x.requires_grad_(True)
        with b.autocast():
            logits = b.wrapped["D"](x, c)
        loss_d = losses.d_loss(logits[:n], logits[n:])
        r1 = losses.r1_penalty(logits[:n], x) if gamma > 0 else torch.zeros((), device=x.device)
        if gamma > 0:
            # x[n:] carries fake images, whose gradient is not penalised: r1_penalty
            # differentiates the real half's logits only, and fakes do not influence
            # those (D has no cross-sample layers).
            loss_d = loss_d + gamma / 2 * r1
        logits = logits.detach().float()
        return loss_d, {"loss/D": loss_d.detach(), "loss/r1": r1.detach().float(),
                        "D/real": torch.sigmoid(logits[:n]).mean(),
                        "D/fake": torch.sigmoid(logits[n:]).mean()}

    def g_phase(self, mb: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b = self.backend
        with b.autocast():
            logits_fake = b.nets["D"](b.wrapped["G"](mb["z_G"], mb["c_fake"]), mb["c_fake"])
        loss_g = losses.g_loss(logits_fake)
        return loss_g, {"loss/G": loss_g.detach()}
