"""pix2pix's networks (Isola et al. 2017): a U-Net generator and a PatchGAN discriminator.

Both use instance normalisation (per sample, affine), not the paper's batch norm at batch
size 1: it gives the same per-image statistics at any batch size and needs no
synchronisation between DDP ranks. The U-Net halves the resolution down to 1x1 (at most
`max_downs` times), each decoder level seeing the encoder's features of its resolution;
dropout 0.5 in the three innermost decoder levels (the paper's noise, off in eval mode).
The PatchGAN classifies overlapping patches of (input, output) pairs: `layers` stride-2
convolutions then two stride-1 ones, 70x70 patches with layers=3.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=True)


class UNetGenerator(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, resolution: int, width: int = 64,
                 max_width: int = 512, max_downs: int = 8, dropout: float = 0.5) -> None:
        super().__init__()
        downs = min(max_downs, int(math.log2(resolution)))
        if resolution % (1 << downs):
            raise ValueError(f"U-Net: resolution {resolution} is not divisible by 2^{downs}")
        widths = [min(width << i, max_width) for i in range(downs)]
        self.multiple = 1 << downs  # input sides must be multiples of this (dgan translate)
        self.down = nn.ModuleList()
        prev = in_channels
        for i, w in enumerate(widths):
            layers: list[nn.Module] = []
            if i > 0:
                layers.append(nn.LeakyReLU(0.2))
            layers.append(nn.Conv2d(prev, w, 4, 2, 1, bias=i == 0 or i == downs - 1))
            if 0 < i < downs - 1:  # no norm on the input level nor at the 1x1 bottleneck
                layers.append(_norm(w))
            self.down.append(nn.Sequential(*layers))
            prev = w
        self.up = nn.ModuleList()
        for i in reversed(range(downs)):  # level i: from widths[i] (+ skip) to level i-1
            inner = widths[i] if i == downs - 1 else widths[i] * 2
            if i == 0:
                layers = [nn.ReLU(), nn.ConvTranspose2d(inner, out_channels, 4, 2, 1), nn.Tanh()]
            else:
                layers = [nn.ReLU(), nn.ConvTranspose2d(inner, widths[i - 1], 4, 2, 1, bias=False),
                          _norm(widths[i - 1])]
                if dropout and downs - 1 - min(3, downs - 2) <= i < downs - 1:
                    layers.append(nn.Dropout(dropout))  # the 3 levels below the innermost
            self.up.append(nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        skips.pop()  # the bottleneck is the decoder's input, not a skip
        for block in self.up:
            x = block(x)
            if skips:
                x = torch.cat([x, skips.pop()], 1)
        return x


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int, width: int = 64, layers: int = 3,
                 max_width: int = 512) -> None:
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        prev = width
        for i in range(1, layers + 1):
            w = min(width << i, max_width)
            stride = 2 if i < layers else 1
            seq += [nn.Conv2d(prev, w, 4, stride, 1, bias=False), _norm(w), nn.LeakyReLU(0.2)]
            prev = w
        seq.append(nn.Conv2d(prev, 1, 4, 1, 1))
        self.net = nn.Sequential(*seq)

    def forward(self, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [N, 1, h, w], one per patch of the pair (a, b), or of the single image a
        when b is None (CycleGAN's D: in_channels = the image's channels)."""
        return self.net(a if b is None else torch.cat([a, b], 1))
