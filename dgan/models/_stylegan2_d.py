"""StyleGAN2 residual discriminator (re-exported by :mod:`dgan.models.stylegan2`)."""

from __future__ import annotations

import math

import torch
from torch import nn

from dgan.models._layers import (
    Conv2dLayer,
    FullyConnectedLayer,
    MappingNetwork,
    channels_at,
    check_resolution,
)


class DiscriminatorBlock(nn.Module):
    """Residual block ``[N, tmp, R, R] -> [N, out, R/2, R/2]``; the top block reads RGB."""

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int,
                 img_channels: int, conv_clamp: float | None, channels_last: bool) -> None:
        super().__init__()
        self.in_channels, self.channels_last = in_channels, channels_last
        kw = {"conv_clamp": conv_clamp, "channels_last": channels_last}
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu", **kw)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu", **kw)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2, **kw)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2,
                                channels_last=channels_last)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 0:
            fmt = torch.channels_last if self.channels_last else torch.contiguous_format
            x = self.fromrgb(img.to(memory_format=fmt))
        # sqrt(0.5) on both branches keeps the variance of the residual sum unchanged; the
        # sum happens in conv1's activation pass.
        y = self.skip(x, gain=math.sqrt(0.5))
        return self.conv1(self.conv0(x), gain=math.sqrt(0.5), residual=y)


class MinibatchStdLayer(nn.Module):
    """Append the per-group standard deviation of features as extra channels.

    ``[N, C, H, W] -> [N, C + num_channels, H, W]``; groups of ``group_size`` samples (the
    largest divisor of N that does not exceed it), statistics in float32.
    """

    def __init__(self, group_size: int, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor, splits: int = 1) -> torch.Tensor:
        """``splits``: x is that many independent batches one after the other (D's fakes and
        reals in one call); groups never mix samples of two of them."""
        n, c, h, w = x.shape
        if n % splits:
            raise ValueError(f"batch of {n} does not split into {splits} equal parts")
        ns = n // splits
        g = math.gcd(self.group_size, ns)
        f = self.num_channels
        # Sample s * ns + i * (ns // g) + j is in group j of part s.
        y = x.float().reshape(splits, g, -1, f, c // f, h, w)
        y = (y - y.mean(dim=1, keepdim=True)).square().mean(dim=1)
        y = (y + 1e-8).sqrt().mean(dim=[3, 4, 5])  # [splits, ns // g, f]
        y = y[:, None, :, :, None, None].expand(splits, g, ns // g, f, h, w).reshape(n, f, h, w)
        return torch.cat([x, y.to(x.dtype)], dim=1)


class DiscriminatorEpilogue(nn.Module):
    """4x4 head: minibatch-stddev, conv, fc, output logit (projection with ``cmap``)."""

    def __init__(self, in_channels: int, cmap_dim: int, mbstd_group_size: int,
                 mbstd_num_channels: int, conv_clamp: float | None) -> None:
        super().__init__()
        self.cmap_dim = cmap_dim
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels)
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, 3,
                                activation="lrelu", conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * 16, in_channels, activation="lrelu")
        self.out = FullyConnectedLayer(in_channels, cmap_dim if cmap_dim > 0 else 1)

    def forward(self, x: torch.Tensor, cmap: torch.Tensor | None, splits: int = 1
                ) -> torch.Tensor:
        x = self.conv(self.mbstd(x.contiguous(), splits))
        x = self.out(self.fc(x.flatten(1)))
        if self.cmap_dim > 0:
            x = (x * cmap).sum(dim=1, keepdim=True) / math.sqrt(self.cmap_dim)
        return x


class Discriminator(nn.Module):
    """StyleGAN2 residual D: ``D(img: [N, C, R, R], c: [N, c_dim]) -> logits [N, 1]`` float32.

    Args:
        c_dim: conditioning size (0: unconditional; otherwise projection conditioning
            through a mapping network of ``mapping_layers`` layers to ``cmap_dim``).
        img_resolution, img_channels: input size.
        channel_base, channel_max: channels per resolution ``min(base // res, max)``.
        mbstd_group_size, mbstd_num_channels: minibatch-stddev grouping and channels.
        conv_clamp: activation clamp (``None`` disables); channels_last: NHWC.
    """

    def __init__(self, c_dim: int = 0, img_resolution: int = 256, img_channels: int = 3,
                 channel_base: int = 32768, channel_max: int = 512, mbstd_group_size: int = 4,
                 mbstd_num_channels: int = 1, conv_clamp: float | None = 256,
                 channels_last: bool = False, cmap_dim: int | None = None,
                 mapping_layers: int = 8) -> None:
        super().__init__()
        log2 = check_resolution(img_resolution)
        self.c_dim, self.img_resolution, self.img_channels = c_dim, img_resolution, img_channels
        resolutions = [2**i for i in range(log2, 2, -1)]
        ch = {r: channels_at(r, channel_base, channel_max) for r in resolutions + [4]}
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(ch[r] if r < img_resolution else 0, ch[r], ch[r // 2],
                               img_channels, conv_clamp, channels_last)
            for r in resolutions)
        cmap_dim = (ch[4] if cmap_dim is None else cmap_dim) if c_dim > 0 else 0
        self.mapping = (MappingNetwork(0, c_dim, cmap_dim, None, mapping_layers, w_avg_beta=None)
                        if c_dim > 0 else None)
        self.epilogue = DiscriminatorEpilogue(ch[4], cmap_dim, mbstd_group_size,
                                              mbstd_num_channels, conv_clamp)

    def forward(self, img: torch.Tensor, c: torch.Tensor | None = None, splits: int = 1
                ) -> torch.Tensor:
        """Logits ``[N, 1]`` in float32. ``splits``: ``img`` holds that many independent
        batches of equal size (fakes and reals in one call): the same logits as one call
        each, since only the minibatch-stddev groups look across samples, and they stay
        inside a part."""
        x = None
        for block in self.blocks:
            x = block(x, img)
        cmap = self.mapping(None, c) if self.mapping is not None else None
        return self.epilogue(x, cmap, splits).float()
