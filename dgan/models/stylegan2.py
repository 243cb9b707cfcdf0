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
    _act_input_grad,
    channels_at,
    check_resolution,
)
from dgan.models._stylegan2_d import Discriminator
from dgan.ops import (
    ACTIVATIONS,
    conv2d_resample,
    modulated_conv2d,
    no_weight_gradients,
    scale_bias_act,
    setup_filter,
    upsample2d,
)
from dgan.ops.conv2d_resample import conv2d_resample_input_grad
from dgan.ops.modulated_conv2d import _demod_coefs, channel_bmm
from dgan.ops.upfirdn2d import upsample2d_input_grad

__all__ = ["Discriminator", "Generator", "MappingNetwork", "SynthesisNetwork"]

# Path length outside torch.compile: False takes the inner gradient with autograd (through
# the fused kernels' own derivatives); True writes it out as forward ops as the compiled
# path must (SynthesisNetwork.forward_and_vjp). An ablation switch for the benchmarks.
EAGER_PL_VJP = False


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
        # [1], not 0-dim: DeepSpeed broadcasts every parameter as a byte view, which a
        # 0-dim tensor cannot give (used as a 0-dim view, so bf16 noise stays bf16).
        self.noise_strength = nn.Parameter(torch.zeros([1]))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.register_buffer("resample_filter", setup_filter([1, 3, 3, 1]), persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        key = prefix + "noise_strength"
        if key in state_dict and state_dict[key].ndim == 0:  # saved while it was 0-dim
            state_dict[key] = state_dict[key].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _noise(self, x: torch.Tensor, noise_mode: str) -> torch.Tensor | None:
        if noise_mode == "random":
            return torch.randn(x.shape[0], 1, self.resolution, self.resolution,
                               device=x.device, dtype=x.dtype) * self.noise_strength.view(())
        if noise_mode == "const":
            return self.noise_const * self.noise_strength.view(())
        if noise_mode != "none":
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        return None

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random",
                gain: float = 1.0) -> torch.Tensor:
        styles = self.affine(w)
        noise = self._noise(x, noise_mode)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        # Demodulation, noise, bias, lrelu and clamp are one pass (modulated_conv2d's epilogue).
        return modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=1,
                                resample_filter=self.resample_filter,
                                fused_modconv=self.fused_modconv, bias=self.bias, act="lrelu",
                                gain=ACTIVATIONS["lrelu"][1] * gain, clamp=clamp)

    def forward_saving(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random"
                       ) -> tuple[torch.Tensor, tuple]:
        """:meth:`forward` (``gain=1``) as the ops of ``modulated_conv2d``'s unfused-weight
        form, with the same random draws, plus what :meth:`vjp` needs."""
        styles = self.affine(w)
        noise = self._noise(x, noise_mode)
        x1 = scale_bias_act(x, styles)
        x2 = conv2d_resample(x1, self.weight.to(x1.dtype), self.resample_filter, self.up,
                             padding=1)
        d = _demod_coefs(self.weight, styles)
        y = scale_bias_act(x2, d, noise, self.bias, "lrelu", gain=ACTIVATIONS["lrelu"][1],
                           clamp=self.conv_clamp)
        return y, (x, styles, x2, d, y)

    def vjp(self, saved: tuple, g_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(d/dx, d/dw)`` of ``sum(g_y * forward(x, w))`` from :meth:`forward_saving`'s
        ``saved``, as differentiable ops (first derivatives of these are ordinary kernels)."""
        x, styles, x2, d, y = saved
        dt = y.dtype
        acc = torch.promote_types(dt, torch.float32)  # reductions in at least fp32
        g_v = _act_input_grad(g_y.to(dt), y, "lrelu", ACTIVATIONS["lrelu"][1], self.conv_clamp)
        g_d = (g_v * x2).sum(dim=(2, 3), dtype=acc)
        g_x2 = g_v * d.to(dt)[:, :, None, None]
        g_x1 = conv2d_resample_input_grad(g_x2, self.weight.to(dt), x.shape[2:],
                                          self.resample_filter, self.up, padding=1)
        # d = rsqrt(styles^2 @ wsq^T + eps): d d_o / d s_i = -d_o^3 wsq_oi s_i.
        wsq = self.weight.to(acc).square().sum(dim=(2, 3))  # [O, I]
        with torch.autocast(x.device.type, enabled=False):
            g_s = ((g_x1 * x).sum(dim=(2, 3), dtype=acc)
                   - styles.to(acc) * ((g_d * d.to(acc).pow(3)) @ wsq))
        g_x = g_x1 * styles.to(dt)[:, :, None, None]
        return g_x, self.affine.input_grad(g_s)


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

    def forward_saving(self, x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """:meth:`forward` plus what :meth:`vjp` needs."""
        styles = self.affine(w) * self.weight_gain
        y = modulated_conv2d(x, self.weight, styles, demodulate=False,
                             fused_modconv=self.fused_modconv, bias=self.bias,
                             clamp=self.conv_clamp)
        return y, (x, styles, y)

    def vjp(self, saved: tuple, g_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(d/dx, d/dw)`` of ``sum(g_y * forward(x, w))``, as differentiable ops."""
        x, styles, y = saved
        g = _act_input_grad(g_y.to(y.dtype), y, "linear", 1.0, self.conv_clamp)
        acc = torch.promote_types(y.dtype, torch.float32)
        wt = self.weight[:, :, 0, 0].to(acc)  # [O, I]
        wn = wt[None] * styles.to(acc)[:, None, :]  # [N, O, I], as the forward's
        g_x = channel_bmm(g, wn.transpose(1, 2))
        with torch.autocast(x.device.type, enabled=False):
            # d/d styles[n, i] = sum_o wt[o, i] sum_hw g[n, o] x[n, i]: a batched matmul over
            # the pixels in the activations' dtype (accumulating in fp32), no upcast copies.
            gx_o = torch.einsum("nohw,nihw->noi", g, x.to(g.dtype)).to(acc)
            g_s = (gx_o * wt[None]).sum(dim=1)
        return g_x, self.affine.input_grad(g_s * self.weight_gain)


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
        y = self.torgb(x, ws[self.num_conv]).to(torch.promote_types(x.dtype, torch.float32))
        # The image skip path stays (at least) float32: it sums small residuals over every
        # resolution.
        img = y if img is None else upsample2d(img, self.resample_filter) + y
        return x, img

    def forward_saving(self, x: torch.Tensor | None, img: torch.Tensor | None,
                       ws: Sequence[torch.Tensor], noise_mode: str = "random"
                       ) -> tuple[torch.Tensor, torch.Tensor, list]:
        """:meth:`forward` through the layers' ``forward_saving``; also returns the tape."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        tape = []
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).repeat(ws[0].shape[0], 1, 1, 1)
            x, saved = self.conv1.forward_saving(x.to(memory_format=fmt), ws[0], noise_mode)
            tape.append(saved)
        else:
            in_hw = img.shape[2:]
            for layer, w in ((self.conv0, ws[0]), (self.conv1, ws[1])):
                x, saved = layer.forward_saving(x.to(memory_format=fmt), w, noise_mode)
                tape.append(saved)
        y, saved = self.torgb.forward_saving(x, ws[self.num_conv])
        tape.append(saved)
        y = y.to(torch.promote_types(y.dtype, torch.float32))
        if img is None:
            img = y
        else:
            tape.append(in_hw)
            img = upsample2d(img, self.resample_filter) + y
        return x, img, tape

    def vjp(self, tape: list, g_x: torch.Tensor | None, g_img: torch.Tensor
            ) -> tuple[torch.Tensor | None, torch.Tensor | None, list[torch.Tensor]]:
        """Gradients of ``sum(g_x * x_out) + sum(g_img * img_out)`` with respect to the
        block's input features, input image and ``ws`` (in order), from the tape."""
        g_img_in = None
        if self.in_channels != 0:
            g_img_in = upsample2d_input_grad(g_img, self.resample_filter, tape[-1])
        g_xr, g_w_rgb = self.torgb.vjp(tape[self.num_conv], g_img)
        g_x = g_xr if g_x is None else g_x + g_xr
        g_ws = [g_w_rgb]
        for layer, saved in zip(reversed(self.convs()), reversed(tape[:self.num_conv])):
            g_x, g_w = layer.vjp(saved, g_x)
            g_ws.insert(0, g_w)
        return (g_x if self.in_channels != 0 else None), g_img_in, g_ws

    def convs(self) -> list[SynthesisLayer]:
        return [self.conv1] if self.in_channels == 0 else [self.conv0, self.conv1]


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

    def forward_and_vjp(self, ws: torch.Tensor, g_img_fn, noise_mode: str = "random"
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(img, d sum(g_img * img) / d ws)`` with ``g_img = g_img_fn(img)``, the gradient
        written out as forward ops (each layer's ``vjp``) rather than taken by autograd.

        The result is an ordinary differentiable function of ``ws`` and the parameters:
        differentiating it again is a *first* derivative of these ops. That is what lets a
        compiled graph hold path-length regularisation (AOTAutograd cannot differentiate a
        gradient it took itself, and ``torch.func.grad`` inside ``torch.compile`` drops the
        outer gradient of custom autograd Functions), and every derivative of a convolution
        stays an ordinary cuDNN kernel. The unfused-weight form only (``fused_modconv=False``,
        not float16, whose modulation rescales weights and styles first).
        """
        if any(layer.fused_modconv for block in self.blocks for layer in block.convs()):
            raise NotImplementedError("forward_and_vjp: fused_modconv=True is not supported")
        dev = ws.device.type
        dtype = (torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev)
                 else self.blocks[0].conv1.weight.dtype)
        if dtype == torch.float16:
            raise NotImplementedError("forward_and_vjp: float16 is not supported")
        x = img = None
        idx = 0
        w_list = ws.unbind(1)
        tapes = []
        for block in self.blocks:
            x, img, tape = block.forward_saving(x, img, w_list[idx: idx + block.num_conv + 1],
                                                noise_mode)
            tapes.append(tape)
            idx += block.num_conv
        g_img = g_img_fn(img)
        g_x = None
        g_ws: list[torch.Tensor | None] = [None] * self.num_ws
        for block, tape in zip(reversed(self.blocks), reversed(tapes)):
            idx -= block.num_conv
            g_x, g_img, g_block = block.vjp(tape, g_x, g_img)
            for j, g in enumerate(g_block):
                g_ws[idx + j] = g if g_ws[idx + j] is None else g_ws[idx + j] + g
        return img, torch.stack(g_ws, dim=1)


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
                path_length: bool = False,
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Images ``[N, img_channels, R, R]`` float32, roughly in ``[-1, 1]``.

        ``style_mixing_prob``: per batch, with this probability the ws after a random
        cutoff come from a second latent (training regulariser). ``return_ws`` also returns
        the ``[N, num_ws, w_dim]`` styles actually used. ``path_length=True`` returns
        ``(img, pl_grad)`` instead, ``pl_grad`` the gradient path-length regularisation
        penalises (see :meth:`_path_length_grad`). All of these live in ``forward`` so that a
        wrapped (DDP, compiled) generator sees one forward call per phase.
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
        if path_length:
            return self._path_length_grad(ws, noise_mode)
        img = self.synthesis(ws, noise_mode=noise_mode)
        return (img, ws) if return_ws else img

    def _path_length_grad(self, ws: torch.Tensor, noise_mode: str
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(img, d sum(img * y) / d ws)`` with ``y ~ N(0, I) / sqrt(H W)`` drawn after the
        synthesis; the gradient ``[N, num_ws, w_dim]`` stays differentiable with respect to
        the parameters (``create_graph``), for the path-length penalty's backward.

        Eager: ``torch.autograd.grad`` with autocast off (a backward pass run under autocast
        casts again: the fp32 layers' backward matmuls would go to bf16 and back, a kernel
        each). Only the gradient with respect to ``ws`` is wanted, so convolution weight
        gradients are skipped (``no_weight_gradients``) unless the weights depend on ``ws``
        (``fused_modconv``). Inside ``torch.compile``, which cannot differentiate a gradient
        it took itself, the gradient is written out as forward ops instead
        (:meth:`SynthesisNetwork.forward_and_vjp`): the whole phase -- mapping, synthesis, the
        inner gradient -- becomes one graph whose single backward AOTAutograd derives.
        """
        def noise(img: torch.Tensor) -> torch.Tensor:
            # randn(shape), not randn_like: the same noise whatever memory layout img has.
            y = torch.randn(img.shape, device=img.device, dtype=img.dtype)
            return y / math.sqrt(img.shape[2] * img.shape[3])

        if torch.compiler.is_compiling() or EAGER_PL_VJP:
            # The gradient as forward ops: the whole phase is one graph (see forward_and_vjp).
            return self.synthesis.forward_and_vjp(ws, noise, noise_mode)
        img = self.synthesis(ws, noise_mode=noise_mode)
        skip = not any(getattr(m, "fused_modconv", False) for m in self.synthesis.modules())
        with no_weight_gradients(skip), torch.autocast(ws.device.type, enabled=False):
            (grad,) = torch.autograd.grad((img * noise(img)).sum(), ws, create_graph=True)
        return img, grad
