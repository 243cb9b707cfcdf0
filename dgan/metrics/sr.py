"""Super-resolution metrics as the SR literature reports them: PSNR and SSIM on the Y channel.

Images in [-1, 1] (dgan's range) are first rounded to 8-bit levels (as saved images would
be), then converted to ITU-R BT.601 luma of [0, 255] RGB: Y = 16 + (65.481 R + 128.553 G +
24.966 B) / 255, in [16, 235] (MATLAB's rgb2ycbcr, not rounded); a grey image is read as
R = G = B, Y = 16 + 219 g / 255. `border` pixels are cropped on every side (the scale
factor, by convention). PSNR = 10 log10(255^2 / MSE) per image, capped at 100 dB (identical
images give the cap, dgan.metrics.quality.MAX_PSNR); SSIM per image with the Gaussian
11x11 window, sigma 1.5, K1 = 0.01, K2 = 0.03 at dynamic range 255
(dgan.metrics.quality.ssim on Y / 255).

`evaluate_sr`: over up to `n` images of the shards (one pass, every image once, split over
the ranks), each whole image (center-cropped to a multiple of the scale) degraded by the
task's own degradation to the LR input; keys psnr_y / ssim_y for G's outputs and
psnr_y_bicubic / ssim_y_bicubic for the bicubic upscaling of the same LR inputs (the
baseline a model must beat), "images" how many were measured.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from dgan.metrics.distributed import all_reduce_sum, rank_and_world, split_count
from dgan.metrics.quality import psnr, ssim

SR_METRICS = ("psnr_y", "ssim_y", "fd", "kid")  # what an sr run can be evaluated by
SR_DEFAULT = ("psnr_y", "ssim_y")
EVAL_SEED = 99991  # the order images are read in (one pass: each image once)
EVAL_BATCH = 8
_LUMA = (65.481, 128.553, 24.966)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images rounded to 8-bit levels, as [0, 255] float64."""
    return x.double().add(1).mul(127.5).round().clamp(0, 255)


def luma(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] in [-1, 1] (C 1 or 3) -> [N, 1, H, W] BT.601 Y in [16, 235], float64,
    from the 8-bit levels of x."""
    q = quantize(x) / 255
    if q.shape[1] == 1:
        return 16 + sum(_LUMA) * q
    if q.shape[1] != 3:
        raise ValueError(f"luma: images of 1 or 3 channels, got {q.shape[1]}")
    w = torch.tensor(_LUMA, dtype=q.dtype, device=q.device).view(1, 3, 1, 1)
    return 16 + (q * w).sum(1, keepdim=True)


def _cropped_unit(y: torch.Tensor, border: int) -> torch.Tensor:
    """Y in [0, 255] without `border` pixels a side, mapped to [-1, 1] for
    dgan.metrics.quality (which measures in [0, 1] units: the same ratios as in [0, 255])."""
    if border:
        y = y[..., border:-border, border:-border]
    return y / 127.5 - 1


def psnr_y(x: torch.Tensor, y: torch.Tensor, border: int = 0) -> torch.Tensor:
    """[N] PSNR in dB on the Y channel between images x and y in [-1, 1]."""
    return psnr(_cropped_unit(luma(x), border), _cropped_unit(luma(y), border))


def ssim_y(x: torch.Tensor, y: torch.Tensor, border: int = 0) -> torch.Tensor:
    """[N] SSIM on the Y channel between images x and y in [-1, 1]."""
    return ssim(_cropped_unit(luma(x), border), _cropped_unit(luma(y), border))


def bicubic_up(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """The bicubic upscaling baseline, clamped to [-1, 1]."""
    if scale == 1:
        return lr.float()
    return F.interpolate(lr.float(), scale_factor=scale, mode="bicubic",
                         align_corners=False).clamp(-1, 1)


@torch.no_grad()
def evaluate_sr(cfg: DictConfig, g: nn.Module, source: Any, device: torch.device,
                degrade: Callable[[torch.Tensor], torch.Tensor],
                metrics: Optional[Sequence[str]] = None, n: Optional[int] = None
                ) -> dict[str, float]:
    """{metric key: mean over images} (module doc) for `metrics` among psnr_y, ssim_y
    (default both), fd and kid (G_ema's outputs against the HR images, keys fid / kid with
    the FID Inception's weights, fd_digits / kid_digits on the built-in digits; each also
    for bicubic upscaling, keys ..._bicubic; as dgan.metrics.translation computes them).
    `degrade(hr)`: HR [N, C, H, W] in [-1, 1] -> LR in [-1, 1]. Call on every rank; the
    same dict on every rank."""
    from dgan.data.stream import DataStream
    from dgan.metrics.translation import _Distances, honest_metrics

    chosen = [m for m in (metrics or SR_DEFAULT) if m in SR_METRICS]
    chosen = honest_metrics(cfg, [("path", source)], chosen)
    if not chosen:
        return {}
    scale = int(cfg.sr.scale)
    side = cfg.data.resolution - cfg.data.resolution % scale
    border = scale
    if side - 2 * border < 11 and "ssim_y" in chosen:
        raise ValueError(f"ssim_y needs images of at least {11 + 2 * border} pixels a side "
                         f"after the {border}-pixel border crop, got {side}")
    distances = _Distances(chosen, cfg.data.channels, device)
    limit = n or cfg.eval.n
    rank, world = rank_and_world()
    stream = DataStream(source, batch_size=EVAL_BATCH, resolution=cfg.data.resolution,
                        channels=cfg.data.channels, seed=EVAL_SEED, rank=rank,
                        world_size=world, workers=0, shuffle_buffer=1, xflip=False,
                        device=device, resampled=False, max_member=cfg.data.max_member_mb << 20)
    was = g.training
    g.eval()
    start = time.perf_counter()
    sums = torch.zeros(5, dtype=torch.float64, device=device)  # count, psnr, ssim, bicubic x2
    per_rank = split_count(limit, rank, world)
    try:
        for hr, _ in stream:
            left = per_rank - int(sums[0].item())
            if left <= 0:
                break
            hr = hr[:left]
            top = (hr.shape[-2] - side) // 2
            lft = (hr.shape[-1] - side) // 2
            hr = hr[..., top:top + side, lft:lft + side].float()
            lr = degrade(hr)
            out = g(lr).float().clamp(-1, 1)
            bic = bicubic_up(lr, scale)
            sums[0] += len(hr)
            sums[1] += psnr_y(out, hr, border).double().sum()
            sums[3] += psnr_y(bic, hr, border).double().sum()
            if "ssim_y" in chosen:
                sums[2] += ssim_y(out, hr, border).double().sum()
                sums[4] += ssim_y(bic, hr, border).double().sum()
            distances.add("out", out, hr)
            distances.add("bicubic", bic, None)
    finally:
        stream.close()
        g.train(was)
    all_reduce_sum(sums)
    count = int(sums[0].item())
    if count == 0:
        raise ValueError("no images to evaluate: the shards yielded none")
    values: dict[str, float] = {}
    if "psnr_y" in chosen:
        values.update(psnr_y=sums[1].item() / count, psnr_y_bicubic=sums[3].item() / count)
    if "ssim_y" in chosen:
        values.update(ssim_y=sums[2].item() / count, ssim_y_bicubic=sums[4].item() / count)
    values.update(distances.result([("out", "out", ""), ("bicubic", "out", "_bicubic")]))
    if rank == 0:
        sys.stderr.write(f"dgan: eval: {count} images in {time.perf_counter() - start:.1f} s\n")
    return {**values, "images": float(count)}
