"""Equalized-learning-rate building blocks shared by the StyleGAN2 generator and discriminator.

Equalized learning rate: parameters are stored at unit scale (``randn / lr_multiplier``)
and multiplied by ``lr_multiplier / sqrt(fan_in)`` at run time, so that Adam's per-parameter
step has the same effect on every layer whatever its fan-in.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from dgan.ops import ACTIVATIONS, bias_act, conv2d_resample, scale_bias_act, setup_filter
from dgan.ops.conv2d_resample import conv2d_resample_input_grad


def channels_at(res: int, channel_base: int, channel_max: int) -> int:
    """Feature maps at resolution ``res``: ``min(channel_base // res, channel_max)``."""
    channels = min(channel_base // res, channel_max)
    if channels < 1:
        raise ValueError(f"channel_base={channel_base} leaves no channels at resolution {res}; "
                         f"use channel_base >= {res}")
    return channels


def check_resolution(img_resolution: int) -> int:
    """Return ``log2(img_resolution)``; it must be a power of two in [32, 1024]."""
    log2 = int(math.log2(img_resolution))
    if 2**log2 != img_resolution or not 32 <= img_resolution <= 1024:
        raise ValueError(f"img_resolution must be a power of two in [32, 1024], "
                         f"got {img_resolution}")
    return log2


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale ``x`` so that its mean square along ``dim`` is 1."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


class FullyConnectedLayer(nn.Module):
    """``[N, in] -> [N, out]`` linear layer with equalized learning rate and fused bias_act."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 activation: str = "linear", lr_multiplier: float = 1.0,
                 bias_init: float = 0.0) -> None:
        super().__init__()
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = (nn.Parameter(torch.full([out_features], float(bias_init)))
                     if bias else None)
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """In the master weights' precision (float32), autocast off, whatever the input:
        these matrices are tiny (``[N, 512] x [512, 512]`` for the mapping network and the
        style affines), so bf16/fp16 would save nothing on the GPU, while autocast's casts of
        the weight, bias and input, and of their gradients at every derivative order, are
        kernel launches of their own in a step that is bound by launches (path length
        differentiates through every affine twice). Higher precision also keeps the styles,
        and so the demodulation, exact; NVlabs' StyleGAN2 runs these layers in fp32 too."""
        dt = torch.promote_types(x.dtype, self.weight.dtype)
        with torch.autocast(x.device.type, enabled=False):
            x, weight = x.to(dt), self.weight.to(dt)
            bias = self.bias.to(dt) if self.bias is not None else None
            if self.activation == "linear" and bias is not None:
                # The gains as addmm's alpha and beta: no separate multiplies of the
                # parameters (the style affines have bias_gain 1: no multiply at all).
                return torch.addmm(bias.unsqueeze(0), x, weight.t(), beta=self.bias_gain,
                                   alpha=self.weight_gain)
            w = weight * self.weight_gain
            b = bias * self.bias_gain if bias is not None and self.bias_gain != 1 else bias
            return bias_act(x.matmul(w.t()), b, act=self.activation)

    def input_grad(self, g: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The gradient with respect to the input given the output gradient ``g``, as a
        differentiable forward computation: ``g @ W * weight_gain`` after the activation's
        slope, read from this layer's output ``y`` (linear and lrelu layers)."""
        dt = torch.promote_types(g.dtype, self.weight.dtype)
        with torch.autocast(g.device.type, enabled=False):
            g = g.to(dt)
            if self.activation != "linear":
                g = _act_input_grad(g, y, self.activation, ACTIVATIONS[self.activation][1], None)
            return g.matmul(self.weight.to(dt)) * self.weight_gain

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, act={self.activation}"


def _act_input_grad(g: torch.Tensor, y: torch.Tensor | None, act: str, gain: float,
                    clamp: float | None) -> torch.Tensor:
    """``g`` through ``clamp(act(v) * gain)`` back to ``v``, from the output ``y``: linear
    and lrelu (gain > 0 keeps the sign of ``v``); an output at the clamp bound counts as
    clamped. For the written-out gradients of R1 and path length."""
    if act == "lrelu":
        g = torch.where(y > 0, g, g * ACTIVATIONS["lrelu"][0])
    elif act != "linear":
        raise NotImplementedError(f"written-out gradient of activation {act!r}")
    g = g * gain if gain != 1 else g
    if clamp is not None and clamp >= 0:
        g = torch.where(y.abs() < clamp, g, 0.0)
    return g


class Conv2dLayer(nn.Module):
    """Equalized-lr conv ``[N, in, H, W] -> [N, out, H*up/down, W*up/down]`` + bias_act.

    ``conv_clamp`` clamps the activations to ``±conv_clamp * gain``; it keeps float16
    activations finite and is harmless in float32.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, down: int = 1,
                 resample_filter: list[float] = (1, 3, 3, 1), conv_clamp: float | None = None,
                 channels_last: bool = False) -> None:
        super().__init__()
        self.activation, self.up, self.down = activation, up, down
        self.conv_clamp, self.padding = conv_clamp, kernel_size // 2
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)),
                             persistent=False)
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.act_gain = ACTIVATIONS[activation][1]
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size,
                                               kernel_size).to(memory_format=fmt))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def _linear(self) -> bool:
        # Without bias, activation or clamp the layer is linear: its gain goes into the small
        # weight instead of costing a pass over the activations (D's residual skip convs).
        return self.bias is None and self.activation == "linear" and self.conv_clamp is None

    def _conv(self, x: torch.Tensor, gain: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The scaled weight and the convolution's output (before bias and activation)."""
        w = self.weight * self.weight_gain
        if self._linear():
            w = w * (self.act_gain * gain)
        if not torch.is_autocast_enabled(x.device.type):
            w = w.to(x.dtype)
        return w, conv2d_resample(x, w, self.resample_filter, self.up, self.down, self.padding)

    def _clamp(self, gain: float) -> float | None:
        return self.conv_clamp * gain if self.conv_clamp is not None else None

    def forward(self, x: torch.Tensor, gain: float = 1.0,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        """``residual`` (the output's shape) is added to the result in the activation pass."""
        _, x = self._conv(x, gain)
        if self._linear():
            return x + residual if residual is not None else x
        # scale_bias_act rather than bias_act: its backward reduces the bias gradient in the
        # same pass as dx instead of reading dx again.
        return scale_bias_act(x, b=self.bias, act=self.activation, gain=self.act_gain * gain,
                              clamp=self._clamp(gain), residual=residual)

    def forward_saving(self, x: torch.Tensor, gain: float = 1.0,
                       residual: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple]:
        """:meth:`forward` plus what :meth:`vjp` needs (the residual added separately, so
        that the activation's output is at hand)."""
        w, h = self._conv(x, gain)
        y = None
        if not self._linear():
            h = y = scale_bias_act(h, b=self.bias, act=self.activation,
                                   gain=self.act_gain * gain, clamp=self._clamp(gain))
        out = h + residual.to(h.dtype) if residual is not None else h
        return out, (tuple(x.shape[2:]), w, y, gain)

    def vjp(self, saved: tuple, g_out: torch.Tensor) -> torch.Tensor:
        """``d sum(g_out * forward(x)) / d x`` as differentiable ops (the residual's gradient
        is ``g_out`` itself)."""
        hw, w, y, gain = saved
        g = g_out
        if y is not None:
            g = _act_input_grad(g_out.to(y.dtype), y, self.activation, self.act_gain * gain,
                                self._clamp(gain))
        return conv2d_resample_input_grad(g, w, hw, self.resample_filter, self.up, self.down,
                                          self.padding)


class MappingNetwork(nn.Module):
    """``z: [N, z_dim], c: [N, c_dim] -> w: [N, num_ws, w_dim]`` (or ``[N, w_dim]``).

    Tracks the moving average ``w_avg`` (a buffer, so it is checkpointed) used for
    truncation: ``w = w_avg + psi * (w - w_avg)`` on the first ``truncation_cutoff`` ws.
    """

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int | None,
                 num_layers: int = 8, activation: str = "lrelu", lr_multiplier: float = 0.01,
                 w_avg_beta: float | None = 0.995) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.w_avg_beta = w_avg_beta
        embed = w_dim if c_dim > 0 else 0
        self.embed = FullyConnectedLayer(c_dim, embed) if c_dim > 0 else None
        feats = [z_dim + embed] + [w_dim] * num_layers
        self.layers = nn.ModuleList(
            FullyConnectedLayer(i, o, activation=activation, lr_multiplier=lr_multiplier)
            for i, o in itertools.pairwise(feats))
        if w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor | None, c: torch.Tensor | None = None,
                truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                update_emas: bool = False) -> torch.Tensor:
        parts = []
        if self.z_dim > 0:
            parts.append(normalize_2nd_moment(z.float()))
        if self.c_dim > 0:
            parts.append(normalize_2nd_moment(self.embed(c.float())))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        for layer in self.layers:
            x = layer(x)
        x = x.float()
        if update_emas and self.w_avg_beta is not None:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is None:
            return x
        x = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            cut = self.num_ws if truncation_cutoff is None else truncation_cutoff
            x = torch.cat([self.w_avg.lerp(x[:, :cut], truncation_psi), x[:, cut:]], dim=1)
        return x
