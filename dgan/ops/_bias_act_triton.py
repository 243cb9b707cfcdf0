"""Triton kernel behind :mod:`dgan.ops.bias_act` (imported lazily, only on the fused path).

One elementwise kernel serves three modes so that every derivative order is fused:

* ``MODE=0``: ``out = clamp(act(x + b) * gain)``
* ``MODE=1``: ``out = g * act'(x + b) * gain * mask``  (first derivative applied to ``g``)
* ``MODE=2``: ``out = g * act''(x + b) * gain * mask`` (second derivative applied to ``g``)

``mask`` is 1 where the unclamped output lies strictly inside ``(-clamp, clamp)``. It is
recomputed from ``x`` instead of being saved, which keeps the saved state to ``x`` and ``b``.
All arithmetic is fp32; loads and stores use the tensors' own dtypes.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Tensors at least this large (elements) use 64-bit index arithmetic; tests lower it.
INDEX_64_MIN_NUMEL = 2**31
# The CPU interpreter runs programs one at a time in numpy: big blocks amortise its overhead.
_INTERPRETER_BLOCK = 8192


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"

ACT_IDS = {
    "linear": 0, "relu": 1, "lrelu": 2, "tanh": 3, "sigmoid": 4,
    "elu": 5, "selu": 6, "softplus": 7, "swish": 8,
}


@triton.jit
def _sigmoid(v):
    return 1.0 / (1.0 + tl.exp(-v))


@triton.jit
def _act_and_derivs(v, ACT: tl.constexpr, alpha):
    """Return (f(v), f'(v), f''(v)) in fp32; unused ones are dead code after specialisation."""
    zero = tl.zeros_like(v)
    one = zero + 1.0
    pos = v > 0
    if ACT == 0:
        f, d1, d2 = v, one, zero
    elif ACT == 1:
        f = tl.where(pos, v, zero)
        d1 = tl.where(pos, one, zero)
        d2 = zero
    elif ACT == 2:
        f = tl.where(pos, v, v * alpha)
        d1 = tl.where(pos, one, one * alpha)
        d2 = zero
    elif ACT == 3:
        t = 2.0 * _sigmoid(2.0 * v) - 1.0
        f = t
        d1 = 1.0 - t * t
        d2 = -2.0 * t * d1
    elif ACT == 4:
        s = _sigmoid(v)
        f = s
        d1 = s * (1.0 - s)
        d2 = d1 * (1.0 - 2.0 * s)
    elif ACT == 5:
        e = tl.exp(tl.where(pos, zero, v))
        f = tl.where(pos, v, e - 1.0)
        d1 = tl.where(pos, one, e)
        d2 = tl.where(pos, zero, e)
    elif ACT == 6:
        e = tl.exp(tl.where(pos, zero, v)) * 1.6732632423543772
        f = 1.0507009873554805 * tl.where(pos, v, e - 1.6732632423543772)
        d1 = 1.0507009873554805 * tl.where(pos, one, e)
        d2 = 1.0507009873554805 * tl.where(pos, zero, e)
    elif ACT == 7:
        s = _sigmoid(v)
        f = tl.maximum(v, zero) + tl.log(1.0 + tl.exp(-tl.abs(v)))
        d1 = s
        d2 = s * (1.0 - s)
    else:
        s = _sigmoid(v)
        f = v * s
        ds = s * (1.0 - s)
        d1 = s + v * ds
        d2 = ds * (2.0 + v * (1.0 - 2.0 * s))
    return f, d1, d2


@triton.jit
def _bias_act_kernel(
    x_ptr, b_ptr, g_ptr, out_ptr, numel, inner, channels,
    alpha, gain, clamp,
    ACT: tl.constexpr, MODE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_CLAMP: tl.constexpr,
    BLOCK: tl.constexpr, INDEX_64: tl.constexpr,
):
    # 32-bit index arithmetic unless the tensor needs more: 64-bit division is slow on GPUs.
    pid = tl.program_id(0)
    if INDEX_64:
        pid = pid.to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    valid = offs < numel
    v = tl.load(x_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    if HAS_BIAS:
        ch = (offs // inner) % channels
        v += tl.load(b_ptr + ch, mask=valid, other=0.0).to(tl.float32)
    f, d1, d2 = _act_and_derivs(v, ACT, alpha)
    y = f * gain
    if MODE == 0:
        out = y
        if HAS_CLAMP:
            out = tl.minimum(tl.maximum(out, -clamp), clamp)
    else:
        g = tl.load(g_ptr + offs, mask=valid, other=0.0).to(tl.float32)
        if MODE == 1:
            out = g * d1 * gain
        else:
            out = g * d2 * gain
        if HAS_CLAMP:
            out = tl.where(tl.abs(y) < clamp, out, tl.zeros_like(out))
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=valid)


def _dense(x: torch.Tensor) -> torch.Tensor:
    if x.is_contiguous() or (x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last)):
        return x
    return x.contiguous()


def launch(
    mode: int, x: torch.Tensor, b: torch.Tensor | None, g: torch.Tensor | None, dim: int,
    act: str, alpha: float, gain: float, clamp: float,
) -> torch.Tensor:
    """Run the kernel; ``x`` may be contiguous or channels_last, the output keeps its layout.

    For a dense tensor the index along ``dim`` of flat offset ``o`` is
    ``(o // stride[dim]) % size[dim]`` whatever the dimension order, so NCHW and NHWC
    share one kernel without copies.
    """
    x = _dense(x)
    out = torch.empty_like(x)
    if g is not None and g.stride() != x.stride():
        g = torch.empty_like(x).copy_(g)
    numel = x.numel()
    if numel == 0:
        return out
    inner = x.stride(dim) if x.ndim > 0 else 1
    channels = x.shape[dim] if x.ndim > 0 else 1
    block = _INTERPRETER_BLOCK if _interpreted() else 1024
    grid = (triton.cdiv(numel, block),)
    _bias_act_kernel[grid](
        x, b if b is not None else x, g if g is not None else x, out, numel, inner, channels,
        float(alpha), float(gain), float(clamp if clamp >= 0 else 0.0),
        ACT=ACT_IDS[act], MODE=mode, HAS_BIAS=b is not None, HAS_CLAMP=clamp >= 0, BLOCK=block,
        INDEX_64=numel + block >= INDEX_64_MIN_NUMEL,
    )
    return out
