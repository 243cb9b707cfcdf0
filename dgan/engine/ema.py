"""Exponential moving averages of networks (G_ema), used for samples and evaluation.

One update (`update_ema`); the tasks choose the decay: DCGAN a fixed `train.ema_beta`
ramped up over the first steps (`ramped_beta`), StyleGAN2 a half-life in images
(`halflife_beta`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_ema(net: nn.Module) -> nn.Module:
    """A frozen copy of `net` in eval mode."""
    ema = copy.deepcopy(net).eval()
    ema.requires_grad_(False)
    return ema


def ramped_beta(beta: float, step: int) -> float:
    """min(beta, (1 + step) / (10 + step)): early averages are not dominated by the
    random initialisation."""
    return min(beta, (1.0 + step) / (10.0 + step))


def halflife_beta(cur_nimg: int, batch_size: int, ema_kimg: float = 10.0,
                  ema_rampup: float | None = 0.05) -> float:
    """The decay per step of `batch_size` images for a half-life of `ema_kimg` thousand
    images, shortened to `ema_rampup * cur_nimg` early in training."""
    ema_nimg = ema_kimg * 1000
    if ema_rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


@torch.no_grad()
def update_ema(ema: nn.Module, net: nn.Module, beta: float) -> float:
    """ema <- beta * ema + (1 - beta) * net (one fused `_foreach_lerp_`); buffers (BatchNorm
    statistics, StyleGAN2's w_avg) are copied, not averaged. Returns `beta`."""
    ema_params = list(ema.parameters())
    params = [p.detach() for p in net.parameters()]
    if len(ema_params) != len(params):
        raise ValueError("the EMA and its network have different parameter lists")
    torch._foreach_lerp_(ema_params, params, 1.0 - beta)
    for eb, b in zip(ema.buffers(), net.buffers()):
        eb.copy_(b)
    return beta
