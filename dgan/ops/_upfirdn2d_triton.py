"""Triton kernels behind :mod:`dgan.ops.upfirdn2d` (imported lazily, only on the fused path).

Direct (non-separable) evaluation: every output pixel gathers its ``FH x FW`` taps from the
virtual zero-upsampled, padded input, so upsampling, padding, filtering and downsampling
happen in one pass with no intermediate tensors. Both kernels accumulate in fp32 and write
the input's dtype; the backward is the same op with the flipped filter, so they serve the
forward and every derivative. Two kernels, chosen by :func:`launch` from the input layout:

* ``_upfirdn2d_cl_kernel`` (channels_last, the training layout; C has stride 1): a 2D tile of
  ``BLOCK_P`` output rows x ``BLOCK_C`` consecutive channels. Row indices are decomposed
  into ``(n, y, x)`` once per row, not per element, and every tap's validity and address
  are computed on the ``[BLOCK_P]`` row vector and broadcast over channels, so each load and
  store is a run of ``BLOCK_C`` contiguous elements (16-byte vectors when C is a multiple of
  8, e.g. 64: the channel mask is dropped when ``BLOCK_C`` divides C). A row is an output
  *quad* of ``UPY x UPX`` pixels handled one static phase at a time, so which taps land on
  inserted zeros is known at compile time: those taps cost nothing (with ``up=2`` and a 4x4
  filter, 12 of the 16 per phase), and the others need no division at all.
* ``_upfirdn2d_kernel`` (NCHW and any other strides): 1D over flat output offsets, each
  decomposed with div/mod in the output's memory order; taps on inserted zeros are masked
  loads. ``USE_CL_KERNEL = False`` sends channels_last inputs here too (for A/B runs).
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
# Channels_last inputs use the 2D-tiled kernel; False sends them to the flat kernel (A/B runs).
USE_CL_KERNEL = True
# Channels_last kernel on a GPU: elements per phase tile (BLOCK_P * BLOCK_C) and warps.
# H200, [64, 64, 257, 257] bf16 4x4 filter, fwd+bwd: 2048/4 ~1.9-2.0 ms (flat kernel
# 2.5-2.6 ms); 1024-4096 tiles with 2-8 warps were within run-to-run noise of it.
CL_TILE = 2048
CL_WARPS = 4


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


@triton.jit
def _upfirdn2d_cl_kernel(
    x_ptr, f_ptr, out_ptr,
    rows, C, H, W, OH, OW, OHQ, OWQ,
    sxn, sxh, sxw, son, soh, sow,
    UPX: tl.constexpr, UPY: tl.constexpr, DOWNX: tl.constexpr, DOWNY: tl.constexpr,
    PADX0: tl.constexpr, PADY0: tl.constexpr, FW: tl.constexpr, FH: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, EVEN_C: tl.constexpr,
    INDEX_64: tl.constexpr,
):
    # Channels_last: C has stride 1 in both tensors (checked by ``launch``), so every tile
    # row below is BLOCK_C consecutive elements and loads/stores vectorise along axis 1.
    # A row is an output "quad" (n, qy, qx): the UPY x UPX output pixels
    # (qy*UPY + ry, qx*UPX + rx) share one phase pattern per static (ry, rx), so which taps
    # land on inserted zeros is known at compile time (those taps are skipped outright) and
    # the source row/column of the others is qy*DOWNY + const / qx*DOWNX + const: no
    # division per tap. With UP=1 a quad is one pixel.
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    if INDEX_64:
        pid_p = pid_p.to(tl.int64)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok = p < rows
    qx = p % OWQ
    t = p // OWQ
    qy = t % OHQ
    n = t // OHQ
    x_row = x_ptr + n * sxn
    o_row = out_ptr + n * son
    c_ok = c < C
    for ry in tl.static_range(UPY):
        oy = qy * UPY + ry
        y_ok = p_ok & (oy < OH)
        for rx in tl.static_range(UPX):
            ox = qx * UPX + rx
            o_ok = y_ok & (ox < OW)
            acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
            for ty in tl.static_range(FH):
                # Row of this tap in the zero-upsampled padded input, relative to qy*UPY*DOWNY.
                dy = ry * DOWNY + ty - PADY0
                if dy % UPY == 0:
                    iy = qy * DOWNY + dy // UPY
                    ok_y = o_ok & (iy >= 0) & (iy < H)
                    for tx in tl.static_range(FW):
                        dx = rx * DOWNX + tx - PADX0
                        if dx % UPX == 0:
                            ix = qx * DOWNX + dx // UPX
                            ok = ok_y & (ix >= 0) & (ix < W)
                            src = x_row + iy * sxh + ix * sxw
                            if EVEN_C:  # row mask only: constant along C, so it vectorises
                                m = tl.broadcast_to(ok[:, None], [BLOCK_P, BLOCK_C])
                            else:
                                m = ok[:, None] & c_ok[None, :]
                            v = tl.load(src[:, None] + c[None, :], mask=m, other=0.0)
                            acc += v.to(tl.float32) * tl.load(f_ptr + ty * FW + tx)
            dst = o_row + oy * soh + ox * sow
            if EVEN_C:
                m = tl.broadcast_to(o_ok[:, None], [BLOCK_P, BLOCK_C])
            else:
                m = o_ok[:, None] & c_ok[None, :]
            tl.store(dst[:, None] + c[None, :], acc.to(out_ptr.dtype.element_ty), mask=m)


def _cl_blocks(c: int, phases: int) -> tuple[int, int]:
    """``(BLOCK_P, BLOCK_C)`` for the channels_last kernel.

    BLOCK_C is a power of two up to 64; when ``C`` is not a multiple of it but has a power-of-two
    factor of at least 16, that factor is used instead so the channel mask disappears
    (``EVEN_C``). BLOCK_P makes one phase tile about 2K elements on a GPU (a program does
    ``phases`` tiles; ``CL_TILE``) and 8K under the interpreter.
    """
    block_c = min(64, triton.next_power_of_2(c))
    low = c & -c  # largest power of two dividing c
    if c % block_c and low >= 16:
        block_c = min(64, low)
    tile = _INTERPRETER_BLOCK if _interpreted() else CL_TILE
    return max(tile // block_c, 1), block_c


def launch(
    x: torch.Tensor, f2d: torch.Tensor, upx: int, upy: int, downx: int, downy: int,
    padx0: int, padx1: int, pady0: int, pady1: int,
) -> torch.Tensor:
    """``f2d`` is the fp32 ``[FH, FW]`` correlation kernel with flip and gain already applied.

    Channels_last inputs (``C`` stride 1) take the 2D-tiled kernel, everything else the flat
    one; the output has the input's layout.
    """
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
    f2d = f2d.contiguous()
    if channels_last and USE_CL_KERNEL:
        # Not contiguous in NCHW with C > 1 means C has stride 1 (torch's channels_last check).
        assert x.stride(1) == 1 and out.stride(1) == 1
        ohq, owq = triton.cdiv(oh, upy), triton.cdiv(ow, upx)
        rows = n * ohq * owq
        block_p, block_c = _cl_blocks(c, upx * upy)
        grid = (triton.cdiv(rows, block_p), triton.cdiv(c, block_c))
        # The last program's row index reaches past ``rows`` by up to BLOCK_P, and its tiles
        # address up to a row plus BLOCK_C past the end.
        reach = max(numel, span) + (block_p + 1) * max(c, block_c) * upx * upy
        _upfirdn2d_cl_kernel[grid](
            x, f2d, out, rows, c, h, w, oh, ow, ohq, owq,
            x.stride(0), x.stride(2), x.stride(3), out.stride(0), out.stride(2), out.stride(3),
            UPX=upx, UPY=upy, DOWNX=downx, DOWNY=downy, PADX0=padx0, PADY0=pady0, FW=fw, FH=fh,
            BLOCK_P=block_p, BLOCK_C=block_c, EVEN_C=c % block_c == 0,
            INDEX_64=reach >= INDEX_64_MIN_NUMEL, num_warps=CL_WARPS,
        )
        return out
    block = _INTERPRETER_BLOCK if _interpreted() else 512
    grid = (triton.cdiv(numel, block),)
    _upfirdn2d_kernel[grid](
        x, f2d, out, numel, c, h, w, oh, ow, *x.stride(), *out.stride(),
        UPX=upx, UPY=upy, DOWNX=downx, DOWNY=downy, PADX0=padx0, PADY0=pady0, FW=fw, FH=fh,
        CHANNELS_LAST=channels_last, BLOCK=block,
        INDEX_64=max(numel, span) + block >= INDEX_64_MIN_NUMEL,
    )
    return out
