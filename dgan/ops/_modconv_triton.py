"""Triton kernel behind :func:`dgan.ops.modulated_conv2d.modulate_weight` (fused path).

One program per ``(n, o)`` row computes the demodulation coefficient
``d = rsqrt(sum_{i,k} (W[o,i,k] * s[n,i])**2 + 1e-8)`` in a first pass over the row and
writes ``W[o,i,k] * s[n,i] * d`` in a second pass. The per-sample weights are read
once from a small, cache-resident ``W`` and written once, instead of the four full
passes over ``[N, O, I, k, k]`` that the unfused PyTorch expression makes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _modulate_kernel(
    w_ptr, s_ptr, out_ptr, O, I, K, eps,
    DEMOD: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    n = row // O
    o = row % O
    ik = I * K
    w_row = w_ptr + o * ik
    s_row = s_ptr + n * I
    out_row = out_ptr + row * ik
    scale = 1.0
    if DEMOD:
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, ik, BLOCK):
            j = start + tl.arange(0, BLOCK)
            m = j < ik
            v = tl.load(w_row + j, mask=m, other=0.0).to(tl.float32)
            v *= tl.load(s_row + j // K, mask=m, other=0.0).to(tl.float32)
            acc += v * v
        scale = 1.0 / tl.sqrt(tl.sum(acc, axis=0) + eps)
    for start in range(0, ik, BLOCK):
        j = start + tl.arange(0, BLOCK)
        m = j < ik
        v = tl.load(w_row + j, mask=m, other=0.0).to(tl.float32)
        v *= tl.load(s_row + j // K, mask=m, other=0.0).to(tl.float32)
        tl.store(out_row + j, (v * scale).to(out_ptr.dtype.element_ty), mask=m)


def launch(weight: torch.Tensor, styles: torch.Tensor, demodulate: bool, eps: float,
           out_dtype: torch.dtype) -> torch.Tensor:
    """``weight: [O, I, kh, kw]``, ``styles: [N, I]`` -> ``[N, O, I, kh, kw]`` in ``out_dtype``."""
    o, i, kh, kw = weight.shape
    n = styles.shape[0]
    out = torch.empty((n, o, i, kh, kw), dtype=out_dtype, device=weight.device)
    if out.numel() == 0:
        return out
    block = min(1024, triton.next_power_of_2(i * kh * kw))
    _modulate_kernel[(n * o,)](
        weight.contiguous(), styles.contiguous(), out, o, i, kh * kw, float(eps),
        DEMOD=demodulate, BLOCK=block,
    )
    return out
