"""StyleGAN2 generator (mapping + skip synthesis) and residual discriminator.

Images are ``[N, img_channels, R, R]`` in about ``[-1, 1]``, ``R`` a power of two in
32..1024. Channels per resolution: ``min(channel_base // res, channel_max)``.
All convolutions use equalized learning rate; resampling uses the ``[1, 3, 3, 1]`` FIR
filter; activations are clamped to ``±conv_clamp`` (default 256) so float16/bfloat16
autocast cannot overflow. ``channels_last=True`` stores conv weights and activations
NHWC, which is what tensor-core convolutions want.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from dgan.models._layers import (
    FullyConnectedLayer,
    MappingNetwork,
    channels_at,
    check_resolution,
)
from dgan.models._stylegan2_d import Discriminator
from dgan.ops import ACTIVATIONS, modulated_conv2d, setup_filter, upsample2d

__all__ = ["Discriminator", "Generator", "MappingNetwork", "SynthesisNetwork"]


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally 2x up) + per-pixel noise + bias + lrelu."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int,
                 up: int = 1, conv_clamp: float | None = None, channels_last: bool = False,
                 fused_modconv: bool = False) -> None:
        super().__init__()
        self.resolution, self.up, self.conv_clamp = resolution, up, conv_clamp
        self.fused_modconv = fused_modconv
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = nn.Parameter(
            torch.randn(out_channels, in_channels, 3, 3).to(memory_format=fmt))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.register_buffer("resample_filter", setup_filter([1, 3, 3, 1]), persistent=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random",
                gain: float = 1.0) -> torch.Tensor:
        styles = self.affine(w)
        noise = None
        if noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution,
                                device=x.device, dtype=x.dtype) * self.noise_strength
        elif noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        elif noise_mode != "none":
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        # Demodulation, noise, bias, lrelu and clamp are one pass (modulated_conv2d's epilogue).
        return modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=1,
                                resample_filter=self.resample_filter,
                                fused_modconv=self.fused_modconv, bias=self.bias, act="lrelu",
                                gain=ACTIVATIONS["lrelu"][1] * gain, clamp=clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv to image channels, no demodulation."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int,
                 conv_clamp: float | None = None, fused_modconv: bool = False) -> None:
        super().__init__()
        self.conv_clamp, self.fused_modconv = conv_clamp, fused_modconv
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        return modulated_conv2d(x, self.weight, styles, demodulate=False,
                                fused_modconv=self.fused_modconv, bias=self.bias,
                                clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the skip generator: (up-conv,) conv, toRGB added to the upsampled image."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int,
                 img_channels: int, conv_clamp: float | None, channels_last: bool,
                 fused_modconv: bool) -> None:
        super().__init__()
        self.in_channels, self.channels_last = in_channels, channels_last
        kw = {"w_dim": w_dim, "resolution": resolution, "conv_clamp": conv_clamp,
                  "channels_last": channels_last, "fused_modconv": fused_modconv}
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, up=2, **kw)
        self.conv1 = SynthesisLayer(out_channels, out_channels, **kw)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp, fused_modconv)
        self.num_conv = 1 if in_channels == 0 else 2
        self.register_buffer("resample_filter", setup_filter([1, 3, 3, 1]), persistent=False)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None,
                ws: Sequence[torch.Tensor], noise_mode: str = "random"
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``ws``: ``num_conv + 1`` tensors ``[N, w_dim]``; returns features and the float32
        image so far."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).repeat(ws[0].shape[0], 1, 1, 1)
            x = x.to(memory_format=fmt)
            x = self.conv1(x, ws[0], noise_mode)
        else:
            x = self.conv0(x.to(memory_format=fmt), ws[0], noise_mode)
            x = self.conv1(x, ws[1], noise_mode)
        y = self.torgb(x, ws[self.num_conv]).float()
        # The image skip path stays float32: it sums small residuals over every resolution.
        img = y if img is None else upsample2d(img, self.resample_filter) + y
        return x, img


class SynthesisNetwork(nn.Module):
    """``ws: [N, num_ws, w_dim] -> img: [N, img_channels, R, R]`` (float32)."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int,
                 channel_base: int = 32768, channel_max: int = 512,
                 conv_clamp: float | None = 256, channels_last: bool = False,
                 fused_modconv: bool = False) -> None:
        super().__init__()
        log2 = check_resolution(img_resolution)
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.block_resolutions = [2**i for i in range(2, log2 + 1)]
        self.blocks = nn.ModuleList()
        self.num_ws = 0
        for res in self.block_resolutions:
            cin = channels_at(res // 2, channel_base, channel_max) if res > 4 else 0
            cout = channels_at(res, channel_base, channel_max)
            block = SynthesisBlock(cin, cout, w_dim, res, img_channels, conv_clamp,
                                   channels_last, fused_modconv)
            self.blocks.append(block)
            self.num_ws += block.num_conv
        self.num_ws += 1  # the last toRGB

    def forward(self, ws: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        x = img = None
        idx = 0
        # One unbind, not a slice per block and a select per layer: the gradient then comes
        # back as one stack instead of a zero-filled tensor and a copy per select and slice
        # and the adds between them, in every backward pass (path length runs two).
        w_list = ws.unbind(1)
        for block in self.blocks:
            # Consecutive blocks share one w: a block's toRGB w is the next block's up-conv w.
            x, img = block(x, img, w_list[idx: idx + block.num_conv + 1], noise_mode)
            idx += block.num_conv
        return img


class Generator(nn.Module):
    """StyleGAN2 generator: ``G(z: [N, z_dim], c: [N, c_dim]) -> [N, img_channels, R, R]``.

    Args:
        z_dim, c_dim, w_dim: latent, conditioning (0: unconditional) and style sizes.
        img_resolution, img_channels: output size.
        channel_base, channel_max: channels per resolution ``min(base // res, max)``.
        mapping_layers: depth of the mapping network.
        conv_clamp: activation clamp (``None`` disables).
        channels_last: NHWC weights/activations.
        fused_modconv: grouped-conv form of the modulated convs (see :mod:`dgan.ops`).
        mapping_lr_multiplier, w_avg_beta: mapping learning-rate scale and ``w_avg`` decay.
    """

    def __init__(self, z_dim: int = 512, c_dim: int = 0, w_dim: int = 512,
                 img_resolution: int = 256, img_channels: int = 3, channel_base: int = 32768,
                 channel_max: int = 512, mapping_layers: int = 8, conv_clamp: float | None = 256,
                 channels_last: bool = False, fused_modconv: bool = False,
                 mapping_lr_multiplier: float = 0.01, w_avg_beta: float = 0.995) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, channel_base,
                                          channel_max, conv_clamp, channels_last, fused_modconv)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, mapping_layers,
                                      lr_multiplier=mapping_lr_multiplier, w_avg_beta=w_avg_beta)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None,
                truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                noise_mode: str = "random", update_emas: bool = False,
                style_mixing_prob: float = 0.0, return_ws: bool = False,
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Images ``[N, img_channels, R, R]`` float32, roughly in ``[-1, 1]``.

        ``style_mixing_prob``: per batch, with this probability the ws after a random
        cutoff come from a second latent (training regulariser). ``return_ws`` also returns
        the ``[N, num_ws, w_dim]`` styles actually used (path-length regularisation
        differentiates with respect to them). Both live in ``forward`` so that a wrapped
        (DDP) generator sees one forward call per phase.
        """
        ws = self.mapping(z, c, truncation_psi, truncation_cutoff, update_emas=update_emas)
        if style_mixing_prob > 0:
            # Tensor-valued cutoff: no host sync, and torch.compile does not specialise on it.
            dev = ws.device
            cutoff = torch.randint(1, self.num_ws, (), device=dev)
            cutoff = torch.where(torch.rand((), device=dev) < style_mixing_prob, cutoff,
                                 self.num_ws)
            ws2 = self.mapping(torch.randn_like(z), c, truncation_psi, truncation_cutoff)
            mix = torch.arange(self.num_ws, device=dev)[None, :, None] >= cutoff
            ws = torch.where(mix, ws2, ws)
        img = self.synthesis(ws, noise_mode=noise_mode)
        return (img, ws) if return_ws else img
