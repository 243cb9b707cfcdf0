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
from dgan.ops import no_weight_gradients

# R1 outside torch.compile: False takes the gradient with autograd (through the fused
# kernels' own derivatives); True writes it out as the compiled path must
# (Discriminator.forward_and_input_grad). An ablation switch for benchmarks and tests.
EAGER_R1_VJP = False


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

    def forward_saving(self, x: torch.Tensor | None, img: torch.Tensor
                       ) -> tuple[torch.Tensor, dict]:
        """:meth:`forward` through the layers' ``forward_saving``; also returns the tape."""
        tape = {}
        if self.in_channels == 0:
            fmt = torch.channels_last if self.channels_last else torch.contiguous_format
            x, tape["fromrgb"] = self.fromrgb.forward_saving(img.to(memory_format=fmt))
        y, tape["skip"] = self.skip.forward_saving(x, gain=math.sqrt(0.5))
        t, tape["conv0"] = self.conv0.forward_saving(x)
        out, tape["conv1"] = self.conv1.forward_saving(t, gain=math.sqrt(0.5), residual=y)
        return out, tape

    def vjp(self, tape: dict, g_out: torch.Tensor) -> torch.Tensor:
        """The gradient with respect to the block's input features (the image, for the
        first block) of ``sum(g_out * out)``, as differentiable ops."""
        g_t = self.conv1.vjp(tape["conv1"], g_out)
        g_x = self.conv0.vjp(tape["conv0"], g_t)
        g_x = g_x + self.skip.vjp(tape["skip"], g_out).to(g_x.dtype)
        if self.in_channels == 0:
            return self.fromrgb.vjp(tape["fromrgb"], g_x)
        return g_x


class MinibatchStdLayer(nn.Module):
    """Append the per-group standard deviation of features as extra channels.

    ``[N, C, H, W] -> [N, C + num_channels, H, W]``; groups of ``group_size`` samples (the
    largest divisor of N that does not exceed it), statistics in (at least) float32.
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
        y = x.to(torch.promote_types(x.dtype, torch.float32))
        y = y.reshape(splits, g, -1, f, c // f, h, w)
        y = (y - y.mean(dim=1, keepdim=True)).square().mean(dim=1)
        y = (y + 1e-8).sqrt().mean(dim=[3, 4, 5])  # [splits, ns // g, f]
        y = y[:, None, :, :, None, None].expand(splits, g, ns // g, f, h, w).reshape(n, f, h, w)
        return torch.cat([x, y.to(x.dtype)], dim=1)

    def vjp(self, x: torch.Tensor, g_y: torch.Tensor, splits: int = 1) -> torch.Tensor:
        """``d sum(g_y * forward(x, splits)) / d x`` as differentiable ops. Per group member
        ``k`` of ``G``: ``d std / d x_k = (x_k - mean) / (G std)``, and the appended channel
        is the mean of ``std`` over ``C / F, H, W`` seen by every member at every pixel."""
        n, c, h, w = x.shape
        ns = n // splits
        g = math.gcd(self.group_size, ns)
        f = self.num_channels
        acc = torch.promote_types(x.dtype, torch.float32)
        total = g_y[:, c:].to(acc).reshape(splits, g, ns // g, f, h, w).sum(dim=(1, 4, 5))
        xf = x.to(acc).reshape(splits, g, -1, f, c // f, h, w)
        dev = xf - xf.mean(dim=1, keepdim=True)
        std = (dev.square().mean(dim=1) + 1e-8).sqrt()  # [splits, ns // g, f, c // f, h, w]
        coef = total[:, :, :, None, None, None] / ((c // f) * h * w * g) / std
        g_x = (dev * coef[:, None]).reshape(n, c, h, w)
        return g_y[:, :c] + g_x.to(g_y.dtype)


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

    def forward_saving(self, x: torch.Tensor, cmap: torch.Tensor | None, splits: int = 1
                       ) -> tuple[torch.Tensor, tuple]:
        """:meth:`forward` plus what :meth:`vjp` needs."""
        x = x.contiguous()
        h, conv_saved = self.conv.forward_saving(self.mbstd(x, splits))
        f = self.fc(h.flatten(1))
        out = self.out(f)
        if self.cmap_dim > 0:
            out = (out * cmap).sum(dim=1, keepdim=True) / math.sqrt(self.cmap_dim)
        return out, (x, splits, conv_saved, h.shape, f, cmap)

    def vjp(self, saved: tuple, g_out: torch.Tensor) -> torch.Tensor:
        """``d sum(g_out * forward(x)) / d x`` as differentiable ops."""
        x, splits, conv_saved, h_shape, f, cmap = saved
        g = g_out * cmap / math.sqrt(self.cmap_dim) if self.cmap_dim > 0 else g_out
        g = self.fc.input_grad(self.out.input_grad(g), f).reshape(h_shape)
        return self.mbstd.vjp(x, self.conv.vjp(conv_saved, g), splits)


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

    def forward(self, img: torch.Tensor, c: torch.Tensor | None = None, splits: int = 1,
                input_grad: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[N, 1]`` in float32. ``splits``: ``img`` holds that many independent
        batches of equal size (fakes and reals in one call): the same logits as one call
        each, since only the minibatch-stddev groups look across samples, and they stay
        inside a part. ``input_grad=True`` returns ``(logits, d logits.sum() / d img)``
        instead, the gradient still differentiable (R1; see :meth:`_input_grad`)."""
        if input_grad:
            return self._input_grad(img, c, splits)
        x = None
        for block in self.blocks:
            x = block(x, img)
        cmap = self.mapping(None, c) if self.mapping is not None else None
        return self.epilogue(x, cmap, splits).float()

    def _input_grad(self, img: torch.Tensor, c: torch.Tensor | None, splits: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eager: ``torch.autograd.grad`` with ``create_graph``, autocast off and no
        convolution weight gradients (only the image's is wanted). Inside ``torch.compile``,
        which cannot differentiate a gradient it took itself: written out as forward ops
        (:meth:`forward_and_input_grad`), so R1 is one graph differentiated once."""
        if torch.compiler.is_compiling() or EAGER_R1_VJP:
            return self.forward_and_input_grad(img, c, splits)
        if not img.requires_grad:
            img = img.detach().requires_grad_(True)
        logits = self(img, c, splits)
        with no_weight_gradients(), torch.autocast(img.device.type, enabled=False):
            (grad,) = torch.autograd.grad(logits.sum(), img, create_graph=True)
        return logits, grad

    def forward_and_input_grad(self, img: torch.Tensor, c: torch.Tensor | None = None,
                               splits: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, d logits.sum() / d img)``, the gradient written out with each layer's
        ``vjp`` rather than taken by autograd: an ordinary differentiable function of the
        image and the parameters, whose derivative is first-order (see
        ``SynthesisNetwork.forward_and_vjp``; linear and lrelu layers, as built here)."""
        x, tapes = None, []
        for block in self.blocks:
            x, tape = block.forward_saving(x, img)
            tapes.append(tape)
        cmap = self.mapping(None, c) if self.mapping is not None else None
        logits, saved = self.epilogue.forward_saving(x, cmap, splits)
        g = self.epilogue.vjp(saved, torch.ones_like(logits))
        for block, tape in zip(reversed(self.blocks), reversed(tapes)):
            g = block.vjp(tape, g)
        return logits.float(), g.to(img.dtype)
