"""The training loop: alternating D and G steps, G_ema, logging, checkpoints, resume.

One iteration (`train.steps` of them):
  D step: real x from the stream, z ~ N(0, I); minimise softplus(-D(x)) + softplus(D(G(z)))
          (+ r1_gamma / 2 * ||grad_x D(x)||^2); G is frozen and runs without grad.
  G step: fresh z; minimise softplus(-D(G(z))); D is frozen (no gradient reaches it).
  G_ema <- EMA of G.
Latents are drawn from generators seeded by (run.seed, rank, step, phase), so the random
stream needs no saved state and a resumed run draws what the uninterrupted one would.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from dgan import checkpoint
from dgan.config import to_yaml
from dgan.data.stream import DataStream
from dgan.engine import losses
from dgan.engine.backend import build_backend
from dgan.engine.ema import make_ema, update_ema
from dgan.logging import RunLogger
from dgan.models import build_models

log = logging.getLogger(__name__)
GRID_SEED = 1234  # fixed latents of the sample grid, the same for every run


class Trainer:
    def __init__(self, cfg: DictConfig, source: Any) -> None:
        self.cfg = cfg
        self.source = source
        self.run_dir = str(cfg.run.dir)
        self.backend = build_backend(cfg.backend.name, cfg.train.precision)
        torch.manual_seed(cfg.run.seed)  # model initialisation: identical on every rank
        g, d = build_models(cfg)
        o = cfg.optim
        opt_g = torch.optim.Adam(g.parameters(), lr=o.lr_g, betas=(o.beta1, o.beta2))
        opt_d = torch.optim.Adam(d.parameters(), lr=o.lr_d, betas=(o.beta1, o.beta2))
        self.backend.prepare(g, d, opt_g, opt_d)
        self.g_ema = make_ema(self.backend.g_module)
        self.opt_g, self.opt_d = opt_g, opt_d
        b = self.backend
        self.stream = DataStream(
            source, batch_size=cfg.train.batch_size, resolution=cfg.data.resolution,
            channels=cfg.data.channels, seed=cfg.run.seed, rank=b.rank, world_size=b.world_size,
            workers=cfg.data.workers, shuffle_buffer=cfg.data.shuffle_buffer,
            xflip=cfg.data.xflip, device=b.device)
        self.step = 0
        self.images_seen = 0
        self.grid_z = torch.randn(cfg.log.grid, cfg.model.z_dim,
                                  generator=torch.Generator().manual_seed(GRID_SEED))

    # -- state --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "G": self.backend.g_module.state_dict(),
            "D": self.backend.d_module.state_dict(),
            "G_ema": self.g_ema.state_dict(),
            "opt_G": self.opt_g.state_dict(),
            "opt_D": self.opt_d.state_dict(),
            "backend": self.backend.state_dict(),
            "step": self.step,
            "images_seen": self.images_seen,
            "data": self.stream.state_dict(),
            "world_size": self.backend.world_size,
            "backend_name": self.backend.name,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        diff = checkpoint.model_key_differences(state["config"],
                                                OmegaConf.to_container(self.cfg, resolve=True))
        if diff:
            raise ValueError("the checkpoint was trained with a different model; refusing to "
                             "load it. Differences: " + "; ".join(diff) +
                             ". Use another run.dir for a new model.")
        self.backend.g_module.load_state_dict(state["G"])
        self.backend.d_module.load_state_dict(state["D"])
        self.g_ema.load_state_dict(state["G_ema"])
        self.opt_g.load_state_dict(state["opt_G"])
        self.opt_d.load_state_dict(state["opt_D"])
        self.backend.load_state_dict(state["backend"])
        self.step = int(state["step"])
        self.images_seen = int(state["images_seen"])
        self.stream.load_state_dict(state["data"])

    def resume(self) -> Optional[str]:
        found = checkpoint.load_latest(self.run_dir)
        if found is None:
            return None
        path, state = found
        self.load_state_dict(state)
        return str(path)

    # -- one iteration ------------------------------------------------------------------
    def _latents(self, phase: int) -> torch.Tensor:
        key = [self.cfg.run.seed, self.backend.rank, self.step, phase]
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))
        z = torch.randn(self.cfg.train.batch_size, self.cfg.model.z_dim, generator=gen)
        return z.to(self.backend.device)

    def train_step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        b = self.backend
        gamma = self.cfg.loss.r1_gamma
        n = real.shape[0]
        with b.phase("D"):
            with torch.no_grad(), b.autocast():
                fake = b.g_module(self._latents(0))
            x = torch.cat([real, fake.to(real.dtype)])
            if gamma > 0:
                x.requires_grad_(True)
            with b.autocast():
                logits = b.d(x)
            loss_d = losses.d_loss(logits[:n], logits[n:])
            r1 = losses.r1_penalty(logits[:n], x)[None] if gamma > 0 else torch.zeros(1)
            if gamma > 0:
                # x[n:] carries fake images, whose gradient is not penalised:
                # r1_penalty differentiates the real half's logits only, and fakes do
                # not influence those (D has no cross-sample layers).
                loss_d = loss_d + gamma / 2 * r1[0]
            b.backward(loss_d, "D")
            b.step("D")
        with b.phase("G"):
            with b.autocast():
                logits_fake = b.d_module(b.g(self._latents(1)))
            loss_g = losses.g_loss(logits_fake)
            b.backward(loss_g, "G")
            b.step("G")
        update_ema(self.g_ema, b.g_module, self.step, self.cfg.train.ema_beta)
        with torch.no_grad():
            return {
                "loss/D": loss_d.detach(), "loss/G": loss_g.detach(),
                "D/real": torch.sigmoid(logits[:n].detach().float()).mean(),
                "D/fake": torch.sigmoid(logits[n:].detach().float()).mean(),
                "loss/r1": r1.detach().float().sum().to(loss_d.device),
            }

    def evaluate(self) -> dict[str, float]:
        """The configured metrics of G_ema (`eval.metrics`, `eval.n` samples), all ranks."""
        from dgan.metrics.run_eval import evaluate_generator

        return evaluate_generator(self.cfg, self.g_ema, self.source, self.backend.device)

    @torch.no_grad()
    def sample_grid(self) -> torch.Tensor:
        return self.g_ema(self.grid_z.to(self.backend.device)).float()

    # -- the run ------------------------------------------------------------------------
    def save(self) -> None:
        if self.backend.is_main:
            checkpoint.save(self.run_dir, self.step, self.state_dict(), self.cfg.checkpoint.keep)
        self.backend.barrier()

    def fit(self) -> None:
        cfg, b = self.cfg, self.backend
        os.makedirs(self.run_dir, exist_ok=True)
        resumed = self.resume()
        if b.is_main:
            with open(os.path.join(self.run_dir, "config.yaml"), "w") as f:
                f.write(to_yaml(cfg))
        logger = RunLogger(self.run_dir, enabled=b.is_main, total_steps=cfg.train.steps,
                           start_step=self.step, progress=cfg.log.progress)
        logger.message(f"dgan: run {self.run_dir}: " + (
            f"resumed from {resumed} at step {self.step}" if resumed else "fresh start") +
            f"; {b.world_size} process(es) on {b.device}, global batch "
            f"{cfg.train.batch_size * b.world_size}, precision {cfg.train.precision}")
        if self.step >= cfg.train.steps:
            logger.message(f"dgan: already at step {self.step} of train.steps={cfg.train.steps}; "
                           "raise train.steps to train longer")
            logger.close()
            return
        sums: dict[str, torch.Tensor] = {}
        count, last_step, last_time = 0, self.step, time.perf_counter()
        try:
            while self.step < cfg.train.steps:
                real, _ = next(self.stream)
                metrics = self.train_step(real)
                self.step += 1
                self.images_seen += cfg.train.batch_size * b.world_size
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0) + v
                count += 1
                logger.progress(1)
                done = self.step == cfg.train.steps
                if self.step % cfg.log.every == 0 or done:
                    now = time.perf_counter()
                    rate = (self.step - last_step) * cfg.train.batch_size * b.world_size / (now - last_time)
                    values = {k: b.all_reduce(v / count).item() for k, v in sums.items()}
                    values.update({"perf/img_per_s": rate, "progress/images_seen": self.images_seen,
                                   "progress/kimg": self.images_seen / 1000})
                    logger.scalars(self.step, values)
                    logger.grid(self.step, self.sample_grid())
                    logger.postfix({"img/s": rate, "D": values["loss/D"], "G": values["loss/G"]})
                    sums, count, last_step, last_time = {}, 0, self.step, time.perf_counter()
                if cfg.eval.every and (self.step % cfg.eval.every == 0 or done):
                    results = self.evaluate()
                    logger.scalars(self.step, {f"metrics/{k}": v for k, v in results.items()})
                    logger.message(f"dgan: step {self.step}: " + ", ".join(
                        f"{k} {v:.4g}" for k, v in results.items() if "/" not in k))
                if self.step % cfg.checkpoint.every == 0 or done:
                    self.save()
        finally:
            self.stream.close()
            logger.close()
        logger.message(f"dgan: finished {self.step} steps ({self.images_seen} images); "
                       f"checkpoints in {checkpoint.checkpoint_dir(self.run_dir)}")
