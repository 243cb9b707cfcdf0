"""`task.name=pix2pix`: paired image-to-image translation (Isola et al. 2017).

Each sample of the shards holds two images, "a" and "b" (`dgan data make --paired`);
`task.direction` AtoB learns b from a, BtoA the reverse. Networks: "G", a U-Net from the
input image to the output, and "D", a PatchGAN on (input, output) pairs; one optimizer
group each, Adam. No EMA: G itself is what translates (the paper's G, in eval mode).

  D (every step): fake = G(x) without grad; minimise 0.5 * (softplus(-D(x, y)) +
     softplus(D(x, fake))), averaged over patches (the paper's vanilla GAN loss, halved).
  G (every step): minimise softplus(-D(x, G(x))) + loss.l1_weight * |G(x) - y|_1.
G's dropout masks are a function of the sample's place in the step's global batch: each
sample gets a seed from (run.seed, step, DROPOUT_PHASE, its global index) (`draw`,
dgan.engine.seeding.sample_seed; index = rank x batch_size x grad_accum + its row in the
rank's batch, so micro-batch m of rank r starts at r x B x A + m x B), and G draws that
row's masks from it (dgan.models.pix2pix.SampleDropout). So 2 ranks drop what 1 rank with
the doubled batch drops, D's phase and G's phase of a step use the same masks (the same
fakes, as the paper's one G(x) per step), and a resumed run drops what the uninterrupted
one dropped, with no RNG state to save.
The sample grid shows a fixed set of training pairs (the first ones the run saw, saved
with the task's state) as input | output | target strips.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from dgan.engine import losses
from dgan.engine.seeding import sample_seed
from dgan.tasks import register
from dgan.tasks.base import Batch, KeepsGrid, Phase, Task, eval_mode

GRID_PAIRS = 8  # pairs in the sample grid (fewer when log.grid is smaller)
# dgan.engine.seeding phase of G's dropout masks (per sample of the global batch); 17, the
# step's global torch RNG, was the phase of the dropout of earlier versions
DROPOUT_PHASE = 18


@register
class Pix2Pix(KeepsGrid, Task):
    name = "pix2pix"
    models = ("pix2pix",)
    data_keys: ClassVar[tuple[str, ...]] = ("a", "b")
    own_keys: ClassVar[tuple[str, ...]] = ("model.g_width", "model.d_width", "model.d_layers",
                                           "loss.l1_weight", "task.direction")
    ignored_keys: ClassVar[tuple[str, ...]] = ("model.z_dim", "loss.r1_gamma")
    metrics: ClassVar[tuple[str, ...]] = ("psnr", "ssim", "l1", "digit_class", "fd", "kid")
    default_metrics: ClassVar[tuple[str, ...]] = ("psnr", "ssim", "l1", "digit_class", "fd",
                                                  "kid")
    takes_labels = False

    def __init__(self, cfg: Any, c_dim: int = 0) -> None:
        super().__init__(cfg, c_dim)
        self.source_key, self.target_key = (("a", "b") if cfg.task.direction == "AtoB"
                                            else ("b", "a"))
        self.grid: dict[str, torch.Tensor] = {}  # "x", "y": the grid's pairs (CPU)

    # -- networks -------------------------------------------------------------------------
    def network_names(self) -> tuple[str, ...]:
        return ("G", "D")

    def build_networks(self) -> dict[str, nn.Module]:
        from dgan.models.pix2pix import PatchDiscriminator, UNetGenerator

        m, ch = self.cfg.model, self.cfg.data.channels
        return {"G": UNetGenerator(ch, ch, self.cfg.data.resolution, width=m.g_width),
                "D": PatchDiscriminator(2 * ch, width=m.d_width, layers=m.d_layers)}

    def phases(self) -> list[Phase]:
        return [Phase("D", "D", 1, self.d_phase), Phase("G", "G", 1, self.g_phase)]

    def ema_beta(self, step: int, global_batch: int) -> float:
        return 0.0  # no EMA

    # -- the step -------------------------------------------------------------------------
    def draw(self, step: int, batch: Batch) -> None:
        x, y = batch[self.source_key], batch[self.target_key]
        assert x is not None and y is not None
        batch.setdefault("x", x)
        batch.setdefault("y", y)
        if "dropout_seed" not in batch:  # one per row, by its index in the global batch
            first = self.backend.rank * self.cfg.train.batch_size * self.cfg.train.grad_accum
            batch["dropout_seed"] = torch.tensor(
                [sample_seed(self.cfg.run.seed, step, DROPOUT_PHASE, first + i)
                 for i in range(len(x))], dtype=torch.int64)
        want = min(GRID_PAIRS, self.cfg.log.grid)
        have = len(self.grid["x"]) if self.grid else 0
        if have < want:  # the first pairs this rank sees, kept for the whole run
            take = {"x": x[:want - have].detach().float().cpu(),
                    "y": y[:want - have].detach().float().cpu()}
            self.grid = take if not self.grid else {
                k: torch.cat([self.grid[k], take[k]]) for k in ("x", "y")}

    @staticmethod
    def dropout_seeds(mb: Batch) -> list[int]:
        seeds = mb["dropout_seed"]
        assert seeds is not None
        return seeds.tolist()

    def d_phase(self, mb: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b = self.backend
        x, y = mb["x"], mb["y"]
        assert x is not None and y is not None
        with torch.no_grad(), b.autocast():
            fake = b.nets["G"](x, dropout_seeds=self.dropout_seeds(mb))
        with b.autocast():
            logits = b.wrapped["D"](torch.cat([x, x]), torch.cat([y, fake.to(y.dtype)]))
        n = x.shape[0]
        loss = 0.5 * losses.d_loss(logits[:n], logits[n:])
        logits = logits.detach().float()
        return loss, {"loss/D": loss.detach(), "D/real": torch.sigmoid(logits[:n]).mean(),
                      "D/fake": torch.sigmoid(logits[n:]).mean()}

    def g_phase(self, mb: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b = self.backend
        x, y = mb["x"], mb["y"]
        assert x is not None and y is not None
        with b.autocast():
            fake = b.wrapped["G"](x, dropout_seeds=self.dropout_seeds(mb))
            logits = b.nets["D"](x, fake)
        adv = losses.g_loss(logits)
        l1 = F.l1_loss(fake.float(), y.float())
        loss = adv + self.cfg.loss.l1_weight * l1
        return loss, {"loss/G": loss.detach(), "loss/G_adv": adv.detach(),
                      "loss/G_l1": l1.detach()}

    # -- state, grid, evaluation ----------------------------------------------------------
    @torch.no_grad()
    def sample_grid(self) -> torch.Tensor:
        """[n, C, H, 3W]: input | G(input) | target of the grid's pairs."""
        with eval_mode(self.backend.nets["G"]) as g:
            x = self.grid["x"].to(self.backend.device)
            out = g(x).float()
        return torch.cat([x, out, self.grid["y"].to(out.device)], dim=3)

    def evaluate(self, source: Any) -> dict[str, float]:
        from dgan.metrics.translation import evaluate_translation

        return evaluate_translation(self.cfg, self.backend.nets["G"], source,
                                    self.backend.device, self.source_key, self.target_key,
                                    self.eval_metrics())
