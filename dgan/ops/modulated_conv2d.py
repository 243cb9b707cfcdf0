"""Modulated (and demodulated) convolution, the StyleGAN2 synthesis layer.

Shapes: ``x: [N, I, H, W]``, ``weight: [O, I, kh, kw]``, ``styles: [N, I]``,
``noise``: broadcastable to the output ``[N, O, H', W']`` (usually ``[N, 1, H', W']``).

Semantics, per sample ``n``::

    w[n, o, i] = weight[o, i] * styles[n, i]
    d[n, o]    = rsqrt(sum_{i, kh, kw} w[n, o, i]**2 + 1e-8)        (if demodulate)
    y[n]       = conv2d_resample(x[n], w[n] * d[n, :, None, None, None]) + noise[n]

Two equivalent forms:

* ``fused_modconv=True``: build per-sample weights ``[N, O, I, kh, kw]`` and run one grouped
  convolution (``groups=N``). On the fused path the weight modulation/demodulation is a
  Triton kernel (:mod:`dgan.ops._modconv_triton`); the convolution is cuDNN.
* ``fused_modconv=False``: scale the input by ``styles``, run an ordinary batched convolution
  with the shared weight, scale the output by ``d`` (computed by a small matmul). This is
  usually faster for training with large batches; it has no Triton kernel of its own and
  uses the fused :func:`upfirdn2d` for resampling.

In float16 the weight and styles are pre-normalised by their max-norms before modulation
(the result is unchanged by demodulation) so that the sum of squares cannot overflow.
"""

from __future__ import annotations

import torch

from dgan.ops._dispatch import use_fused
from dgan.ops.bias_act import bias_act
from dgan.ops.conv2d_resample import conv2d_resample
from dgan.ops.scale_bias_act import scale_bias_act

DEMOD_EPS = 1e-8
# 1x1 modulated convolutions without resampling run as one batched matmul (see
# _modulated_matmul); False restores the scale-then-convolve form (benchmark ablations).
MATMUL_1X1 = True
# The styles multiply and the demodulation + noise + bias + activation epilogue run as
# scale_bias_act passes; False restores the separate multiply / addcmul / bias_act passes.
FUSED_EPILOGUE = True


def _demod_coefs(weight: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
    """``[N, O]`` float32 (or float64) demodulation coefficients without materialising ``[N, O, I, k, k]``.

    At least float32 (autocast off): the matrices are tiny, and a low-precision sum of squares
    would put a visible error on every output channel.
    """
    dt = torch.promote_types(torch.promote_types(weight.dtype, styles.dtype), torch.float32)
    with torch.autocast(weight.device.type, enabled=False):
        wsq = weight.to(dt).square().sum(dim=[2, 3])  # [O, I]
        return (styles.to(dt).square() @ wsq.t() + DEMOD_EPS).rsqrt()


def modulate_weight_reference(
    weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
) -> torch.Tensor:
    """``[O, I, kh, kw] x [N, I] -> [N, O, I, kh, kw]`` per-sample (de)modulated weights."""
    w = weight[None] * styles[:, None, :, None, None]
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4]) + DEMOD_EPS).rsqrt()[:, :, None, None, None]
    return w


class _ModulateFused(torch.autograd.Function):
    """Triton forward; the backward is written in differentiable PyTorch so that a
    second derivative (R1, path length) flows through it. It never materialises
    the un-normalised ``[N, O, I, k, k]`` weights: every term is an einsum against the
    incoming gradient."""

    @staticmethod
    def forward(ctx, weight, styles, demodulate, out_dtype):
        from dgan.ops import _modconv_triton as k

        ctx.save_for_backward(weight, styles)
        ctx.demodulate = demodulate
        return k.launch(weight, styles, demodulate, DEMOD_EPS, out_dtype)

    @staticmethod
    def backward(ctx, grad):
        weight, styles = ctx.saved_tensors
        o, i = weight.shape[:2]
        n = styles.shape[0]
        g = grad.reshape(n, o, i, -1)
        dt = g.dtype
        w = weight.reshape(o, i, -1).to(dt)
        s = styles.to(dt)
        if ctx.demodulate:
            d = _demod_coefs(weight, styles).to(dt)  # differentiable: needed for 2nd order
            a = torch.einsum("noik,oik,ni->no", g, w, s)
            c = a * d.pow(3)
            ds = torch.einsum("noik,no,oik->ni", g, d, w) - s * (c @ w.square().sum(-1))
            dw = torch.einsum("noik,no,ni->oik", g, d, s) - w * (c.t() @ s.square())[..., None]
        else:
            ds = torch.einsum("noik,oik->ni", g, w)
            dw = torch.einsum("noik,ni->oik", g, s)
        dw = dw.reshape(weight.shape).to(weight.dtype)
        return dw, ds.to(styles.dtype), None, None


def modulate_weight(
    weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
    out_dtype: torch.dtype | None = None, impl: str | None = None,
) -> torch.Tensor:
    """Per-sample weights ``[N, O, I, kh, kw]`` in ``out_dtype`` (default ``weight.dtype``)."""
    out_dtype = out_dtype or weight.dtype
    if not use_fused("modulate_weight", weight, impl):
        return modulate_weight_reference(weight, styles, demodulate).to(out_dtype)
    return _ModulateFused.apply(weight, styles, demodulate, out_dtype)


def _modulated_matmul(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                      demodulate: bool) -> torch.Tensor:
    """A 1x1 modulated convolution (toRGB) as one batched matmul with per-sample weights.

    ``[N, HW, I] @ [N, I, O]`` reads the activations once; scaling them by ``styles`` first
    (the ``fused_modconv=False`` form) would read and write them once more, and again in
    the backward. A channels_last ``x`` is already ``[N, H, W, I]`` in memory and an NCHW one
    ``[N, I, HW]``: both are views, and the result has ``x``'s layout.
    """
    wn = weight[None, :, :, 0, 0] * styles[:, None, :]  # [N, O, I]
    if demodulate:
        wn = wn * _demod_coefs(weight, styles)[:, :, None]
    return channel_bmm(x, wn)


def channel_bmm(x: torch.Tensor, wn: torch.Tensor) -> torch.Tensor:
    """``y[n, o] = sum_i wn[n, o, i] * x[n, i]`` over ``x: [N, I, H, W]``: one batched matmul
    on a view of ``x`` in either memory layout; the result has ``x``'s layout (and dtype,
    outside autocast)."""
    n, i, h, w_ = x.shape
    wn = wn.to(x.dtype) if not torch.is_autocast_enabled(x.device.type) else wn
    o = wn.shape[1]
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        y = torch.bmm(x.permute(0, 2, 3, 1).reshape(n, h * w_, i), wn.transpose(1, 2))
        return y.reshape(n, h, w_, o).permute(0, 3, 1, 2)
    return torch.bmm(wn, x.reshape(n, i, h * w_)).reshape(n, o, h, w_)


def _epilogue(x: torch.Tensor, scale: torch.Tensor | None, noise: torch.Tensor | None,
              bias: torch.Tensor | None, act: str, gain: float | None, clamp: float | None,
              impl: str | None) -> torch.Tensor:
    """``act(x * scale[n, c] + noise + bias) * gain``, clamped: one :func:`scale_bias_act` pass."""
    if FUSED_EPILOGUE:
        return scale_bias_act(x, scale, noise, bias, act, gain=gain, clamp=clamp, impl=impl)
    # The separate passes this replaced (kept for benchmark ablations).
    if scale is not None:
        d = scale.to(x.dtype)[:, :, None, None]
        x = torch.addcmul(noise.to(x.dtype), x, d) if noise is not None else x * d
    elif noise is not None:
        x = x + noise.to(x.dtype)
    if bias is None and act == "linear" and gain in (None, 1.0) and clamp is None:
        return x
    return bias_act(x, bias, act=act, gain=gain, clamp=clamp, impl=impl)


def modulated_conv2d(
    x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
    noise: torch.Tensor | None = None, up: int = 1, down: int = 1, padding: int = 0,
    resample_filter: torch.Tensor | None = None, demodulate: bool = True,
    fused_modconv: bool = True, impl: str | None = None, bias: torch.Tensor | None = None,
    act: str = "linear", gain: float | None = None, clamp: float | None = None,
) -> torch.Tensor:
    """Modulated convolution ``[N, I, H, W] -> [N, O, H*up/down, W*up/down]``, then the
    layer's epilogue ``clamp(act(y + noise + bias) * gain)`` in the same pass as the
    demodulation (see :func:`dgan.ops.scale_bias_act`; the defaults leave ``y + noise``).

    See the module docstring. The result has ``x``'s dtype; ``weight`` and ``styles``
    may be float32 master copies.
    """
    n = x.shape[0]
    o, i, kh, kw = weight.shape
    if styles.shape != (n, i):
        raise ValueError(f"styles must be [N={n}, I={i}], got {tuple(styles.shape)}")
    if x.dtype == torch.float16 and demodulate:
        # Scale-invariant under demodulation; keeps the fp16 sum of squares finite.
        weight = weight * (1 / (i * kh * kw) ** 0.5
                           / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)
    epilogue = {"noise": noise, "bias": bias, "act": act, "gain": gain, "clamp": clamp,
                "impl": impl}
    if MATMUL_1X1 and kh == kw == 1 and up == down == 1 and padding == 0 and x.ndim == 4:
        return _epilogue(_modulated_matmul(x, weight, styles, demodulate), None, **epilogue)
    if not fused_modconv:
        if FUSED_EPILOGUE:
            x = scale_bias_act(x, styles, impl=impl)
        else:
            x = x * styles.to(x.dtype)[:, :, None, None]
        x = conv2d_resample(x, weight.to(x.dtype), resample_filter, up, down, padding, impl=impl)
        d = _demod_coefs(weight, styles) if demodulate else None
        return _epilogue(x, d, **epilogue)
    w = modulate_weight(weight, styles, demodulate, out_dtype=x.dtype, impl=impl)
    x = x.reshape(1, n * i, *x.shape[2:])
    x = conv2d_resample(x, w.reshape(n * o, i, kh, kw), resample_filter, up, down, padding,
                        groups=n, impl=impl)
    return _epilogue(x.reshape(n, o, *x.shape[2:]), None, **epilogue)
