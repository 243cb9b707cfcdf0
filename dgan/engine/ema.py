"""Exponential moving average of G's weights (G_ema), used for samples and evaluation."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_ema(g: nn.Module) -> nn.Module:
    ema = copy.deepcopy(g).eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: nn.Module, g: nn.Module, step: int, beta: float) -> None:
    """G_ema <- b * G_ema + (1 - b) * G with b = min(beta, (1 + step) / (10 + step)).

    The ramp keeps early G_ema from being dominated by the random initialisation. Buffers
    (e.g. BatchNorm statistics) are copied, not averaged.
    """
    b = min(beta, (1.0 + step) / (10.0 + step))
    ema_params = [p for p in ema.parameters()]
    params = [p.detach() for p in g.parameters()]
    torch._foreach_lerp_(ema_params, params, 1.0 - b)
    for eb, gb in zip(ema.buffers(), g.buffers()):
        eb.copy_(gb)
