"""Triton kernel behind :mod:`dgan.ops.upfirdn2d` (imported lazily, only on the fused path).

Direct (non-separable) evaluation: every output pixel gathers its ``FH x FW`` taps from the
virtual zero-upsampled, padded input, so upsampling, padding, filtering and downsampling
happen in one pass with no intermediate tensors. Taps that fall on inserted zeros are
masked loads (no memory traffic). Strides are passed explicitly and the flat index is
decomposed in the output's memory order, so NCHW and channels_last are both coalesced.
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


@triton.jit
def _upfirdn2d_kernel(
    x_ptr, f_ptr, out_ptr,
    numel, C, H, W, OH, OW,
    sxn, sxc, sxh, sxw, son, soc, soh, sow,
    UPX: tl.constexpr, UPY: tl.constexpr, DOWNX: tl.constexpr, DOWNY: tl.constexpr,
    PADX0: tl.constexpr, PADY0: tl.constexpr, FW: tl.constexpr, FH: tl.constexpr,
    CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr, INDEX_64: tl.constexpr,
):
    # 32-bit index arithmetic unless a tensor needs more: 64-bit division is slow on GPUs.
    pid = tl.program_id(0)
    if INDEX_64:
        pid = pid.to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    valid = offs < numel
    if CHANNELS_LAST:
        c = offs % C
        rest = offs // C
        ox = rest % OW
        rest = rest // OW
        oy = rest % OH
        n = rest // OH
    else:
        ox = offs % OW
        rest = offs // OW
        oy = rest % OH
        rest = rest // OH
        c = rest % C
        n = rest // C
    base = n * sxn + c * sxc
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for ty in tl.static_range(FH):
        # Row in the zero-upsampled padded input, then back to a source row if it is not a zero.
        uy = oy * DOWNY + ty - PADY0
        iy = uy // UPY
        ok_y = (uy >= 0) & (uy % UPY == 0) & (iy < H)
        for tx in tl.static_range(FW):
            ux = ox * DOWNX + tx - PADX0
            ix = ux // UPX
            ok = valid & ok_y & (ux >= 0) & (ux % UPX == 0) & (ix < W)
            v = tl.load(x_ptr + base + iy * sxh + ix * sxw, mask=ok, other=0.0)
            acc += v.to(tl.float32) * tl.load(f_ptr + ty * FW + tx)
    tl.store(out_ptr + n * son + c * soc + oy * soh + ox * sow,
             acc.to(out_ptr.dtype.element_ty), mask=valid)


def launch(
    x: torch.Tensor, f2d: torch.Tensor, upx: int, upy: int, downx: int, downy: int,
    padx0: int, padx1: int, pady0: int, pady1: int,
) -> torch.Tensor:
    """``f2d`` is the fp32 ``[FH, FW]`` correlation kernel with flip and gain already applied."""
    n, c, h, w = x.shape
    fh, fw = f2d.shape
    oh = (h * upy + pady0 + pady1 - fh) // downy + 1
    ow = (w * upx + padx0 + padx1 - fw) // downx + 1
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty((n, c, max(oh, 0), max(ow, 0)), dtype=x.dtype, device=x.device,
                      memory_format=fmt)
    numel = out.numel()
    if numel == 0:
        return out
    span = 1 + sum((s - 1) * st for s, st in zip(x.shape, x.stride()))
    block = _INTERPRETER_BLOCK if _interpreted() else 512
    grid = (triton.cdiv(numel, block),)
    _upfirdn2d_kernel[grid](
        x, f2d.contiguous(), out, numel, c, h, w, oh, ow, *x.stride(), *out.stride(),
        UPX=upx, UPY=upy, DOWNX=downx, DOWNY=downy, PADX0=padx0, PADY0=pady0, FW=fw, FH=fh,
        CHANNELS_LAST=channels_last, BLOCK=block,
        INDEX_64=max(numel, span) + block >= INDEX_64_MIN_NUMEL,
    )
    return out
