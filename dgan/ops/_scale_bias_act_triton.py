"""Triton kernels behind :mod:`dgan.ops.scale_bias_act` (imported lazily, only on the fused path).

``v = x * s[n, c] + noise[n, p] + b[c]``, ``y = clamp(act(v) * gain)``; ``p = h * W + w`` is
the pixel index, which has a single stride in both NCHW (1) and NHWC (C), so one kernel
serves both layouts: a program owns one sample ``n``, a block of ``BLOCK_C`` channels and a
chunk of pixels, which it walks in ``[BLOCK_P, BLOCK_C]`` tiles. The layout is a constexpr
(``CHANNELS_LAST``), so the contiguous axis of every tile (C for NHWC, P for NCHW) has a
literal stride 1 and loads/stores vectorise along it.

Three kernels, all computing in fp32 and loading/storing the tensors' own dtypes:

* ``_sba_fwd_kernel``: ``y``. Reads ``x`` once, writes ``y`` once.
* ``_sba_bwd_kernel``: with ``A = act'(v) * gain * mask`` (``mask``: unclamped output strictly
  inside ``(-clamp, clamp)``, recomputed from ``x``) and ``dv = dy * A``: ``dx = dv * s`` and,
  in the same pass, per-program partial sums of ``dv * x`` and ``dv`` over the program's
  pixels (for ``d scale`` and ``d b``) and of ``dv`` over its channels (for ``d noise``).
  Reads ``dy`` and ``x`` once, writes ``dx`` once.
* ``_sba_bwd2_kernel``: the derivative of the backward (see :mod:`dgan.ops.scale_bias_act`).
  Reads ``x``, ``dy`` and the incoming ``g_dx`` once, writes ``d dy`` and ``d x``.

Reductions are deterministic: partial sums go to small fp32 buffers indexed by program
(``[chunks, N, C]`` and ``[channel blocks, N, P]``) and are finished with ``torch.sum``; the
partition depends only on the shape, so repeated runs give bit-identical gradients.
Every ``NEED_*`` / ``HAS_*`` flag is a constexpr: what is not asked for is not computed.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from dgan.ops._bias_act_triton import ACT_IDS, _act_and_derivs

# Tensors at least this large (elements) use 64-bit index arithmetic; tests lower it.
INDEX_64_MIN_NUMEL = 2**31
# The CPU interpreter runs programs one at a time in numpy: big tiles, few programs.
_INTERPRETER_BLOCK = 8192
_INTERPRETER_PROGRAMS = 1
# GPU: elements per tile and the number of programs a launch aims for (each program loops
# over a chunk of pixels, so fewer, longer programs mean fewer partial sums), and NUM_WARPS,
# warps per program. ``benchmarks/ops_parity.py --sweep`` times the alternatives; on an
# H200 (bf16, batch 64, benchmarks/RESULTS.md) 1K-element tiles at 4 warps took 0.89x the
# time of 2K tiles on the 256x256 synthesis epilogue and 0.82x on D's activation + residual,
# the only tiling faster than 2K on both.
TILE = 1024
TARGET_PROGRAMS = 4096
MAX_BLOCK_C = 64
NUM_WARPS = 4


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _tile_index(n, p, c, C, P, pm, cm, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
                CHANNELS_LAST: tl.constexpr, EVEN_P: tl.constexpr, EVEN_C: tl.constexpr):
    """Element offsets and mask of a ``[BLOCK_P, BLOCK_C]`` tile of sample ``n``.

    A mask that is constant along the contiguous axis keeps the accesses vectorised, so that
    part of it is dropped when it is known to be all-true.
    """
    if CHANNELS_LAST:
        off = n * P * C + p[:, None] * C + c[None, :]
    else:
        off = n * C * P + c[None, :] * P + p[:, None]
    m = pm[:, None] & cm[None, :]
    if CHANNELS_LAST:
        if EVEN_C:
            m = tl.broadcast_to(pm[:, None], [BLOCK_P, BLOCK_C])
    else:
        if EVEN_P:
            m = tl.broadcast_to(cm[None, :], [BLOCK_P, BLOCK_C])
    return off, m


@triton.jit
def _program(nchunks, chunk, C, P, BLOCK_C: tl.constexpr, INDEX_64: tl.constexpr):
    """``(n, chunk index, first pixel, end pixel, channels, channel mask)`` of this program."""
    pid = tl.program_id(0)
    pid_c = tl.program_id(1)
    if INDEX_64:
        pid = pid.to(tl.int64)
        pid_c = pid_c.to(tl.int64)
    n = pid // nchunks
    k = pid % nchunks
    p_lo = k * chunk
    p_hi = tl.minimum(p_lo + chunk, P)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    return n, k, p_lo, p_hi, c, c < C


@triton.jit
def _channel_vec(ptr, n, c, cm, sn, sc, HAS: tl.constexpr):
    """``ptr[n * sn + c * sc]`` in fp32, or 1 when absent (the scale's identity)."""
    if HAS:
        out = tl.load(ptr + n * sn + c * sc, mask=cm, other=0.0).to(tl.float32)
    else:
        out = tl.full(c.shape, 1.0, tl.float32)
    return out


@triton.jit
def _load_tile(p0, p_hi, n, c, cm, C, P, x_ptr, nz_ptr, s, bb, snn,
               HAS_SCALE: tl.constexpr, HAS_NOISE: tl.constexpr, HAS_BIAS: tl.constexpr,
               BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, CHANNELS_LAST: tl.constexpr,
               EVEN_P: tl.constexpr, EVEN_C: tl.constexpr):
    """The tile of pixels ``[p0, p0 + BLOCK_P)``: ``(p, pixel mask, offsets, mask, x, v)``
    with ``x`` and ``v = x * s + noise + b`` in fp32."""
    p = p0 + tl.arange(0, BLOCK_P)
    pm = p < p_hi
    off, m = _tile_index(n, p, c, C, P, pm, cm, BLOCK_P, BLOCK_C, CHANNELS_LAST, EVEN_P, EVEN_C)
    x = tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32)
    v = x
    if HAS_SCALE:
        v = v * s[None, :]
    if HAS_NOISE:
        v += tl.load(nz_ptr + n * snn + p, mask=pm, other=0.0).to(tl.float32)[:, None]
    if HAS_BIAS:
        v += bb[None, :]
    return p, pm, off, m, x, v


@triton.jit
def _slopes(v, ACT: tl.constexpr, alpha, gain, clamp, HAS_CLAMP: tl.constexpr):
    """``(y, A, A2)``: clamped output, ``act' * gain * mask`` and ``act'' * gain * mask``."""
    f, d1, d2 = _act_and_derivs(v, ACT, alpha)
    y = f * gain
    a1 = d1 * gain
    a2 = d2 * gain
    if HAS_CLAMP:
        inside = tl.abs(y) < clamp
        a1 = tl.where(inside, a1, tl.zeros_like(a1))
        a2 = tl.where(inside, a2, tl.zeros_like(a2))
        y = tl.minimum(tl.maximum(y, -clamp), clamp)
    return y, a1, a2


@triton.jit
def _sba_fwd_kernel(
    x_ptr, s_ptr, nz_ptr, b_ptr, r_ptr, out_ptr,
    C, P, nchunks, chunk, ssn, ssc, snn, alpha, gain, clamp,
    ACT: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_NOISE: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_CLAMP: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, EVEN_P: tl.constexpr, EVEN_C: tl.constexpr,
    INDEX_64: tl.constexpr,
):
    # (Not ``_`` for the unused chunk index: the loop below rebinds ``_`` to a tile, and a
    # compiled loop needs every variable it carries to keep one type.)
    n, k, p_lo, p_hi, c, cm = _program(nchunks, chunk, C, P, BLOCK_C, INDEX_64)
    s = _channel_vec(s_ptr, n, c, cm, ssn, ssc, HAS_SCALE)
    bb = _channel_vec(b_ptr, 0, c, cm, 0, 1, HAS_BIAS)
    for p0 in range(p_lo, p_hi, BLOCK_P):
        p, pm, off, m, x, v = _load_tile(p0, p_hi, n, c, cm, C, P, x_ptr, nz_ptr, s, bb, snn,
                                         HAS_SCALE, HAS_NOISE, HAS_BIAS, BLOCK_P, BLOCK_C,
                                         CHANNELS_LAST, EVEN_P, EVEN_C)
        y, _, _ = _slopes(v, ACT, alpha, gain, clamp, HAS_CLAMP)
        if HAS_RESIDUAL:  # same layout as x (the launcher sees to it): the same offsets
            y += tl.load(r_ptr + off, mask=m, other=0.0).to(tl.float32)
        tl.store(out_ptr + off, y.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _sba_bwd_kernel(
    x_ptr, s_ptr, nz_ptr, b_ptr, dy_ptr, dx_ptr, gs_ptr, gb_ptr, gn_ptr,
    N, C, P, nchunks, chunk, ssn, ssc, snn, alpha, gain, clamp,
    ACT: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_NOISE: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_CLAMP: tl.constexpr,
    NEED_DX: tl.constexpr, NEED_GS: tl.constexpr, NEED_GB: tl.constexpr, NEED_GN: tl.constexpr,
    CHANNELS_LAST: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    EVEN_P: tl.constexpr, EVEN_C: tl.constexpr, INDEX_64: tl.constexpr,
):
    # gs/gb: [nchunks, N, C] partial sums over this program's pixels; gn: [channel blocks, N, P]
    # partial sums over this program's channels.
    n, k, p_lo, p_hi, c, cm = _program(nchunks, chunk, C, P, BLOCK_C, INDEX_64)
    s = _channel_vec(s_ptr, n, c, cm, ssn, ssc, HAS_SCALE)
    bb = _channel_vec(b_ptr, 0, c, cm, 0, 1, HAS_BIAS)
    acc_gs = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    acc_gb = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    gn_row = gn_ptr + (tl.program_id(1) * N + n) * P
    for p0 in range(p_lo, p_hi, BLOCK_P):
        p, pm, off, m, x, v = _load_tile(p0, p_hi, n, c, cm, C, P, x_ptr, nz_ptr, s, bb, snn,
                                         HAS_SCALE, HAS_NOISE, HAS_BIAS, BLOCK_P, BLOCK_C,
                                         CHANNELS_LAST, EVEN_P, EVEN_C)
        _, a1, _ = _slopes(v, ACT, alpha, gain, clamp, HAS_CLAMP)
        dv = tl.load(dy_ptr + off, mask=m, other=0.0).to(tl.float32) * a1
        if NEED_DX:
            dx = dv
            if HAS_SCALE:
                dx = dv * s[None, :]
            tl.store(dx_ptr + off, dx.to(dx_ptr.dtype.element_ty), mask=m)
        if NEED_GS:
            acc_gs += dv * x
        if NEED_GB:
            acc_gb += dv
        if NEED_GN:
            tl.store(gn_row + p, tl.sum(dv, axis=1), mask=pm)
    part = (k * N + n) * C + c
    if NEED_GS:
        tl.store(gs_ptr + part, tl.sum(acc_gs, axis=0), mask=cm)
    if NEED_GB:
        tl.store(gb_ptr + part, tl.sum(acc_gb, axis=0), mask=cm)


@triton.jit
def _sba_bwd2_kernel(
    x_ptr, s_ptr, nz_ptr, b_ptr, dy_ptr, gdx_ptr, gds_ptr, gdb_ptr, gdn_ptr,
    ddy_ptr, dx_ptr, ds_ptr, db_ptr, dn_ptr,
    N, C, P, nchunks, chunk, ssn, ssc, snn, sgsn, sgsc, sgnn, alpha, gain, clamp,
    ACT: tl.constexpr, SECOND_ORDER: tl.constexpr, HAS_SCALE: tl.constexpr,
    HAS_NOISE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_CLAMP: tl.constexpr,
    HAS_GDX: tl.constexpr, HAS_GDS: tl.constexpr, HAS_GDB: tl.constexpr, HAS_GDN: tl.constexpr,
    NEED_DDY: tl.constexpr, NEED_DX: tl.constexpr, NEED_DS: tl.constexpr,
    NEED_DB: tl.constexpr, NEED_DN: tl.constexpr, LOAD_DY: tl.constexpr,
    CHANNELS_LAST: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    EVEN_P: tl.constexpr, EVEN_C: tl.constexpr, INDEX_64: tl.constexpr,
):
    # With w = g_dx * s + g_ds * x + g_db + g_dn (the incoming gradients pushed forward to v)
    # and u = dy * A2 * w (zero for piecewise-linear activations, SECOND_ORDER=False):
    #   d dy = A * w,   d x = g_ds * dy * A + s * u,   d s = sum_p (g_dx * dy * A + x * u),
    #   d b = sum_{n,p} u,   d noise = sum_c u.
    n, k, p_lo, p_hi, c, cm = _program(nchunks, chunk, C, P, BLOCK_C, INDEX_64)
    s = _channel_vec(s_ptr, n, c, cm, ssn, ssc, HAS_SCALE)
    bb = _channel_vec(b_ptr, 0, c, cm, 0, 1, HAS_BIAS)
    gs = _channel_vec(gds_ptr, n, c, cm, sgsn, sgsc, HAS_GDS)
    gb = _channel_vec(gdb_ptr, 0, c, cm, 0, 1, HAS_GDB)
    acc_ds = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    acc_db = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    dn_row = dn_ptr + (tl.program_id(1) * N + n) * P
    for p0 in range(p_lo, p_hi, BLOCK_P):
        p, pm, off, m, x, v = _load_tile(p0, p_hi, n, c, cm, C, P, x_ptr, nz_ptr, s, bb, snn,
                                         HAS_SCALE, HAS_NOISE, HAS_BIAS, BLOCK_P, BLOCK_C,
                                         CHANNELS_LAST, EVEN_P, EVEN_C)
        _, a1, a2 = _slopes(v, ACT, alpha, gain, clamp, HAS_CLAMP)
        w = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
        if HAS_GDX:
            gx = tl.load(gdx_ptr + off, mask=m, other=0.0).to(tl.float32)
            if HAS_SCALE:
                w += gx * s[None, :]
            else:
                w += gx
        if HAS_GDS:
            w += gs[None, :] * x
        if HAS_GDB:
            w += gb[None, :]
        if HAS_GDN:
            w += tl.load(gdn_ptr + n * sgnn + p, mask=pm, other=0.0).to(tl.float32)[:, None]
        if NEED_DDY:
            tl.store(ddy_ptr + off, (a1 * w).to(ddy_ptr.dtype.element_ty), mask=m)
        if LOAD_DY:
            dy = tl.load(dy_ptr + off, mask=m, other=0.0).to(tl.float32)
            dya = dy * a1
            u = dy * a2 * w
            if NEED_DX:
                dx = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
                if HAS_GDS:
                    dx += gs[None, :] * dya
                if SECOND_ORDER:
                    if HAS_SCALE:
                        dx += u * s[None, :]
                    else:
                        dx += u
                tl.store(dx_ptr + off, dx.to(dx_ptr.dtype.element_ty), mask=m)
            if NEED_DS:
                if HAS_GDX:
                    acc_ds += gx * dya
                if SECOND_ORDER:
                    acc_ds += x * u
            if NEED_DB:
                acc_db += u
            if NEED_DN:
                tl.store(dn_row + p, tl.sum(u, axis=1), mask=pm)
    part = (k * N + n) * C + c
    if NEED_DS:
        tl.store(ds_ptr + part, tl.sum(acc_ds, axis=0), mask=cm)
    if NEED_DB:
        tl.store(db_ptr + part, tl.sum(acc_db, axis=0), mask=cm)


# --------------------------------------------------------------------------------------------
# Launchers


class _Plan:
    """Layout, tiling and grid of one launch over ``x: [N, C, H, W]``."""

    def __init__(self, x: torch.Tensor):
        n, c, h, w = x.shape
        self.n, self.c, self.h, self.w, self.p = n, c, h, w, h * w
        # Dense in NCHW or NHWC; a tensor that is both (C == 1 or H * W == 1) addresses alike.
        self.channels_last = not x.is_contiguous()
        self.fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        tile = _INTERPRETER_BLOCK if _interpreted() else TILE
        programs = _INTERPRETER_PROGRAMS if _interpreted() else TARGET_PROGRAMS
        p = max(self.p, 1)
        if self.channels_last:
            # Channels contiguous: up to 64 of them per row; a power-of-two factor of C of at
            # least 16 avoids the channel mask (e.g. C = 48 -> 16).
            bc = min(MAX_BLOCK_C, triton.next_power_of_2(c))
            low = c & -c
            if c % bc and low >= 16:
                bc = min(MAX_BLOCK_C, low)
            bp = max(min(tile // bc, triton.next_power_of_2(p)), 1)
        else:
            # Pixels contiguous: up to a quarter tile of them per column, channels fill the rest.
            bp = min(triton.next_power_of_2(p), max(tile // 4, 1))
            bc = max(min(tile // bp, triton.next_power_of_2(c), MAX_BLOCK_C), 1)
        self.block_p, self.block_c = bp, bc
        self.cblocks = triton.cdiv(c, bc)
        ptiles = triton.cdiv(p, bp)
        chunks = max(1, min(ptiles, triton.cdiv(programs, max(n * self.cblocks, 1))))
        per = triton.cdiv(ptiles, chunks)
        self.chunk = per * bp
        self.nchunks = triton.cdiv(ptiles, per)
        self.grid = (n * self.nchunks, self.cblocks)
        numel = x.numel()
        # Masked lanes of the last tiles address up to a tile row/column past the end.
        reach = numel + (bp + 1) * (c + bc) + (bc + 1) * p
        self.index_64 = reach >= INDEX_64_MIN_NUMEL
        self.consts = {
            "CHANNELS_LAST": self.channels_last, "BLOCK_P": bp, "BLOCK_C": bc,
            "EVEN_P": self.p % bp == 0, "EVEN_C": c % bc == 0, "INDEX_64": self.index_64,
            "num_warps": NUM_WARPS,
        }

    def dense(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (shaped like x) in this plan's layout, copied only if needed."""
        if t.is_contiguous(memory_format=self.fmt):
            return t
        return t.contiguous(memory_format=self.fmt)

    def rows(self, t: torch.Tensor | None) -> tuple[torch.Tensor | None, int]:
        """A tensor broadcastable to ``[N, 1, H, W]`` as ``(base, n_stride)``: element
        ``(n, p)`` is ``base[n * n_stride + p]``; a tensor shared by all samples stays one
        ``[H, W]`` plane (stride 0)."""
        if t is None:
            return None, 0
        t = t.expand(self.n, 1, self.h, self.w)
        if t.stride(0) == 0 or self.n == 1:
            return t[0, 0].contiguous(), 0
        return t.reshape(self.n, self.p).contiguous(), self.p

    def finish_rows(self, part: torch.Tensor, shape: torch.Size, dtype: torch.dtype):
        """``[cblocks, N, P]`` partial sums -> summed over channel blocks, then to ``shape``."""
        g = part.sum(0) if part.shape[0] > 1 else part[0]
        return g.view(self.n, 1, self.h, self.w).sum_to_size(shape).to(dtype)

    def partial_nc(self, device) -> torch.Tensor:
        return torch.empty((self.nchunks, self.n, self.c), dtype=torch.float32, device=device)

    def partial_rows(self, device) -> torch.Tensor:
        return torch.empty((self.cblocks, self.n, self.p), dtype=torch.float32, device=device)


def _spec_args(act, alpha, gain, clamp):
    """Runtime scalars and constexpr flags of the activation spec."""
    scalars = (float(alpha), float(gain), float(clamp if clamp >= 0 else 0.0))
    return scalars, {"ACT": ACT_IDS[act], "HAS_CLAMP": clamp >= 0}


def _prepare(x, scale, b):
    x = x if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last) \
        else x.contiguous()
    plan = _Plan(x)
    b = b.contiguous() if b is not None else None
    ss = (scale.stride(0), scale.stride(1)) if scale is not None else (0, 0)
    return x, plan, b, ss


def forward(x, scale, noise, b, act, alpha, gain, clamp, residual=None) -> torch.Tensor:
    """``y`` (plus ``residual``, if given) with the shape, dtype and layout of ``x``."""
    x, plan, b, ss = _prepare(x, scale, b)
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    if residual is not None and residual.stride() != x.stride():
        residual = torch.empty_like(x, dtype=residual.dtype).copy_(residual)
    nz, snn = plan.rows(noise)
    scalars, flags = _spec_args(act, alpha, gain, clamp)
    _sba_fwd_kernel[plan.grid](
        x, scale if scale is not None else x, nz if nz is not None else x,
        b if b is not None else x, residual if residual is not None else x, out,
        plan.c, plan.p, plan.nchunks, plan.chunk, *ss, snn, *scalars,
        HAS_SCALE=scale is not None, HAS_NOISE=noise is not None, HAS_BIAS=b is not None,
        HAS_RESIDUAL=residual is not None, **flags, **plan.consts,
    )
    return out


def backward(dy, x, scale, noise, b, need, act, alpha, gain, clamp):
    """``(dx, d scale, d noise, d b)`` for the flags ``need``; ``None`` where not needed."""
    need_dx, need_gs, need_gn, need_gb = need
    need_gs &= scale is not None
    need_gn &= noise is not None
    need_gb &= b is not None
    x, plan, b_, ss = _prepare(x, scale, b)
    dev = x.device
    dx = torch.empty_like(x) if need_dx else None
    gs = plan.partial_nc(dev) if need_gs else None
    gb = plan.partial_nc(dev) if need_gb else None
    gn = plan.partial_rows(dev) if need_gn else None
    if x.numel() == 0:
        for t in (dx, gs, gb, gn):
            if t is not None:
                t.zero_()
    elif need_dx or need_gs or need_gn or need_gb:
        dy = plan.dense(dy)
        nz, snn = plan.rows(noise)
        scalars, flags = _spec_args(act, alpha, gain, clamp)
        _sba_bwd_kernel[plan.grid](
            x, scale if scale is not None else x, nz if nz is not None else x,
            b_ if b_ is not None else x, dy,
            dx if dx is not None else x, gs if gs is not None else x,
            gb if gb is not None else x, gn if gn is not None else x,
            plan.n, plan.c, plan.p, plan.nchunks, plan.chunk, *ss, snn, *scalars,
            HAS_SCALE=scale is not None, HAS_NOISE=noise is not None, HAS_BIAS=b_ is not None,
            NEED_DX=need_dx, NEED_GS=need_gs, NEED_GB=need_gb, NEED_GN=need_gn,
            **flags, **plan.consts,
        )
    return (
        dx,
        gs.sum(0).to(scale.dtype) if gs is not None else None,
        plan.finish_rows(gn, noise.shape, noise.dtype) if gn is not None else None,
        gb.sum((0, 1)).to(b.dtype) if gb is not None else None,
    )


def backward2_needs(scale, noise, b, g_dx, g_gs, g_gn, g_gb, need, piecewise_linear
                    ) -> tuple[bool, bool, bool, bool, bool]:
    """Which of ``(d dy, d x, d scale, d noise, d b)`` :func:`backward2` computes: those asked
    for in ``need`` that are not identically zero given the incoming gradients."""
    need_ddy, need_dx, need_ds, need_dn, need_db = need
    has = [t is not None for t in (g_dx, g_gs, g_gb, g_gn)]
    second = not piecewise_linear
    need_ddy &= any(has)
    need_dx &= has[1] or (second and any(has))
    need_ds &= scale is not None and (has[0] or (second and any(has)))
    need_db &= b is not None and second and any(has)
    need_dn &= noise is not None and second and any(has)
    return need_ddy, need_dx, need_ds, need_dn, need_db


def backward2(dy, x, scale, noise, b, g_dx, g_gs, g_gn, g_gb, need, piecewise_linear,
              act, alpha, gain, clamp):
    """Gradients of ``backward``'s outputs, against the incoming ``g_*`` (``None`` = zero),
    with respect to ``(dy, x, scale, noise, b)`` for the flags ``need``; ``None`` = zero."""
    has = [t is not None for t in (g_dx, g_gs, g_gb, g_gn)]
    second = not piecewise_linear
    need_ddy, need_dx, need_ds, need_dn, need_db = backward2_needs(
        scale, noise, b, g_dx, g_gs, g_gn, g_gb, need, piecewise_linear)
    if not (need_ddy or need_dx or need_ds or need_db or need_dn):
        return None, None, None, None, None
    x, plan, b_, ss = _prepare(x, scale, b)
    dev = x.device
    ddy = torch.empty_like(x) if need_ddy else None
    dx = torch.empty_like(x) if need_dx else None
    ds = plan.partial_nc(dev) if need_ds else None
    db = plan.partial_nc(dev) if need_db else None
    dn = plan.partial_rows(dev) if need_dn else None
    if x.numel() == 0:
        for t in (ddy, dx, ds, db, dn):
            if t is not None:
                t.zero_()
    else:
        load_dy = need_dx or need_ds or need_db or need_dn
        dy = plan.dense(dy) if load_dy else x
        g_dx = plan.dense(g_dx) if g_dx is not None else None
        nz, snn = plan.rows(noise)
        gn, sgnn = plan.rows(g_gn)
        sgs = (g_gs.stride(0), g_gs.stride(1)) if g_gs is not None else (0, 0)
        g_gb = g_gb.contiguous() if g_gb is not None else None
        scalars, flags = _spec_args(act, alpha, gain, clamp)
        _sba_bwd2_kernel[plan.grid](
            x, scale if scale is not None else x, nz if nz is not None else x,
            b_ if b_ is not None else x, dy,
            *(t if t is not None else x for t in (g_dx, g_gs, g_gb, gn)),
            *(t if t is not None else x for t in (ddy, dx, ds, db, dn)),
            plan.n, plan.c, plan.p, plan.nchunks, plan.chunk, *ss, snn, *sgs, sgnn, *scalars,
            SECOND_ORDER=second, HAS_SCALE=scale is not None, HAS_NOISE=noise is not None,
            HAS_BIAS=b_ is not None, HAS_GDX=has[0], HAS_GDS=has[1], HAS_GDB=has[2],
            HAS_GDN=has[3], NEED_DDY=need_ddy, NEED_DX=need_dx, NEED_DS=need_ds,
            NEED_DB=need_db, NEED_DN=need_dn, LOAD_DY=load_dy, **flags, **plan.consts,
        )
    return (
        ddy,
        dx,
        ds.sum(0).to(scale.dtype) if ds is not None else None,
        plan.finish_rows(dn, noise.shape, noise.dtype) if dn is not None else None,
        db.sum((0, 1)).to(b.dtype) if db is not None else None,
    )
