"""Full-reference image quality: PSNR and SSIM per image, as the literature computes them.

Images are float tensors [N, C, H, W] in [-1, 1] (dgan's range), compared in [0, 1].
PSNR = 10 log10(1 / MSE), per image (MSE over channels and pixels), capped at 100 dB for
identical images. SSIM (Wang et al. 2004): Gaussian window 11x11, sigma 1.5, K1 = 0.01,
K2 = 0.03, dynamic range 1, 'valid' filtering (no padding), mean over pixels then channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MAX_PSNR = 100.0


def _unit(x: torch.Tensor) -> torch.Tensor:
    return ((x.float() + 1) / 2).clamp(0, 1)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[N] PSNR in dB between images x and y in [-1, 1]."""
    mse = (_unit(x) - _unit(y)).square().flatten(1).mean(1)
    return torch.where(mse > 0, -10 * torch.log10(mse.clamp_min(1e-30)),
                       torch.full_like(mse, MAX_PSNR)).clamp(max=MAX_PSNR)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-t.square() / (2 * sigma * sigma))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """[N] SSIM between images x and y in [-1, 1] (at least `window` pixels a side)."""
    a, b = _unit(x).double(), _unit(y).double()
    n, c, h, w = a.shape
    if min(h, w) < window:
        raise ValueError(f"SSIM needs images of at least {window}x{window}, got {h}x{w}")
    k = _gaussian_window(window, sigma).double().to(a.device)[None, None].expand(c, 1, -1, -1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, k, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a.square()
    var_b = blur(b * b) - mu_b.square()
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a.square() + mu_b.square() + c1) * (var_a + var_b + c2))
    return s.flatten(2).mean(2).mean(1).float()
