"""`task.name=sr`: super-resolution / image enhancement, ESRGAN-class (Wang et al. 2018;
Real-ESRGAN, Wang et al. 2021). model.name=esrgan (its task when task.name is null).

Data: single-image HR shards (the stream's "image", [-1, 1] at data.resolution). Each step,
per sample, a random sr.patch x sr.patch window of the HR image (its corner drawn from the
sample's own generator, seeded by (run.seed, step, CROP_PHASE, the sample's index in the
step's global batch)), and the LR input G learns from: `_degrade` of that crop
(sr.degradation: realistic, Real-ESRGAN's degradations of each crop alone, drawn from its
own generator of (run.seed, step, DEGRADE_PHASE, its global index); or bicubic, an
antialiased bicubic downscale by sr.scale quantised to 8-bit levels, no draws). The global
index is dgan.engine.seeding.sample_seed's (rank x batch_size x grad_accum + the row in the
rank's batch, as pix2pix's dropout), so a sample's crop and LR input are the same whatever
rank and micro-batch it lands in: 2 ranks see what 1 rank with the doubled batch sees, and
a resumed run what the uninterrupted one saw, with no RNG state to save. (With
loss.gan=vanilla, the default, 2 ranks then train as 1 rank with the doubled batch;
relativistic's means over the micro-batch differ with the split.) Networks (dgan.models.esrgan),
one optimizer group each (Adam): "G" an RRDB generator (LR -> HR), "D" a U-Net
discriminator with spectral norm (a realness logit per pixel). "G_ema": the EMA of G
(decay train.ema_beta, ramped up over the first steps as dcgan's), which samples and
evaluations use.

Two stages in one run, a function of the step only (a resume on either side of the
boundary, or exactly at it, continues exactly):
  steps < sr.pretrain_steps (PSNR-oriented pretraining): one phase, G, minimising
     loss.pixel_weight x |G(LR) - HR|_1. D's phase does not run: D's weights, buffers and
     optimizer state are untouched (its Adam state stays empty until its first step).
  steps >= sr.pretrain_steps (GAN stage): G first, then D, as ESRGAN / Real-ESRGAN:
     G: pixel_weight x L1 + loss.perceptual_weight x VGG19 perceptual L1 (dgan.models.vgg)
        + loss.gan_weight x adversarial; D frozen.
     D: on HR (real) and the fakes of G's phase (G before its update, detached).
  loss.gan: vanilla (default; Real-ESRGAN with its U-Net D): per-pixel non-saturating BCE,
     D: softplus(-D(HR)) + softplus(D(SR)), G: softplus(-D(SR)), means over pixels.
     relativistic (ESRGAN's relativistic average GAN): with C = D's logits and E the mean
     over the micro-batch's pixels, D: (BCE(C(HR) - E C(SR), 1) + BCE(C(SR) - E C(HR), 0)) / 2,
     G: the same with the labels swapped (C(HR) detached).
The learning rate schedule (optim.lr_decay_from) is a function of the global step for
both groups: D's first step in the GAN stage uses the step's lr.
With train.grad_accum > 1 each micro-batch's fakes pass from G's phase to D's phase in
order. Evaluation (dgan.metrics.sr): PSNR / SSIM on Y of G_ema's outputs and of bicubic
upscaling, border sr.scale pixels. The sample grid: LR (nearest) | bicubic | G_ema(LR) | HR
of the first crops the run saw (saved with the task's state).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dgan.engine import ema, losses
from dgan.engine.seeding import sample_generator, step_generator
from dgan.tasks import register
from dgan.tasks.base import Batch, KeepsGrid, Phase, Task, eval_mode

GRID_SAMPLES = 8  # crops in the sample grid (fewer when log.grid is smaller)
# dgan.engine.seeding phases (per sample of the global batch: sample_seed)
CROP_PHASE = 30  # the HR crops' corners
DEGRADE_PHASE = 31  # the degradation's own draws (none for bicubic)
EVAL_STEP = 2**31 - 1  # the `step` the evaluation's degradations are keyed by (step_seed)


def stage(step: int, pretrain_steps: int) -> str:
    """"pretrain" (G alone, pixel loss) before sr.pretrain_steps, then "gan"."""
    return "pretrain" if step < pretrain_steps else "gan"


def random_crops(images: torch.Tensor, patch: int, gens: Sequence[torch.Generator]
                 ) -> torch.Tensor:
    """One patch x patch window per image, its corner uniform over the image: image i's top
    then left drawn from its own CPU generator gens[i]."""
    n, _, h, w = images.shape
    if patch > min(h, w):
        raise ValueError(f"sr.patch {patch} is larger than the images ({h}x{w})")
    if len(gens) != n:
        raise ValueError(f"random_crops: {len(gens)} generators for {n} images")
    crops = []
    for img, gen in zip(images, gens):
        t = int(torch.randint(h - patch + 1, (1,), generator=gen))
        l = int(torch.randint(w - patch + 1, (1,), generator=gen))
        crops.append(img[:, t:t + patch, l:l + patch])
    return torch.stack(crops)


def bicubic_downscale(hr01: torch.Tensor, scale: int) -> torch.Tensor:
    """[N, C, H, W] in [0, 1] -> [N, C, H / scale, W / scale]: antialiased bicubic, clamped
    and rounded to 8-bit levels (what an LR image file holds)."""
    h, w = hr01.shape[-2:]
    lr = hr01.float()
    if scale != 1:
        lr = F.interpolate(lr, size=(h // scale, w // scale), mode="bicubic",
                           align_corners=False, antialias=True)
    return lr.clamp(0, 1).mul(255).round().div(255)


def prime_adam_state(opt: torch.optim.Optimizer) -> None:
    """Give every parameter of Adam `opt` without state the state a fresh Adam starts from
    (step 0, zero moments): its first real step is then the same as a fresh optimizer's,
    while a checkpoint writer (torch.distributed.checkpoint initialises an optimizer with
    no state by a zero-lr step, step 1) leaves it alone. So D's optimizer, idle during
    pretraining, steps the same whether or not a checkpoint was written before its first
    step."""
    for group in opt.param_groups:
        for p in group["params"]:
            if opt.state.get(p):
                continue
            state = {"step": torch.tensor(0.0),
                     "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                     "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
            if group.get("amsgrad"):
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            opt.state[p] = state


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


@register
class SR(KeepsGrid, Task):
    name = "sr"
    models = ("esrgan",)
    data_keys: ClassVar[tuple[str, ...]] = ("image",)
    emas: ClassVar[dict[str, str]] = {"G_ema": "G"}
    own_keys: ClassVar[tuple[str, ...]] = (
        "model.g_width", "model.d_width", "model.g_blocks", "model.g_growth", "train.ema_beta",
        "sr.scale", "sr.patch", "sr.pretrain_steps", "sr.degradation", "sr.degrade",
        "loss.pixel_weight", "loss.perceptual_weight", "loss.perceptual_weights",
        "loss.perceptual_sha256", "loss.perceptual_layers", "loss.gan", "loss.gan_weight")
    ignored_keys: ClassVar[tuple[str, ...]] = ("model.z_dim", "loss.r1_gamma")
    metrics: ClassVar[tuple[str, ...]] = ("psnr_y", "ssim_y", "fd", "kid")
    default_metrics: ClassVar[tuple[str, ...]] = ("psnr_y", "ssim_y")
    takes_labels = False

    def __init__(self, cfg: Any, c_dim: int = 0) -> None:
        super().__init__(cfg, c_dim)
        self.scale = int(cfg.sr.scale)
        self.grid: dict[str, torch.Tensor] = {}  # "hr", "lr": the grid's crops (CPU)
        self.perceptual: Any = None  # dgan.models.vgg.PerceptualLoss, built in bind
        self._step = 0
        self._fakes: list[torch.Tensor] = []  # G's phase -> D's phase, per micro-batch

    @classmethod
    def validate_config(cls, cfg: DictConfig, defaults: DictConfig,
                        others: dict[str, tuple[str, ...]]) -> list[str]:
        problems = super().validate_config(cfg, defaults, others)
        s, lw = cfg.sr, cfg.loss
        if s.patch % s.scale:
            problems.append(f"bad value for 'sr.patch': {s.patch}; expected a multiple of "
                            f"sr.scale={s.scale}")
        if s.patch < 8 or s.patch > cfg.data.resolution:
            problems.append(f"bad value for 'sr.patch': {s.patch}; expected 8 .. "
                            f"data.resolution={cfg.data.resolution} (the HR crop's side)")
        if lw.perceptual_weight > 0 and not lw.perceptual_weights:
            problems.append(f"loss.perceptual_weight={lw.perceptual_weight} needs VGG19 "
                            "weights: point loss.perceptual_weights at torchvision's "
                            "vgg19-dcbb9e9d.pth (or a .safetensors of it with "
                            "loss.perceptual_sha256), or set loss.perceptual_weight=0")
        sha = lw.perceptual_sha256
        if sha is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", str(sha).strip()):
            problems.append(f"bad value for 'loss.perceptual_sha256': {sha!r}; expected 64 hex "
                            "digits (quote it in YAML), or null for torchvision's file")
        try:
            from dgan.models.vgg import parse_layers

            parse_layers(lw.perceptual_layers)
        except ValueError as e:
            problems.append(f"bad value for 'loss.perceptual_layers': {e}")
        if s.degradation == "realistic":
            try:
                OmegaConf.to_object(s.degrade).validate("sr.degrade.")
            except ValueError as e:
                problems.append(f"bad value: {e}")
        elif s.degrade != defaults.sr.degrade:
            problems.append(f"'sr.degrade' does nothing with sr.degradation={s.degradation}; "
                            "set sr.degradation=realistic or remove it")
        if s.pretrain_steps > 0 and lw.pixel_weight <= 0:
            problems.append(f"sr.pretrain_steps={s.pretrain_steps} trains G on the pixel loss "
                            "alone: set loss.pixel_weight > 0 (or sr.pretrain_steps=0)")
        return problems

    # -- networks -------------------------------------------------------------------------
    def network_names(self) -> tuple[str, ...]:
        return ("G", "D")

    def build_networks(self) -> dict[str, nn.Module]:
        from dgan.models.esrgan import RRDBGenerator, UNetDiscriminator

        m, ch = self.cfg.model, self.cfg.data.channels
        return {"G": RRDBGenerator(ch, ch, self.scale, width=m.g_width, blocks=m.g_blocks,
                                   growth=m.g_growth),
                "D": UNetDiscriminator(ch, width=m.d_width)}

    def build_optimizers(self, nets: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        self._optimizers = super().build_optimizers(nets)
        return self._optimizers

    def bind(self, backend: Any, ema_nets: dict[str, nn.Module]) -> None:
        super().bind(backend, ema_nets)
        self.perceptual = self.build_perceptual(self.cfg, backend.device)
        if getattr(self, "_optimizers", None):  # on the device now
            prime_adam_state(self._optimizers["D"])

    @staticmethod
    def build_perceptual(cfg: DictConfig, device: Any = "cpu") -> Any:
        """The perceptual loss (None when loss.perceptual_weight is 0); the weights file's
        problems are a ConfigError of one line (before training starts)."""
        lw = cfg.loss
        if lw.perceptual_weight <= 0:
            return None
        from dgan.config import ConfigError
        from dgan.models.vgg import PerceptualLoss, PerceptualWeightsError

        try:
            return PerceptualLoss(str(lw.perceptual_weights), str(lw.perceptual_layers),
                                  lw.perceptual_sha256).to(device)
        except PerceptualWeightsError as e:
            raise ConfigError(str(e)) from None

    def phases(self) -> list[Phase]:
        if stage(self._step, self.cfg.sr.pretrain_steps) == "pretrain":
            return [Phase("G", "G", 1, self.g_phase)]
        return [Phase("G", "G", 1, self.g_phase), Phase("D", "D", 1, self.d_phase)]

    def ema_beta(self, step: int, global_batch: int) -> float:
        return ema.ramped_beta(self.cfg.train.ema_beta, step)

    def begin_step(self, step: int) -> None:
        self._step = step
        self._fakes = []

    # -- data -----------------------------------------------------------------------------
    def first_index(self) -> int:
        """The index in the step's global batch of row 0 of this rank's batch
        (dgan.engine.seeding.sample_seed: rank x train.batch_size x train.grad_accum)."""
        t = self.cfg.train
        return self.backend.rank * t.batch_size * t.grad_accum

    def _degrade(self, hr01: torch.Tensor, step: int, first: int | None) -> torch.Tensor:
        """HR crops [N, C, P, P] in [0, 1] -> their LR inputs [N, C, P / scale, P / scale] in
        [0, 1]. The one place the degradation is chosen (sr.degradation). Draws, for
        degradations that make any: in training (`first`, the global index of row 0), each
        crop degraded alone from its own generator of (run.seed, step, DEGRADE_PHASE,
        first + row); for the evaluation (`first` None), the whole batch from the generator
        of (run.seed, rank 0, step, DEGRADE_PHASE)."""
        kind = self.cfg.sr.degradation
        if kind == "bicubic":
            return bicubic_downscale(hr01, self.scale)
        if kind == "realistic":
            from dgan.data.degrade import DegradeConfig, degrade

            cfg = DegradeConfig(**OmegaConf.to_container(self.cfg.sr.degrade, resolve=True))
            seed = self.cfg.run.seed
            if first is None:
                return degrade(hr01, self.scale, cfg,
                               step_generator(seed, 0, step, DEGRADE_PHASE))
            if len(hr01) == 0:
                return degrade(hr01, self.scale, cfg, torch.Generator())
            return torch.cat([
                degrade(hr01[i:i + 1], self.scale, cfg,
                        sample_generator(seed, step, DEGRADE_PHASE, first + i))
                for i in range(len(hr01))])
        raise ValueError(f"sr.degradation {kind!r}: expected bicubic or realistic")

    def degrade_eval(self, hr: torch.Tensor) -> torch.Tensor:
        """HR in [-1, 1] -> LR in [-1, 1] for evaluation (step EVAL_STEP, rank 0's generator
        for each whole batch: the same inputs in every evaluation and on every rank)."""
        return self._degrade((hr.float() + 1) / 2, EVAL_STEP, None) * 2 - 1

    def draw(self, step: int, batch: Batch) -> None:
        first = self.first_index()
        if "hr" not in batch:
            images = batch["image"]
            assert images is not None
            gens = [sample_generator(self.cfg.run.seed, step, CROP_PHASE, first + i)
                    for i in range(len(images))]
            batch["hr"] = random_crops(images, int(self.cfg.sr.patch), gens)
        hr = batch["hr"]
        assert hr is not None
        if "lr" not in batch:
            batch["lr"] = self._degrade((hr.float() + 1) / 2, step, first) * 2 - 1
        want = min(GRID_SAMPLES, self.cfg.log.grid)
        have = len(self.grid["hr"]) if self.grid else 0
        if have < want:  # the first crops this rank sees, kept for the whole run
            lr = batch["lr"]
            assert lr is not None
            take = {"hr": hr[:want - have].detach().float().cpu(),
                    "lr": lr[:want - have].detach().float().cpu()}
            self.grid = take if not self.grid else {
                k: torch.cat([self.grid[k], take[k]]) for k in ("hr", "lr")}

    # -- the phases -----------------------------------------------------------------------
    def g_phase(self, mb: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b, lw = self.backend, self.cfg.loss
        lr, hr = mb["lr"], mb["hr"]
        assert lr is not None and hr is not None
        with b.autocast():
            fake = b.wrapped["G"](lr)
        pixel = F.l1_loss(fake.float(), hr.float())
        loss = lw.pixel_weight * pixel
        stats = {"loss/G_pixel": pixel.detach()}
        if stage(self._step, self.cfg.sr.pretrain_steps) == "gan":
            if self.perceptual is not None:
                with b.autocast():
                    perc = self.perceptual(fake, hr.to(fake.dtype))
                loss = loss + lw.perceptual_weight * perc
                stats["loss/G_perceptual"] = perc.detach()
            with b.autocast():
                if lw.gan == "relativistic":
                    logits = b.nets["D"](torch.cat([hr.to(fake.dtype), fake])).float()
                    real, fk = logits[:len(hr)].detach(), logits[len(hr):]
                    adv = 0.5 * (_bce(real - fk.mean(), 0.0) + _bce(fk - real.mean(), 1.0))
                else:
                    adv = losses.g_loss(b.nets["D"](fake))
            loss = loss + lw.gan_weight * adv
            stats["loss/G_adv"] = adv.detach()
            self._fakes.append(fake.detach())
        return loss, {"loss/G": loss.detach(), **stats}

    def d_phase(self, mb: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b = self.backend
        hr = mb["hr"]
        assert hr is not None
        fake = self._fakes.pop(0)
        n = hr.shape[0]
        with b.autocast():
            logits = b.wrapped["D"](torch.cat([hr, fake.to(hr.dtype)])).float()
        real, fk = logits[:n], logits[n:]
        if self.cfg.loss.gan == "relativistic":
            loss = 0.5 * (_bce(real - fk.mean(), 1.0) + _bce(fk - real.mean(), 0.0))
        else:
            loss = losses.d_loss(real, fk)
        real, fk = real.detach(), fk.detach()
        return loss, {"loss/D": loss.detach(), "D/real": torch.sigmoid(real).mean(),
                      "D/fake": torch.sigmoid(fk).mean()}

    def end_step(self, step: int, stats: dict[str, torch.Tensor], skipped: bool
                 ) -> dict[str, torch.Tensor]:
        self._fakes = []
        return stats

    # -- state, grid, evaluation ----------------------------------------------------------
    @torch.no_grad()
    def sample_grid(self) -> torch.Tensor:
        """[n, C, P, 4P]: LR (nearest-upscaled) | bicubic | G_ema(LR) | HR of the grid's
        crops."""
        from dgan.metrics.sr import bicubic_up

        g = self.ema_nets["G_ema"]
        with eval_mode(g):
            lr = self.grid["lr"].to(self.backend.device)
            out = g(lr).float().clamp(-1, 1)
        nearest = F.interpolate(lr, scale_factor=self.scale, mode="nearest")
        return torch.cat([nearest, bicubic_up(lr, self.scale), out,
                          self.grid["hr"].to(out.device)], dim=3)

    def evaluate(self, source: Any) -> dict[str, float]:
        from dgan.metrics.sr import evaluate_sr

        return evaluate_sr(self.cfg, self.ema_nets["G_ema"], source, self.backend.device,
                           self.degrade_eval, self.eval_metrics())
