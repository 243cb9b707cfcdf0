"""Triton kernels on the CPU under ``TRITON_INTERPRET=1``, checked against the reference.

Triton decides at ``@triton.jit`` decoration time whether to interpret, so each check runs
in a fresh interpreter process with the variable set; this keeps the mode from leaking
into GPU tests that run in the same pytest session. Inputs are float64 so that the only
differences are the kernels' fp32 arithmetic (tolerance: 1e-5 relative to the max).
"""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial

import pytest

from dgan import ops

pytest.importorskip("triton")


def _close(a, b, tol: float = 1e-5) -> None:
    a, b = a.detach(), b.detach()
    scale = max(float(b.abs().max()), 1.0)
    err = float((a.double() - b.double()).abs().max())
    assert err <= tol * scale, f"max abs err {err} > {tol} * {scale}"


def _fwd_grad_gradgrad(fn, inputs, impl: str):
    import torch

    y = fn(*inputs, impl=impl)
    g = torch.autograd.grad(y.square().sum(), inputs, create_graph=True)
    gg = torch.autograd.grad(sum((t * t.detach().sign()).sum() for t in g), inputs)
    return [y, *g, *gg]


def _compare(fn, make_inputs) -> None:
    ref = _fwd_grad_gradgrad(fn, make_inputs(), "reference")
    out = _fwd_grad_gradgrad(fn, make_inputs(), "fused")
    for a, b in zip(out, ref):
        _close(a, b)


def _inputs(seed: int, *shapes: tuple[int, ...]):
    import torch

    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*sh, generator=g, dtype=torch.float64).requires_grad_()
                 for sh in shapes)


def check_bias_act() -> None:
    import torch

    from dgan.ops import ACTIVATIONS, bias_act

    for act in ACTIVATIONS:
        for clamp in (None, 0.7):
            _compare(partial(bias_act, act=act, clamp=clamp), partial(_inputs, 0, (3, 5, 7), (5,)))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 5, 4, generator=g).to(memory_format=torch.channels_last)
    b = torch.randn(3, generator=g)
    # The fused op reads x in `dtype`: rounding x (up to ~3.5 here) costs up to
    # |x| * eps / 2 * gain (sqrt 2) before the clamp, plus the output's own rounding; for
    # bf16 (eps 2^-7) that reaches ~0.011 on some draws, so 1e-2 was too tight.
    for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 2.5e-2), (torch.float16, 4e-3)):
        y = bias_act(x.to(dtype), b, act="lrelu", clamp=1.0, impl="fused")
        assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
        _close(y, bias_act(x, b, act="lrelu", clamp=1.0, impl="reference"), tol)
    from dgan.ops import _bias_act_triton

    _bias_act_triton.INDEX_64_MIN_NUMEL = 0  # the 64-bit index path must agree as well
    _compare(partial(bias_act, act="tanh", clamp=0.5), partial(_inputs, 0, (3, 5, 7), (5,)))
    _bias_act_triton.INDEX_64_MIN_NUMEL = 2**31
    xb = torch.randn(4, 6, dtype=torch.float64)
    _close(bias_act(xb, torch.ones(4, dtype=torch.float64), dim=0, act="swish", impl="fused"),
           bias_act(xb, torch.ones(4, dtype=torch.float64), dim=0, act="swish", impl="reference"))


def check_upfirdn2d() -> None:
    import torch

    from dgan.ops import setup_filter, upfirdn2d

    cases = [(1, 1, (1, 1, 1, 1), "sep"), (2, 1, (2, 1, 2, 1), "sep"), (1, 2, (1, 1, 1, 1), "sep"),
             (2, 2, (0, 1, 2, -1), "full"), (1, 1, (-1, 2, 0, 0), "full")]
    for up, down, pad, kind in cases:
        f = setup_filter([1, 3, 3, 1]) if kind == "sep" else torch.randn(3, 4)
        for flip in (False, True):
            fn = partial(upfirdn2d, f=f, up=up, down=down, padding=pad, gain=2.0,
                         flip_filter=flip)
            _compare(fn, partial(_inputs, 1, (2, 3, 7, 5)))
    from dgan.ops import _upfirdn2d_triton

    _upfirdn2d_triton.INDEX_64_MIN_NUMEL = 0  # the 64-bit index path must agree as well
    _compare(partial(upfirdn2d, f=f, up=2, down=1, padding=(2, 1, 2, 1)),
             partial(_inputs, 1, (2, 3, 7, 5)))
    _upfirdn2d_triton.INDEX_64_MIN_NUMEL = 2**31
    f = setup_filter([1, 3, 3, 1])
    x = torch.randn(2, 3, 6, 5).to(memory_format=torch.channels_last)
    for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 1e-2), (torch.float16, 1e-3)):
        y = upfirdn2d(x.to(dtype), f, up=2, padding=(2, 1, 2, 1), gain=4, impl="fused")
        assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
        _close(y, upfirdn2d(x, f, up=2, padding=(2, 1, 2, 1), gain=4, impl="reference"), tol)


class _NaNEmpty:
    """Stands in for ``torch`` inside a kernel module: ``torch.empty`` / ``torch.empty_like``
    come back NaN-filled, so an output element the kernel never writes shows up as NaN."""

    def __init__(self, torch):
        self._torch = torch

    def __getattr__(self, name):
        return getattr(self._torch, name)

    def empty(self, *args, **kwargs):
        return self._torch.empty(*args, **kwargs).fill_(float("nan"))

    def empty_like(self, *args, **kwargs):
        return self._torch.empty_like(*args, **kwargs).fill_(float("nan"))


def check_upfirdn2d_channels_last() -> None:
    """The 2D-tiled channels_last kernel: C below, at and past BLOCK_C (3, 17, 70), every
    up/down combination with negative padding, odd sizes, first and second derivatives,
    layouts, dtypes, the 64-bit index path, every output element written (NaN-poisoned)."""
    import torch

    from dgan.ops import _upfirdn2d_triton as k
    from dgan.ops import setup_filter, upfirdn2d

    k.torch = _NaNEmpty(torch)
    launches = []
    kernel = k._upfirdn2d_cl_kernel

    class _Counting:
        def __getitem__(self, grid):
            launches.append(grid)
            return kernel[grid]

    k._upfirdn2d_cl_kernel = _Counting()

    def cl_inputs(seed, shape):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(*shape, generator=g, dtype=torch.float64)
        return (x.to(memory_format=torch.channels_last).requires_grad_(),)

    def check(fn, shape, seed=0):
        out = _fwd_grad_gradgrad(fn, cl_inputs(seed, shape), "fused")
        ref = _fwd_grad_gradgrad(fn, cl_inputs(seed, shape), "reference")
        for a, b in zip(out, ref):
            assert not a.isnan().any(), "unwritten output element"
            assert a.is_contiguous(memory_format=torch.channels_last)
            _close(a, b)

    sep = setup_filter([1, 3, 3, 1])
    full = torch.randn(3, 4, generator=torch.Generator().manual_seed(3))
    cases = [((2, 2), (1, 1), (2, 1, 2, 1), sep), ((1, 1), (2, 2), (1, 1, 1, 1), sep),
             ((2, 2), (2, 2), (0, 1, 3, -1), full), ((1, 1), (1, 1), (-1, 2, 1, -2), full),
             ((2, 1), (1, 2), (1, -1, 2, 0), full)]
    for i, c in enumerate((3, 17, 70)):
        # C=17 runs with small tiles (8 rows of 32 channels): many programs along the pixels.
        k._INTERPRETER_BLOCK = 256 if c == 17 else 8192
        for up, down, pad, f in cases:
            fn = partial(upfirdn2d, f=f, up=up, down=down, padding=pad, gain=2.0)
            check(fn, (2, c, 7 + 2 * i, 5 + i), seed=c)
    k._INTERPRETER_BLOCK = 8192
    assert any(grid[0] > 4 for grid in launches)
    # y, dy -> dx, and in the double backward dx -> d(dy) plus y -> x (dy = 2y depends on x)
    assert len(launches) == 4 * 3 * len(cases)
    before = len(launches)
    assert any(grid[1] > 1 for grid in launches)  # C=70 spans several channel blocks

    # Tiny-shape gradcheck / gradgradcheck. The kernels accumulate in fp32, so the finite
    # differences use a large step (the op is linear: the step adds no truncation error).
    x = cl_inputs(5, (1, 3, 4, 3))[0]
    for up, down, pad in (((2, 2), (1, 1), (2, 1, 2, 1)), ((1, 1), (2, 2), (1, 0, 0, 1))):
        fn = partial(upfirdn2d, f=full, up=up, down=down, padding=pad, impl="fused")
        kw = {"eps": 1e-2, "atol": 1e-4, "rtol": 1e-3, "fast_mode": True}
        assert torch.autograd.gradcheck(fn, (x,), **kw)
        assert torch.autograd.gradgradcheck(fn, (x,), **kw)
    assert len(launches) > before + 8

    # Low precision in, same dtype and layout out, fp32 accumulation.
    x = torch.randn(2, 70, 6, 5).to(memory_format=torch.channels_last)
    for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 1e-2), (torch.float16, 1e-3)):
        y = upfirdn2d(x.to(dtype), sep, up=2, padding=(2, 1, 2, 1), gain=4, impl="fused")
        assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
        assert not y.isnan().any()
        _close(y, upfirdn2d(x, sep, up=2, padding=(2, 1, 2, 1), gain=4, impl="reference"), tol)

    k.INDEX_64_MIN_NUMEL = 0  # the 64-bit index path must agree as well
    check(partial(upfirdn2d, f=full, up=2, down=1, padding=(2, -1, 2, 1)), (2, 17, 5, 4))
    k.INDEX_64_MIN_NUMEL = 2**31


def check_modulated_conv2d() -> None:
    from dgan.ops import modulated_conv2d, setup_filter

    f = setup_filter([1, 3, 3, 1])
    for up, down, k, demod, fused in [(1, 1, 3, True, True), (2, 1, 3, True, True),
                                      (1, 2, 1, False, True), (2, 1, 3, True, False)]:
        fn = partial(modulated_conv2d, up=up, down=down, padding=k // 2, resample_filter=f,
                     demodulate=demod, fused_modconv=fused)
        _compare(fn, partial(_inputs, 2, (2, 3, 5, 5), (4, 3, k, k), (2, 3)))


def check_stylegan2() -> None:
    """A tiny G/D pair: images, D logits, the R1 and path-length gradients and their
    parameter gradients (the double-backward paths of both regularisers)."""
    import torch

    from dgan.models.stylegan2 import Discriminator, Generator

    for channels_last, fused_modconv in ((False, True), (True, False)):
        torch.manual_seed(0)
        kw = {"img_resolution": 32, "channel_base": 64, "channel_max": 8, "channels_last": channels_last}
        g = Generator(z_dim=8, w_dim=8, mapping_layers=2, fused_modconv=fused_modconv, **kw)
        d = Discriminator(**kw)
        z = torch.randn(2, 8)
        results = []
        for impl in ("reference", "fused"):
            ops.set_impl(impl)
            img = g(z, noise_mode="const")
            real = img.detach().requires_grad_(True)
            logits = d(real)
            (r1,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
            params = list(d.parameters())
            grads = torch.autograd.grad(r1.square().sum(), params, allow_unused=True)
            img, ws = g(z, noise_mode="const", return_ws=True)
            (pl,) = torch.autograd.grad((img * img.detach()).sum(), ws, create_graph=True)
            g_grads = torch.autograd.grad(pl.square().sum(), list(g.parameters()),
                                          allow_unused=True)
            # Unused -> zero: the fused double backward returns explicit zeros where the
            # reference graph has no path at all.
            params = params + list(g.parameters())
            results.append([img, logits, r1, pl] + [
                torch.zeros_like(p) if x is None else x for x, p in zip(grads + g_grads, params)])
        ops.set_impl(None)
        for a, b in zip(*results[::-1]):
            _close(a, b, 1e-4)
        # The recipe's R1 and path-length phases skip convolution weight gradients in their
        # inner autograd.grad (no_weight_gradients): the final gradients must not change.
        from dgan.tasks.stylegan2_loss import StyleGAN2Loss

        reg = []
        for impl in ("reference", "fused"):
            ops.set_impl(impl)
            loss_fn = StyleGAN2Loss(g, d, r1_gamma=1.0, style_mixing_prob=0.0)
            torch.manual_seed(1)
            out = list(torch.autograd.grad(loss_fn.d_reg(real.detach())[0], list(d.parameters()),
                                           allow_unused=True))
            torch.manual_seed(2)
            out += torch.autograd.grad(loss_fn.g_reg(2)[0], list(g.parameters()),
                                       allow_unused=True)
            reg.append([torch.zeros(()) if x is None else x for x in out])
        ops.set_impl(None)
        for a, b in zip(*reg[::-1]):
            _close(a, b, 1e-4)
        # Mixed precision through every fused kernel: R1 and path length under bf16 autocast.
        ops.set_impl("fused")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            img, ws = g(z, return_ws=True)
            (pl,) = torch.autograd.grad((img * img.detach()).sum(), ws, create_graph=True)
            real = img.detach().requires_grad_(True)
            (r1,) = torch.autograd.grad(d(real).sum(), real, create_graph=True)
        (pl.square().sum() + r1.square().sum()).backward()
        ops.set_impl(None)
        grads = [p.grad for p in list(g.parameters()) + list(d.parameters())]
        assert all(x is None or torch.isfinite(x).all() for x in grads)
        assert sum(x is not None for x in grads) > len(grads) // 2

def _sba(parts: str, **kw):
    """``scale_bias_act`` taking ``(x, *present)`` where ``parts`` names the present ones:
    ``s`` scale, ``n`` noise, ``b`` bias, ``r`` residual (in that order)."""
    from dgan.ops import scale_bias_act

    names = [name for name in ("scale", "noise", "b", "residual") if name[0] in parts]

    def fn(x, *rest, impl):
        return scale_bias_act(x, **dict(zip(names, rest)), impl=impl, **kw)

    return fn


def _sba_inputs(seed: int, shape, parts: str, noise_shape=None, channels_last=False,
                dtype=None):
    import torch

    g = torch.Generator().manual_seed(seed)
    dtype = dtype or torch.float64
    n, c, h, w = shape
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    out = [x.to(dtype)]
    if "s" in parts:
        out.append(torch.randn(n, c, generator=g, dtype=torch.float64) + 0.5)
    if "n" in parts:
        out.append(torch.randn(*(noise_shape or (n, 1, h, w)), generator=g, dtype=torch.float64))
    if "b" in parts:
        out.append(torch.randn(c, generator=g, dtype=torch.float64))
    if "r" in parts:  # the other layout than x when "R": the launcher must convert it
        r = torch.randn(*shape, generator=g, dtype=torch.float64)
        if channels_last != ("R" in parts):
            r = r.to(memory_format=torch.channels_last)
        out.append(r.to(dtype))
    return tuple(t.requires_grad_() for t in out)


class _Recording:
    """Stands in for a Triton kernel: records each launch's keyword (constexpr) arguments."""

    def __init__(self, kernel, log: list):
        self.kernel, self.log = kernel, log

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.log.append((self.kernel.fn.__name__, grid, kwargs))
            return self.kernel[grid](*args, **kwargs)

        return run


def check_scale_bias_act() -> None:
    """Fused scale + noise + bias + act + clamp against the reference composition: forward,
    first and second derivatives (third through the create_graph fallback), every subset of
    scale / noise / bias, both noise shapes, NCHW and channels_last, odd sizes, several
    programs per sample and channel blocks (NaN-poisoned buffers), 64-bit indices, dtypes,
    deterministic reductions and the NEED_* flags."""
    import torch

    from dgan.ops import _scale_bias_act_triton as k
    from dgan.ops import scale_bias_act

    k.torch = _NaNEmpty(torch)  # an output or partial sum the kernels never write -> NaN
    log: list = []
    for name in ("_sba_fwd_kernel", "_sba_bwd_kernel", "_sba_bwd2_kernel"):
        setattr(k, name, _Recording(getattr(k, name), log))
    shape = (3, 5, 7, 7)

    def compare(parts, noise_shape=None, channels_last=False, shape=shape, **kw):
        make = partial(_sba_inputs, 0, shape, parts, noise_shape, channels_last)
        _compare(_sba(parts, **kw), make)

    # Forward, d/d(x, scale, noise, b), and their derivatives (incl. through dy = 2y).
    for act in ("lrelu", "linear", "relu"):
        for clamp in (None, 0.9):
            for channels_last in (False, True):
                for noise_shape in ((3, 1, 7, 7), (7, 7)):
                    compare("snb", noise_shape, channels_last, act=act, clamp=clamp)
    kernels = {name for name, _, _ in log}
    assert kernels == {"_sba_fwd_kernel", "_sba_bwd_kernel", "_sba_bwd2_kernel"}, kernels
    assert not any(kw["CHANNELS_LAST"] for _, _, kw in log[:3])
    assert any(kw["CHANNELS_LAST"] for _, _, kw in log)
    # Every subset of scale / noise / bias (including none: bias_act), const noise.
    for parts in ("", "s", "n", "b", "sn", "sb", "nb"):
        for channels_last in (False, True):
            compare(parts, (1, 1, 7, 7), channels_last, act="lrelu", clamp=0.9)
    compare("s", None, True, act="linear")  # the pre-convolution styles multiply
    # A residual summed in the forward pass (D's blocks), in x's layout and in the other one.
    for channels_last in (False, True):
        compare("br", None, channels_last, act="lrelu", clamp=0.9)
        compare("snbrR", (3, 1, 7, 7), channels_last, act="lrelu", clamp=0.9)
    # Activations with act'' != 0: the SECOND_ORDER terms of the double-backward kernel.
    for act in ("tanh", "swish", "elu"):
        compare("snb", (7, 7), True, act=act, clamp=0.9, gain=1.3)

    # Several programs per sample and several channel blocks (C=70 > 64), partial tiles,
    # and the EVEN_C (C=48 -> 16-channel blocks) / EVEN_P (H*W=16) mask paths.
    k._INTERPRETER_BLOCK, k._INTERPRETER_PROGRAMS = 256, 64
    log.clear()
    for channels_last in (False, True):
        for sh, act in (((2, 70, 9, 11), "lrelu"), ((2, 48, 4, 4), "tanh")):
            compare("snb", (sh[0], 1, *sh[2:]), channels_last, shape=sh, act=act, clamp=1.5)
    grids = [grid for _, grid, _ in log]
    assert max(g[0] for g in grids) > 2 * 2 and max(g[1] for g in grids) > 1, grids
    assert any(kw["EVEN_C"] for _, _, kw in log) and any(kw["EVEN_P"] for _, _, kw in log)

    # Deterministic: the reductions run twice give bit-identical gradients.
    def grads():
        torch.manual_seed(0)
        ins = _sba_inputs(3, (2, 70, 9, 11), "snb", (9, 11), True, dtype=torch.float32)
        y = _sba("snb", act="lrelu", clamp=1.0)(*ins, impl="fused")
        g = torch.autograd.grad((y.square() * y.detach().cos()).sum(), ins, create_graph=True)
        return list(g) + list(torch.autograd.grad(sum(t.square().sum() for t in g), ins))

    first, second = grads(), grads()
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    k._INTERPRETER_BLOCK, k._INTERPRETER_PROGRAMS = 8192, 1

    # Third derivatives: create_graph through the double backward (PyTorch fallback).
    for act in ("lrelu", "tanh"):
        outs = []
        for impl in ("reference", "fused"):
            ins = _sba_inputs(4, (2, 3, 4, 5), "snb", (4, 5), True)
            y = _sba("snb", act=act, clamp=0.8)(*ins, impl=impl)
            g1 = torch.autograd.grad(y.square().sum(), ins, create_graph=True)
            g2 = torch.autograd.grad(sum((t * t.detach().sign()).sum() for t in g1), ins,
                                     create_graph=True)
            g3 = torch.autograd.grad(sum((t * t.detach().cos()).sum() for t in g2), ins)
            outs.append([*g2, *g3])
        for a, b in zip(outs[1], outs[0]):
            _close(a, b)

    # Only what needs_input_grad asks for: x alone -> no reductions; scale alone -> no dx.
    for parts_grad in ("x", "s"):
        log.clear()
        ins = _sba_inputs(5, shape, "snb", None, True)
        for t, name in zip(ins, "xsnb"):
            t.requires_grad_(name in parts_grad)
        y = _sba("snb", act="lrelu")(*ins, impl="fused")
        want = [t for t in ins if t.requires_grad]
        (g,) = torch.autograd.grad(y.sum(), want)
        ref = torch.autograd.grad(_sba("snb", act="lrelu")(*ins, impl="reference").sum(), want)
        _close(g, ref[0])
        kw = log[-1][2]
        flags = (kw["NEED_DX"], kw["NEED_GS"], kw["NEED_GN"], kw["NEED_GB"])
        assert flags == ((True, False, False, False) if parts_grad == "x"
                         else (False, True, False, False)), flags

    # The 64-bit index path must agree as well.
    k.INDEX_64_MIN_NUMEL = 0
    log.clear()
    compare("snb", (3, 1, 7, 7), True, act="lrelu", clamp=0.9)
    compare("snb", (7, 7), False, act="tanh")
    assert all(kw["INDEX_64"] for _, _, kw in log)
    k.INDEX_64_MIN_NUMEL = 2**31

    # Low precision in, same dtype and layout out, fp32 arithmetic; gradients in the
    # dtypes of their inputs (scale and bias fp32, noise in x's dtype).
    x, s, nz, b = (t.detach() for t in _sba_inputs(6, shape, "snb", None, True))
    x, s, b = x.float(), s.float(), b.float()
    for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 1e-2), (torch.float16, 1e-3)):
        ins = [x.to(dtype), s, nz.to(dtype), b]
        # The reference in fp32 on the same (rounded) values: only the output is rounded.
        ref = scale_bias_act(*(t.float() for t in ins), act="lrelu", clamp=1.0,
                             impl="reference")
        ins = [t.clone().requires_grad_() for t in ins]
        y = scale_bias_act(*ins, act="lrelu", clamp=1.0, impl="fused")
        assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
        _close(y, ref, tol)
        g = torch.autograd.grad(y.float().square().sum(), ins)
        assert [t.dtype for t in g] == [dtype, torch.float32, dtype, torch.float32]
        assert g[0].is_contiguous(memory_format=torch.channels_last)

    # Empty tensors: zero gradients of the right shapes.
    for sh in ((0, 5, 7, 7), (2, 5, 0, 3)):
        ins = _sba_inputs(7, sh, "snb", (sh[0], 1, *sh[2:]))
        y = _sba("snb", act="lrelu")(*ins, impl="fused")
        g = torch.autograd.grad(y.sum(), ins)
        assert y.shape == sh and all(a.shape == t.shape and not a.any() for a, t in zip(g, ins))


CHECKS = {"bias_act": check_bias_act, "upfirdn2d": check_upfirdn2d,
          "upfirdn2d_channels_last": check_upfirdn2d_channels_last,
          "modulated_conv2d": check_modulated_conv2d, "stylegan2": check_stylegan2,
          "scale_bias_act": check_scale_bias_act}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_triton_kernel_under_interpreter(name: str) -> None:
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1", DGAN_OPS="auto")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), name], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


if __name__ == "__main__":
    CHECKS[sys.argv[1]]()
