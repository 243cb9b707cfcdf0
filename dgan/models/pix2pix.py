"""pix2pix's networks (Isola et al. 2017): a U-Net generator and a PatchGAN discriminator.

Both use instance normalisation (per sample, affine), not the paper's batch norm at batch
size 1: it gives the same per-image statistics at any batch size and needs no
synchronisation between DDP ranks. The U-Net halves the resolution down to 1x1 (at most
`max_downs` times), each decoder level seeing the encoder's features of its resolution;
dropout 0.5 in the three innermost decoder levels (the paper's noise, off in eval mode).
The PatchGAN classifies overlapping patches of (input, output) pairs: `layers` stride-2
convolutions then two stride-1 ones, 70x70 patches with layers=3.

Dropout masks are a function of the sample, not of the process (`SampleDropout`): a
forward in training mode may take `dropout_seeds`, one integer per row of its input; row
i's masks in all dropout layers of that forward come, in layer order, from one CPU
generator seeded by `dropout_seeds[i]`. dgan's pix2pix task gives each sample a seed from
(run.seed, step, its index in the step's global batch) (dgan.tasks.pix2pix), so G drops
the same units of a sample whichever rank and micro-batch it lands in, and the same in both
forwards of one step (D's phase and G's phase compute the same fakes, as the paper's code
computes one G(x) per step for both). The masks hold no state: a resumed run draws what the
uninterrupted run drew. Without `dropout_seeds` (a plain call in training mode) the layers
are torch's `nn.Dropout`, drawing from the global RNG. Eval mode: no dropout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=True)


class SampleDropout(nn.Dropout):
    """`nn.Dropout` whose mask, given per-row generators, is drawn row by row from them
    (shape [C, H, W] per row, uniform u, kept where u >= p, scaled by 1 / (1 - p)), on the
    CPU and moved, so the mask does not depend on the device nor on the other rows."""

    def forward(self, x: torch.Tensor,
                generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        if not self.training or self.p == 0 or generators is None:
            return super().forward(x)
        if len(generators) != len(x):
            raise ValueError(f"dropout: {len(generators)} generators for {len(x)} rows")
        u = torch.stack([torch.rand(x.shape[1:], generator=g) for g in generators])
        keep = (u >= self.p).to(device=x.device, dtype=x.dtype)
        return x * keep * (1.0 / (1.0 - self.p))


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
                    layers.append(SampleDropout(dropout))  # the 3 levels below the innermost
            self.up.append(nn.Sequential(*layers))

    def forward(self, x: torch.Tensor, dropout_seeds: Sequence[int] | None = None
                ) -> torch.Tensor:
        """G(x). `dropout_seeds`: one seed per row of x for the dropout masks in training
        mode (see the module's docstring); ignored in eval mode."""
        gens = None
        if dropout_seeds is not None and self.training:
            if len(dropout_seeds) != len(x):
                raise ValueError(f"U-Net: {len(dropout_seeds)} dropout seeds for a batch of "
                                 f"{len(x)}")
            gens = [torch.Generator().manual_seed(int(s)) for s in dropout_seeds]
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        skips.pop()  # the bottleneck is the decoder's input, not a skip
        for block in self.up:
            for layer in block:
                x = layer(x, gens) if isinstance(layer, SampleDropout) else layer(x)
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
