"""Per-sample channel scale + noise + bias + activation + gain + clamp, in one pass.

    v = x * scale[n, c] + noise + b[c]
    y = clamp(act(v) * gain, -clamp, clamp)

This is the epilogue of a StyleGAN2 synthesis layer (``scale`` = the demodulation
coefficients, then per-pixel noise, bias and lrelu) and, with only ``scale``, the styles
multiply in front of its convolution. Unfused, these are a broadcast multiply (or
``torch.addcmul``) plus :func:`dgan.ops.bias_act`, each a pass over the activations forward
and more passes backward (the ``d scale`` and ``d noise`` reductions among them).

Shapes: ``x: [N, C, H, W]``, contiguous or channels_last (the output keeps the layout and
dtype; fp32/bf16/fp16, and fp64 for tests); ``scale: [N, C]`` or ``None`` (any float dtype;
the fused path reads it in fp32); ``noise``: ``None`` or broadcastable to ``[N, 1, H, W]``
(``[N, 1, H, W]``, ``[H, W]``, ``[1, 1, H, W]``...), its gradient comes back in its own shape;
``b: [C]`` or ``None``. ``act``, ``alpha``, ``gain`` and ``clamp`` mean exactly what they mean
for :func:`dgan.ops.bias_act` (same defaults; the gradient is zero where the output was
clamped). With ``scale=None, noise=None`` the op is ``bias_act``.

Fused path (Triton, :mod:`dgan.ops._scale_bias_act_triton`), in full-tensor passes:

* forward: one kernel, reads ``x``, writes ``y`` (2 passes).
* backward (``_ScaleBiasActGradFused``): one kernel reads ``dy`` and ``x`` and writes
  ``dx = dy * act'(v) * gain * mask * scale``; in the same pass it reduces ``d scale``
  (``sum_hw``), ``d b`` (``sum_{n,hw}``) and ``d noise`` (``sum_c``, then down to noise's
  shape) through small fp32 partial-sum buffers finished with ``torch.sum``: deterministic,
  no atomics (3 passes). Only the gradients that ``needs_input_grad`` asks for are computed.
* second derivative (the backward of that Function, as in path-length regularisation): one
  kernel reads ``x``, ``dy`` and the incoming ``d(dx)`` and writes ``d(dy)`` and ``d x``, with
  ``d scale``, ``d b`` and ``d noise`` reduced in the same pass (at most 5 passes). For every
  activation in :data:`~dgan.ops.ACTIVATIONS`: the ``act''`` terms are compiled out for the
  piecewise-linear ones (linear, relu, lrelu), whose ``act''`` is zero.
* third and higher derivatives: when a second derivative is taken with ``create_graph=True``,
  the fused double backward instead recomputes the first derivative through the reference
  composition with autograd and differentiates that (logged once on the ``dgan.ops``
  logger), so derivatives of every order are correct, unfused.

The mask is recomputed from ``x``, so only the inputs are saved for backward.
"""

from __future__ import annotations

import torch

from dgan.ops import _dispatch
from dgan.ops._dispatch import use_fused
from dgan.ops.bias_act import _PIECEWISE_LINEAR, _resolve, bias_act_reference


def scale_bias_act_reference(
    x: torch.Tensor, scale: torch.Tensor | None = None, noise: torch.Tensor | None = None,
    b: torch.Tensor | None = None, act: str = "linear", alpha: float | None = None,
    gain: float | None = None, clamp: float | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain PyTorch composition; autograd provides derivatives of every order.

    ``scale`` and ``noise`` are cast to ``x``'s dtype first, as the unfused synthesis layer
    does (``bias_act_reference`` casts ``b``).
    """
    if scale is not None:
        x = x * scale.to(x.dtype)[:, :, None, None]
    if noise is not None:
        x = x + noise.to(x.dtype)
    y = bias_act_reference(x, b, 1, act, alpha, gain, clamp)
    return y + residual.to(y.dtype) if residual is not None else y


def _check_shapes(x, scale, noise, b) -> None:
    if x.ndim != 4:
        raise ValueError(f"x must be [N, C, H, W], got {tuple(x.shape)}")
    n, c, h, w = x.shape
    if scale is not None and tuple(scale.shape) != (n, c):
        raise ValueError(f"scale must be [N={n}, C={c}], got {tuple(scale.shape)}")
    if b is not None and tuple(b.shape) != (c,):
        raise ValueError(f"bias must be [C={c}], got {tuple(b.shape)}")
    if noise is not None:
        try:
            ok = torch.broadcast_shapes(noise.shape, (n, 1, h, w)) == (n, 1, h, w)
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"noise {tuple(noise.shape)} does not broadcast to [N, 1, H, W]"
                             f" = {[n, 1, h, w]}")


class _ScaleBiasActFused(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, noise, b, residual, act, alpha, gain, clamp):
        from dgan.ops import _scale_bias_act_triton as k

        ctx.save_for_backward(x, scale, noise, b)
        ctx.spec = (act, alpha, gain, clamp)
        ctx.residual_dtype = residual.dtype if residual is not None else None
        return k.forward(x, scale, noise, b, act, alpha, gain, clamp, residual)

    @staticmethod
    def backward(ctx, dy):
        x, scale, noise, b = ctx.saved_tensors
        need = tuple(ctx.needs_input_grad[:4])
        grads = _ScaleBiasActGradFused.apply(dy, x, scale, noise, b, need, *ctx.spec)
        # The residual is added after everything else: its gradient is dy itself.
        d_res = dy.to(ctx.residual_dtype) if ctx.needs_input_grad[4] else None
        return (*grads, d_res, None, None, None, None)


class _ScaleBiasActGradFused(torch.autograd.Function):
    """``(dx, d scale, d noise, d b)`` as a differentiable function of ``(dy, x, scale, noise, b)``.

    Outputs that were not asked for are ``None``. With ``dv = dy * A``,
    ``A = act'(v) * gain * mask`` and ``A2 = act''(v) * gain * mask``, its backward against
    incoming ``(g_dx, g_s, g_noise, g_b)`` is, with ``w = g_dx * s + g_s * x + g_b + g_noise``
    (the incoming gradients pushed forward to ``v``) and ``u = dy * A2 * w``::

        d dy    = A * w                         (the transpose of dy -> outputs)
        d x     = g_s * dy * A + s * u
        d scale = sum_hw (g_dx * dy * A + x * u)
        d b     = sum_{n,hw} u,   d noise = sum_c u   (zero for piecewise-linear acts)
    """

    @staticmethod
    def forward(ctx, dy, x, scale, noise, b, need, act, alpha, gain, clamp):
        from dgan.ops import _scale_bias_act_triton as k

        ctx.set_materialize_grads(False)  # unused outputs' gradients arrive as None
        ctx.save_for_backward(dy, x, scale, noise, b)
        ctx.spec = (act, alpha, gain, clamp)
        return k.backward(dy, x, scale, noise, b, need, act, alpha, gain, clamp)

    @staticmethod
    def backward(ctx, g_dx, g_gs, g_gn, g_gb):
        dy, x, scale, noise, b = ctx.saved_tensors
        need = tuple(ctx.needs_input_grad[:5])
        if torch.is_grad_enabled():
            # create_graph=True: a third derivative may follow, which the kernel cannot give.
            grads = _backward2_reference((dy, x, scale, noise, b), (g_dx, g_gs, g_gn, g_gb),
                                         need, ctx.spec)
        else:
            from dgan.ops import _scale_bias_act_triton as k

            act = ctx.spec[0]
            grads = k.backward2(dy, x, scale, noise, b, g_dx, g_gs, g_gn, g_gb, need,
                                act in _PIECEWISE_LINEAR, *ctx.spec)
        return (*grads, None, None, None, None, None)


def _act_slopes(v: torch.Tensor, act: str, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(act'(v), act''(v))`` as differentiable PyTorch expressions (the kernel's formulas)."""
    one, zero = torch.ones_like(v), torch.zeros_like(v)
    pos = v > 0
    if act == "linear":
        return one, zero
    if act == "relu":
        return pos.to(v.dtype), zero
    if act == "lrelu":
        return torch.where(pos, one, one * alpha), zero
    if act == "tanh":
        t = torch.tanh(v)
        d1 = 1 - t * t
        return d1, -2 * t * d1
    if act in ("sigmoid", "softplus", "swish"):
        s = torch.sigmoid(v)
        ds = s * (1 - s)
        if act == "sigmoid":
            return ds, ds * (1 - 2 * s)
        if act == "softplus":
            return s, ds
        return s + v * ds, ds * (2 + v * (1 - 2 * s))
    e = torch.exp(torch.where(pos, zero, v))  # elu, selu
    d1, d2 = torch.where(pos, one, e), torch.where(pos, zero, e)
    if act == "selu":
        lam, a = 1.0507009873554805, 1.6732632423543772
        d1, d2 = lam * torch.where(pos, one, a * e), lam * a * d2
    return d1, d2


def _backward2_reference(saved, grads_in, need, spec):
    """The double backward as differentiable PyTorch (so derivatives of any order follow).

    The same formulas as the kernel (see ``_ScaleBiasActGradFused``), computed in at least
    float32; the mask is piecewise constant and carries no gradient.
    """
    key = ("scale_bias_act", "reference (double backward with create_graph)")
    if key not in _dispatch._logged:
        _dispatch._logged.add(key)
        _dispatch._LOG.info("dgan.ops.scale_bias_act: double backward with create_graph=True "
                            "runs in differentiable PyTorch (for third derivatives)")
    dy, x, scale, noise, b = saved
    g_dx, g_s, g_n, g_b = grads_in
    act, alpha, gain, clamp = spec
    if all(g is None for g in grads_in):
        return (None,) * 5
    dt = torch.promote_types(x.dtype, torch.float32)

    def f32(t):
        return t.to(dt) if t is not None else None

    dy, x, g_dx = f32(dy), f32(x), f32(g_dx)
    s = f32(scale)[:, :, None, None] if scale is not None else None
    v = x * s if s is not None else x
    if noise is not None:
        v = v + f32(noise)
    if b is not None:
        v = v + f32(b)[:, None, None]
    d1, d2 = _act_slopes(v, act, alpha)
    if clamp >= 0:
        with torch.no_grad():
            keep = (bias_act_reference(v, act=act, alpha=alpha, gain=gain).abs() < clamp)
        d1, d2 = d1 * keep, d2 * keep
    a1, a2 = d1 * gain, d2 * gain
    terms = []
    if g_dx is not None:
        terms.append(g_dx * s if s is not None else g_dx)
    if g_s is not None:
        terms.append(f32(g_s)[:, :, None, None] * x)
    if g_b is not None:
        terms.append(f32(g_b)[:, None, None])
    if g_n is not None:
        terms.append(f32(g_n))
    w = sum(terms[1:], terms[0])
    second = act not in _PIECEWISE_LINEAR
    u = dy * a2 * w if second else None
    dya = dy * a1
    d_dy = d_x = d_s = d_n = d_b = None
    if need[0]:
        d_dy = (a1 * w).to(saved[0].dtype)
    if need[1] and (g_s is not None or second):
        d_x = f32(g_s)[:, :, None, None] * dya if g_s is not None else 0
        if second:
            d_x = d_x + (u * s if s is not None else u)
        d_x = d_x.to(saved[1].dtype)
    if need[2] and scale is not None and (g_dx is not None or second):
        acc = g_dx * dya if g_dx is not None else 0
        if second:
            acc = acc + x * u
        d_s = acc.sum(dim=(2, 3)).to(scale.dtype)
    if need[3] and noise is not None and second:
        d_n = u.sum(dim=1, keepdim=True).sum_to_size(noise.shape).to(noise.dtype)
    if need[4] and b is not None and second:
        d_b = u.sum(dim=(0, 2, 3)).to(b.dtype)
    return d_dy, d_x, d_s, d_n, d_b


def scale_bias_act(
    x: torch.Tensor, scale: torch.Tensor | None = None, noise: torch.Tensor | None = None,
    b: torch.Tensor | None = None, act: str = "linear", alpha: float | None = None,
    gain: float | None = None, clamp: float | None = None, impl: str | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``clamp(act(x * scale[n, c] + noise + b[c]) * gain, -clamp, clamp) + residual``.

    Args:
        x: input ``[N, C, H, W]`` (fp32/bf16/fp16), contiguous or channels_last.
        scale: per-sample channel scale ``[N, C]`` or ``None``.
        noise: ``None`` or a tensor broadcastable to ``[N, 1, H, W]``.
        b: bias ``[C]`` or ``None``.
        act: one of :data:`~dgan.ops.ACTIVATIONS`.
        alpha: lrelu slope (default 0.2); ignored by the other activations.
        gain: output scale (default per activation, as :func:`~dgan.ops.bias_act`).
        clamp: clamp bound after the gain, or ``None``.
        impl: ``'reference'``, ``'fused'`` or ``'auto'``; ``None`` uses the global switch.
        residual: ``None`` or a tensor of ``x``'s shape added to the result (after the
            clamp), e.g. the skip branch of a residual block: one read in the same pass
            instead of a separate add. Its gradient is the incoming gradient itself.

    Returns:
        Tensor with the shape, dtype and memory layout of ``x``. See the module docstring
        for what the fused path fuses and which derivative orders it covers.
    """
    _check_shapes(x, scale, noise, b)
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual {tuple(residual.shape)} must have x's shape "
                         f"{tuple(x.shape)}")
    if not use_fused("scale_bias_act", x, impl):
        return scale_bias_act_reference(x, scale, noise, b, act, alpha, gain, clamp, residual)
    alpha, gain, clamp = _resolve(act, alpha, gain, clamp)
    return _ScaleBiasActFused.apply(x, scale, noise, b, residual, act, alpha, gain, clamp)
