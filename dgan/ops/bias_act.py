"""Fused bias + activation + gain + clamp: ``y = clamp(act(x + b) * gain, -clamp, clamp)``.

Shapes: ``x`` is any tensor ``[..., C, ...]`` with the channel axis at ``dim``; ``b`` is
``[C]`` (or ``None``). The output has the shape, dtype and memory layout of ``x``.
Supported dtypes: float32, bfloat16, float16 (the fused kernel computes in fp32).

Activations and their defaults (StyleGAN conventions)::

    act       default alpha  default gain
    linear    -              1
    relu      -              sqrt(2)
    lrelu     0.2            sqrt(2)
    tanh      -              1
    sigmoid   -              1
    elu       -              1
    selu      -              1
    softplus  -              1
    swish     -              sqrt(2)

``clamp`` (``None`` or ``< 0`` disables) is applied after the gain; the gradient is zero
where the output was clamped.

The fused path runs one Triton kernel in three modes: the forward (autograd Function
``_BiasActFused``), its gradient ``dx = dy * act'(x+b) * gain * mask`` (a second Function,
``_BiasActGradFused``, so that it can itself be differentiated), and, in that Function's
backward, ``act''`` for the second derivative. First and second derivatives are therefore
fused; third derivatives are not supported on the fused path (the ``act''`` launch is not
recorded by autograd). The mask is recomputed from ``x`` so only ``x`` and ``b`` are saved.
"""

from __future__ import annotations

import math

import torch

from dgan.ops._dispatch import use_fused

ACTIVATIONS: dict[str, tuple[float, float]] = {
    # name: (default alpha, default gain)
    "linear": (0.0, 1.0),
    "relu": (0.0, math.sqrt(2)),
    "lrelu": (0.2, math.sqrt(2)),
    "tanh": (0.0, 1.0),
    "sigmoid": (0.0, 1.0),
    "elu": (0.0, 1.0),
    "selu": (0.0, 1.0),
    "softplus": (0.0, 1.0),
    "swish": (0.0, math.sqrt(2)),
}

# Activations whose second derivative is zero everywhere: their double backward needs no kernel.
_PIECEWISE_LINEAR = {"linear", "relu", "lrelu"}


def _resolve(act: str, alpha: float | None, gain: float | None, clamp: float | None):
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; expected one of {sorted(ACTIVATIONS)}")
    def_alpha, def_gain = ACTIVATIONS[act]
    alpha = float(def_alpha if alpha is None else alpha)
    gain = float(def_gain if gain is None else gain)
    clamp = float(clamp if clamp is not None else -1.0)
    return alpha, gain, clamp


def _apply_act(x: torch.Tensor, act: str, alpha: float) -> torch.Tensor:
    f = torch.nn.functional
    if act == "linear":
        return x
    if act == "relu":
        return torch.relu(x)
    if act == "lrelu":
        return f.leaky_relu(x, alpha)
    if act == "tanh":
        return torch.tanh(x)
    if act == "sigmoid":
        return torch.sigmoid(x)
    if act == "elu":
        return f.elu(x)
    if act == "selu":
        return torch.selu(x)
    if act == "softplus":
        return f.softplus(x)
    return x * torch.sigmoid(x)


def bias_act_reference(
    x: torch.Tensor, b: torch.Tensor | None = None, dim: int = 1, act: str = "linear",
    alpha: float | None = None, gain: float | None = None, clamp: float | None = None,
) -> torch.Tensor:
    """Plain PyTorch version; autograd provides derivatives of every order."""
    alpha, gain, clamp = _resolve(act, alpha, gain, clamp)
    if b is not None:
        shape = [1] * x.ndim
        shape[dim] = -1
        x = x + b.to(x.dtype).reshape(shape)
    x = _apply_act(x, act, alpha)
    if gain != 1:
        x = x * gain
    if clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def _reduce_bias(dx: torch.Tensor, dim: int, b: torch.Tensor) -> torch.Tensor:
    dims = [d for d in range(dx.ndim) if d != dim]
    return dx.sum(dim=dims, dtype=torch.float32).to(b.dtype)


class _BiasActFused(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b, dim, act, alpha, gain, clamp):
        from dgan.ops import _bias_act_triton as k

        ctx.save_for_backward(x, b)
        ctx.spec = (dim, act, alpha, gain, clamp)
        return k.launch(0, x, b, None, dim, act, alpha, gain, clamp)

    @staticmethod
    def backward(ctx, dy):
        x, b = ctx.saved_tensors
        dim = ctx.spec[0]
        dx = _BiasActGradFused.apply(dy, x, b, *ctx.spec)
        db = _reduce_bias(dx, dim, b) if b is not None and ctx.needs_input_grad[1] else None
        return dx, db, None, None, None, None, None


class _BiasActGradFused(torch.autograd.Function):
    """``dx = dy * d(bias_act)/dx`` as a differentiable function of ``(dy, x, b)``."""

    @staticmethod
    def forward(ctx, dy, x, b, dim, act, alpha, gain, clamp):
        from dgan.ops import _bias_act_triton as k

        # dy is only needed for act'' (zero for piecewise-linear activations): not kept otherwise.
        ctx.save_for_backward(None if act in _PIECEWISE_LINEAR else dy, x, b)
        ctx.spec = (dim, act, alpha, gain, clamp)
        return k.launch(1, x, b, dy, dim, act, alpha, gain, clamp)

    @staticmethod
    def backward(ctx, d_dx):
        from dgan.ops import _bias_act_triton as k

        dy, x, b = ctx.saved_tensors
        dim, act = ctx.spec[0], ctx.spec[1]
        # dx is linear in dy, so d(dx)/d(dy) applied to d_dx is the same first-derivative map.
        d_dy = _BiasActGradFused.apply(d_dx, x, b, *ctx.spec) if ctx.needs_input_grad[0] else None
        d_x = d_b = None
        if (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]) and act not in _PIECEWISE_LINEAR:
            d_x = k.launch(2, x, b, d_dx * dy, *ctx.spec)
            if b is not None and ctx.needs_input_grad[2]:
                d_b = _reduce_bias(d_x, dim, b)
        # Piecewise-linear activations: act'' = 0, so x and b get no gradient here. None
        # tells autograd exactly that, without writing a tensor of zeros the size of x.
        return d_dy, d_x, d_b, None, None, None, None, None


def bias_act(
    x: torch.Tensor, b: torch.Tensor | None = None, dim: int = 1, act: str = "linear",
    alpha: float | None = None, gain: float | None = None, clamp: float | None = None,
    impl: str | None = None,
) -> torch.Tensor:
    """Add bias ``b`` along ``dim``, apply ``act``, multiply by ``gain``, clamp to ``±clamp``.

    Args:
        x: input ``[..., C, ...]`` (fp32/bf16/fp16).
        b: bias ``[C]`` or ``None``; cast to ``x``'s dtype in the reference, read in fp32 fused.
        dim: channel axis of ``x`` that ``b`` broadcasts along.
        act: one of :data:`ACTIVATIONS`.
        alpha: lrelu slope (default 0.2); ignored by the other activations.
        gain: output scale (default per activation, see the module docstring).
        clamp: clamp bound after the gain, or ``None``.
        impl: ``'reference'``, ``'fused'`` or ``'auto'``; ``None`` uses the global switch.

    Returns:
        Tensor with the shape, dtype and layout of ``x``.
    """
    if b is not None and (b.ndim != 1 or b.shape[0] != x.shape[dim]):
        raise ValueError(f"bias shape {tuple(b.shape)} does not match x.shape[{dim}]={x.shape[dim]}")
    if not use_fused("bias_act", x, impl):
        return bias_act_reference(x, b, dim, act, alpha, gain, clamp)
    alpha, gain, clamp = _resolve(act, alpha, gain, clamp)
    dim = dim % x.ndim
    return _BiasActFused.apply(x, b, dim, act, alpha, gain, clamp)
