"""Differentiable augmentation for images entering D, with ADA-style adaptive strength.

Every augmentation is applied per sample with probability ``p``; all of them are built
from elementwise arithmetic and ``gather``, so gradients (and the gradient of a gradient,
for R1) flow through to the input images. Applied to real and generated images alike, it
keeps D from memorising a small data set without leaking the augmentation into G.

Adaptive ``p`` (Karras et al. 2020, "ADA"): the overfitting heuristic
``r_t = E[sign(D(real))]`` is collected by :meth:`AdaptiveAugment.observe`;
:meth:`AdaptiveAugment.update` moves ``p`` by ``sign(r_t - target) * images / speed_img``,
so ``p`` can travel 0 -> 1 in ``speed_kimg`` thousand images.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def _coin(n: int, p: float, device: torch.device) -> torch.Tensor:
    """``[N, 1, 1, 1]`` float mask: 1 with probability ``p``."""
    return (torch.rand(n, 1, 1, 1, device=device) < p).float()


def brightness(x: torch.Tensor, apply: torch.Tensor, strength: float = 0.5) -> torch.Tensor:
    """Add a per-sample offset in ``[-strength/2, strength/2)`` to all channels."""
    return x + (torch.rand_like(apply) - 0.5) * strength * apply


def saturation(x: torch.Tensor, apply: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """Scale the deviation from the per-pixel channel mean by a factor in ``[1-s, 1+s)``."""
    mean = x.mean(dim=1, keepdim=True)
    factor = 1 + (torch.rand_like(apply) * 2 - 1) * strength * apply
    return (x - mean) * factor + mean


def contrast(x: torch.Tensor, apply: torch.Tensor, strength: float = 0.5) -> torch.Tensor:
    """Scale the deviation from the per-image mean by a factor in ``[1-s, 1+s)``."""
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    factor = 1 + (torch.rand_like(apply) * 2 - 1) * strength * apply
    return (x - mean) * factor + mean


def translation(x: torch.Tensor, apply: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by whole pixels (up to ``ratio`` of its size), filling with zeros.

    Implemented as a ``gather`` from a zero-padded copy: unlike ``grid_sample`` it has a
    double backward, which R1 through augmentation needs.
    """
    n, c, h, w = x.shape
    sy, sx = max(int(h * ratio + 0.5), 1), max(int(w * ratio + 0.5), 1)
    shift_y = (torch.randint(-sy, sy + 1, (n, 1, 1), device=x.device) * apply[:, 0].long())
    shift_x = (torch.randint(-sx, sx + 1, (n, 1, 1), device=x.device) * apply[:, 0].long())
    gy = torch.arange(h, device=x.device).view(1, h, 1) - shift_y
    gx = torch.arange(w, device=x.device).view(1, 1, w) - shift_x
    # Index 0 of the padded copy is a zero border: out-of-range sources read it.
    gy = (gy + 1).clamp(0, h + 1)
    gx = (gx + 1).clamp(0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])
    idx = (gy * (w + 2) + gx).view(n, 1, h * w).expand(n, c, h * w)
    return padded.flatten(2).gather(2, idx).view(n, c, h, w)


def cutout(x: torch.Tensor, apply: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Zero a square of side ``ratio * size`` at a random centre in each image."""
    n, _, h, w = x.shape
    cy = torch.rand(n, 1, 1, device=x.device) * h
    cx = torch.rand(n, 1, 1, device=x.device) * w
    ys = torch.arange(h, device=x.device).view(1, h, 1) + 0.5
    xs = torch.arange(w, device=x.device).view(1, 1, w) + 0.5
    inside = ((ys - cy).abs() < ratio * h / 2) & ((xs - cx).abs() < ratio * w / 2)
    return x * (1 - inside.unsqueeze(1).float() * apply)


class AdaptiveAugment(nn.Module):
    """Augment ``[N, C, H, W]`` images with probability ``p`` per op; ``p`` adapts to D.

    ``p`` changes only through :meth:`update` and ``load_state_dict`` (a host-side copy
    is kept so that ``forward`` never waits for the GPU).

    Args:
        p: initial probability (a buffer: it is in ``state_dict``).
        target: target of ``E[sign(D(real))]``; ``None`` keeps ``p`` fixed (DiffAugment).
        speed_kimg: thousands of images for ``p`` to move by 1.
        ops: subset of ``translation``, ``brightness``, ``saturation``, ``contrast``, ``cutout``.
    """

    ALL_OPS = ("translation", "brightness", "saturation", "contrast", "cutout")

    def __init__(self, p: float = 0.0, target: float | None = 0.6, speed_kimg: float = 500.0,
                 ops: tuple[str, ...] = ALL_OPS) -> None:
        super().__init__()
        unknown = set(ops) - set(self.ALL_OPS)
        if unknown:
            raise ValueError(f"unknown augmentations {sorted(unknown)}")
        self.target, self.speed_kimg, self.ops = target, speed_kimg, tuple(ops)
        self.register_buffer("p", torch.tensor(float(p)))
        # Host copy of p: reading the device buffer in forward would stall the CPU on a
        # GPU sync several times per step. Kept in step by update() and load_state_dict().
        self._p_host = float(p)
        # Running [sum of sign(D(real)), number of images] since the last update.
        self.register_buffer("_stat", torch.zeros(2), persistent=False)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._p_host = float(self.p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self._p_host
        if p <= 0:
            return x
        fns: dict[str, Callable] = {"translation": translation, "brightness": brightness,
                                    "saturation": saturation, "contrast": contrast,
                                    "cutout": cutout}
        for name in self.ops:
            x = fns[name](x, _coin(x.shape[0], p, x.device).to(x.dtype))
        return x

    @torch.no_grad()
    def observe(self, real_logits: torch.Tensor) -> None:
        """Accumulate ``sign(D(real))`` from a D step (no host sync)."""
        stat = torch.stack([real_logits.detach().float().sign().sum(),
                            torch.tensor(float(real_logits.numel()), device=real_logits.device)])
        self._stat = self._stat.to(stat.device) + stat

    @torch.no_grad()
    def update(self, all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
        """Adjust ``p`` from the statistics observed since the last call; returns ``r_t``.

        ``all_reduce`` (e.g. a sum over ranks) makes every rank move ``p`` identically.
        Call it every few steps (ADA uses every 4 D steps).
        """
        stat = self._stat.clone()
        if all_reduce is not None:
            stat = all_reduce(stat)
        self._stat.zero_()
        total = float(stat[1])
        if total == 0:
            return 0.0
        rt = float(stat[0]) / total
        if self.target is not None:
            sign = 1.0 if rt > self.target else -1.0 if rt < self.target else 0.0
            step = sign * total / (self.speed_kimg * 1000)
            self._p_host = min(max(self._p_host + step, 0.0), 1.0)
            self.p.fill_(self._p_host)
        return rt
