"""Reference ops against naive formulations, plus float64 gradcheck / gradgradcheck."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dgan import ops
from dgan.ops import (
    bias_act,
    conv2d_resample,
    downsample2d,
    modulated_conv2d,
    setup_filter,
    upfirdn2d,
    upsample2d,
)

ACTS = list(ops.ACTIVATIONS)


def _naive_act(v: float, act: str) -> float:
    sig = 1 / (1 + math.exp(-v))
    return {
        "linear": v, "relu": max(v, 0.0), "lrelu": v if v > 0 else 0.2 * v, "tanh": math.tanh(v),
        "sigmoid": sig, "elu": v if v > 0 else math.exp(v) - 1,
        "selu": 1.0507009873554805 * (v if v > 0 else 1.6732632423543772 * (math.exp(v) - 1)),
        "softplus": math.log1p(math.exp(v)), "swish": v * sig,
    }[act]


@pytest.mark.parametrize("act", ACTS)
def test_bias_act_matches_elementwise_formula(act: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64)
    y = bias_act(x, b, act=act, clamp=0.9, impl="reference")
    gain = ops.ACTIVATIONS[act][1]
    expect = np.empty(x.shape)
    for idx in np.ndindex(*x.shape):
        v = _naive_act(float(x[idx] + b[idx[1]]), act) * gain
        expect[idx] = min(max(v, -0.9), 0.9)
    np.testing.assert_allclose(y.numpy(), expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("act", ACTS)
def test_bias_act_gradgradcheck(act: str) -> None:
    torch.manual_seed(1)
    # Keep inputs away from the kinks of relu/lrelu/clamp where finite differences fail.
    x = (torch.rand(2, 3, 3, dtype=torch.float64) + 0.1) * torch.sign(torch.randn(2, 3, 3))
    x = x.double().requires_grad_()
    b = (torch.randn(3, dtype=torch.float64) * 0.01).requires_grad_()
    fn = lambda x, b: bias_act(x, b, act=act, clamp=50.0, impl="reference")
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


def _naive_upfirdn2d(x: np.ndarray, f: np.ndarray, up: int, down: int, pad: tuple, gain: float):
    """Zero-insert, pad/crop, true 2D convolution, subsample; loops over every output pixel."""
    n, c, h, w = x.shape
    z = np.zeros((n, c, h * up, w * up))
    z[:, :, ::up, ::up] = x
    px0, px1, py0, py1 = pad
    z = np.pad(z, ((0, 0), (0, 0), (max(py0, 0), max(py1, 0)), (max(px0, 0), max(px1, 0))))
    z = z[:, :, max(-py0, 0): z.shape[2] - max(-py1, 0), max(-px0, 0): z.shape[3] - max(-px1, 0)]
    if f.ndim == 1:
        f = np.outer(f, f)
    f = f * gain
    fh, fw = f.shape
    oh, ow = z.shape[2] - fh + 1, z.shape[3] - fw + 1
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            # True convolution: the window is multiplied by the flipped filter.
            out[:, :, i, j] = (z[:, :, i:i + fh, j:j + fw] * f[::-1, ::-1]).sum(axis=(2, 3))
    return out[:, :, ::down, ::down]


UPFIRDN_CASES = [
    (1, 1, (1, 1, 1, 1), "sep"), (2, 1, (2, 1, 2, 1), "sep"), (1, 2, (1, 1, 1, 1), "sep"),
    (2, 2, (0, 1, 2, -1), "full"), (1, 1, (-1, 2, 0, 0), "full"), (2, 1, (0, 0, 0, 0), "full"),
]


@pytest.mark.parametrize("up,down,pad,kind", UPFIRDN_CASES)
def test_upfirdn2d_matches_naive_loop(up: int, down: int, pad: tuple, kind: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 6))
    f = np.array([1.0, 3.0, 3.0, 1.0]) / 8 if kind == "sep" else rng.standard_normal((3, 4))
    y = upfirdn2d(torch.from_numpy(x), torch.from_numpy(f), up=up, down=down, padding=pad,
                  gain=1.5, impl="reference")
    np.testing.assert_allclose(y.numpy(), _naive_upfirdn2d(x, f, up, down, pad, 1.5), atol=1e-12)


@pytest.mark.parametrize("up,down,pad,kind", UPFIRDN_CASES[:4])
def test_upfirdn2d_gradgradcheck(up: int, down: int, pad: tuple, kind: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    f = setup_filter([1, 3, 3, 1]) if kind == "sep" else torch.randn(3, 4)
    fn = lambda x: upfirdn2d(x, f.double(), up=up, down=down, padding=pad, impl="reference")
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_upfirdn2d_flip_filter_is_correlation() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, 6, 5))
    f = rng.standard_normal((3, 2))
    y = upfirdn2d(torch.from_numpy(x), torch.from_numpy(f), padding=1, flip_filter=True,
                  impl="reference")
    # Correlation with f is convolution with the flipped filter.
    expect = _naive_upfirdn2d(x, f[::-1, ::-1].copy(), 1, 1, (1, 1, 1, 1), 1.0)
    np.testing.assert_allclose(y.numpy(), expect, atol=1e-12)


def test_resample_helpers_shapes_and_dc_gain() -> None:
    f = setup_filter([1, 3, 3, 1])
    x = torch.ones(1, 2, 8, 8, dtype=torch.float64)
    up = upsample2d(x, f, impl="reference")
    down = downsample2d(x, f, impl="reference")
    assert up.shape == (1, 2, 16, 16) and down.shape == (1, 2, 4, 4)
    # Away from the zero-padded border a constant image keeps its value.
    assert torch.allclose(up[..., 2:-2, 2:-2], torch.ones(()).double())
    assert torch.allclose(down[..., 1:-1, 1:-1], torch.ones(()).double())


def test_conv2d_resample_identity_kernel_equals_resampling() -> None:
    torch.manual_seed(0)
    f = setup_filter([1, 3, 3, 1]).double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64)[:, :, None, None]
    torch.testing.assert_close(conv2d_resample(x, eye, f, up=2, impl="reference"),
                               upsample2d(x, f, impl="reference"))
    torch.testing.assert_close(conv2d_resample(x, eye, f, down=2, impl="reference"),
                               downsample2d(x, f, impl="reference"))


@pytest.mark.parametrize("up,down,k", [(1, 1, 3), (2, 1, 3), (1, 2, 3), (1, 2, 1), (1, 1, 1)])
@pytest.mark.parametrize("demodulate", [True, False])
def test_modulated_conv2d_matches_per_sample_loop(up: int, down: int, k: int,
                                                  demodulate: bool) -> None:
    torch.manual_seed(0)
    f = setup_filter([1, 3, 3, 1]).double()
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    w = torch.randn(5, 4, k, k, dtype=torch.float64)
    s = torch.randn(3, 4, dtype=torch.float64)
    noise = torch.randn(3, 1, 8 * up // down, 8 * up // down, dtype=torch.float64)
    outs = []
    for n in range(3):
        wn = w * s[n][None, :, None, None]
        if demodulate:
            wn = wn / torch.sqrt((wn**2).sum(dim=[1, 2, 3], keepdim=True) + 1e-8)
        outs.append(conv2d_resample(x[n:n + 1], wn, f, up, down, k // 2, impl="reference"))
    expect = torch.cat(outs) + noise
    for fused in (True, False):
        y = modulated_conv2d(x, w, s, noise=noise, up=up, down=down, padding=k // 2,
                             resample_filter=f, demodulate=demodulate, fused_modconv=fused,
                             impl="reference")
        torch.testing.assert_close(y, expect)


@pytest.mark.parametrize("demodulate", [True, False])
def test_modulated_1x1_matmul_matches_scale_then_convolve(
        demodulate: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """toRGB's per-sample matmul: same values, gradients and second derivatives as the
    scale-conv-scale form, in both layouts, and a channels_last input stays channels_last."""
    import importlib

    mc = importlib.import_module("dgan.ops.modulated_conv2d")  # the module, not the function
    torch.manual_seed(0)
    x0 = torch.randn(3, 4, 5, 6, dtype=torch.float64)
    w = torch.randn(2, 4, 1, 1, dtype=torch.float64, requires_grad=True)
    s = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    noise = torch.randn(3, 1, 5, 6, dtype=torch.float64)
    results = {}
    no_conv = lambda *a, **k: pytest.fail("the 1x1 matmul path ran a convolution")
    for matmul in (True, False):
        monkeypatch.setattr(mc, "MATMUL_1X1", matmul)
        monkeypatch.setattr(mc, "conv2d_resample", no_conv if matmul else conv2d_resample)
        for cl in (False, True):
            x = x0.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
            x = x.clone().requires_grad_(True)
            y = modulated_conv2d(x, w, s, noise=noise, demodulate=demodulate, impl="reference")
            if matmul:
                assert y.is_contiguous(memory_format=torch.channels_last) == cl
            g = torch.autograd.grad(y.square().sum(), (x, w, s), create_graph=True)
            gg = torch.autograd.grad(sum(t.square().sum() for t in g), (x, w, s))
            results[matmul, cl] = (y, *g, *gg)
    for key, got in results.items():
        for a, b in zip(got, results[False, False]):
            torch.testing.assert_close(a, b, msg=lambda m, key=key: f"{key}: {m}")
    monkeypatch.setattr(mc, "MATMUL_1X1", True)
    x = x0[:2, :, :3, :3].clone().requires_grad_(True)
    fn = lambda x, w, s: modulated_conv2d(x, w, s[:2], demodulate=demodulate, impl="reference")
    assert torch.autograd.gradgradcheck(fn, (x, w, s))


@pytest.mark.parametrize("fused", [True, False])
def test_modulated_conv2d_gradgradcheck(fused: bool) -> None:
    torch.manual_seed(0)
    f = setup_filter([1, 3, 3, 1]).double()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    s = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    fn = lambda x, w, s: modulated_conv2d(
        x, w, s, up=2, padding=1, resample_filter=f, fused_modconv=fused, impl="reference")
    assert torch.autograd.gradcheck(fn, (x, w, s))
    assert torch.autograd.gradgradcheck(fn, (x, w, s))


def test_dispatch_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.zeros(2)
    monkeypatch.setenv("DGAN_OPS", "reference")
    ops.set_impl(None)
    assert ops.get_impl() == "reference"
    ops.set_impl("auto")
    try:
        assert ops.get_impl() == "auto"
        # CPU tensors take the reference path under 'auto'.
        assert not ops._dispatch.use_fused("bias_act", x)
        with pytest.raises(ValueError):
            ops.set_impl("fast")
    finally:
        ops.set_impl(None)
    monkeypatch.setenv("DGAN_OPS", "bogus")
    with pytest.raises(ValueError):
        ops.get_impl()


def test_reference_is_plain_torch_on_half_precision() -> None:
    x = torch.randn(2, 4, 5, 5).to(torch.bfloat16)
    y = bias_act(x, torch.zeros(4), act="lrelu", clamp=256, impl="reference")
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), F.leaky_relu(x.float(), 0.2) * math.sqrt(2),
                               rtol=2e-2, atol=2e-2)


# --- scale_bias_act -------------------------------------------------------------------------

# (present inputs: s scale, n noise, b bias; noise shape)
SBA_CASES = [("", None), ("s", None), ("b", None), ("sb", None)] + [
    (parts, shape) for parts in ("n", "sn", "snb") for shape in ((2, 1, 3, 4), (3, 4))]


def _sba_args(parts: str, noise_shape: tuple, shape=(2, 3, 4, 5), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n, c = shape[:2]
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    scale = torch.randn(n, c, generator=g, dtype=torch.float64) + 0.5 if "s" in parts else None
    noise = torch.randn(*noise_shape, generator=g, dtype=torch.float64) if "n" in parts else None
    b = torch.randn(c, generator=g, dtype=torch.float64) if "b" in parts else None
    return x, scale, noise, b


@pytest.mark.parametrize("act", ["lrelu", "linear", "tanh", "swish"])
@pytest.mark.parametrize("noise_shape", [(2, 1, 4, 5), (4, 5), (1, 1, 4, 5)])
@pytest.mark.parametrize("clamp", [None, 0.9])
def test_scale_bias_act_matches_elementwise_formula(act, noise_shape, clamp) -> None:
    x, scale, noise, b = _sba_args("snb", noise_shape)
    y = ops.scale_bias_act(x, scale, noise, b, act=act, clamp=clamp, gain=1.7, impl="reference")
    nz = noise.expand(2, 1, 4, 5)
    expect = np.empty(x.shape)
    for i in np.ndindex(*x.shape):
        v = float(x[i] * scale[i[0], i[1]] + nz[i[0], 0, i[2], i[3]] + b[i[1]])
        out = _naive_act(v, act) * 1.7
        expect[i] = out if clamp is None else min(max(out, -clamp), clamp)
    np.testing.assert_allclose(y.numpy(), expect, rtol=1e-12, atol=1e-12)


def test_scale_bias_act_special_cases_are_the_unfused_ops() -> None:
    x, scale, noise, b = _sba_args("snb", (2, 1, 4, 5))
    sba = partial(ops.scale_bias_act, impl="reference")
    # No scale, no noise: bias_act. Linear, scale only: the channel scaling.
    torch.testing.assert_close(sba(x, b=b, act="lrelu", clamp=0.5),
                               bias_act(x, b, act="lrelu", clamp=0.5, impl="reference"))
    torch.testing.assert_close(sba(x, scale), x * scale[:, :, None, None], rtol=0, atol=0)
    # The synthesis layer's current epilogue: addcmul(noise, x, d), then bias_act.
    composed = bias_act(torch.addcmul(noise, x, scale[:, :, None, None]), b, act="lrelu",
                        clamp=256, impl="reference")
    torch.testing.assert_close(sba(x, scale, noise, b, act="lrelu", clamp=256), composed)
    # Channels_last in, channels_last out; low-precision dtype kept.
    xc = x.float().to(memory_format=torch.channels_last).bfloat16()
    y = sba(xc, scale.float(), noise.bfloat16(), b.float(), act="lrelu")
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)


def test_scale_bias_act_residual_is_added_after_the_clamp() -> None:
    from dgan.ops import bias_act_reference, scale_bias_act

    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    r = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    y = scale_bias_act(x, b=b, act="lrelu", clamp=0.5, residual=r, impl="reference")
    torch.testing.assert_close(y, bias_act_reference(x, b, act="lrelu", clamp=0.5) + r)
    fn = lambda x, b, r: scale_bias_act(x, b=b, act="lrelu", clamp=0.5, residual=r,
                                        impl="reference")
    assert torch.autograd.gradcheck(fn, (x, b, r))
    assert torch.autograd.gradgradcheck(fn, (x, b, r))
    with pytest.raises(ValueError, match="residual"):
        scale_bias_act(x, residual=r[:, :2], impl="reference")


def test_scale_bias_act_rejects_bad_shapes() -> None:
    x, scale, _, b = _sba_args("snb", (2, 1, 4, 5))
    with pytest.raises(ValueError, match="scale"):
        ops.scale_bias_act(x, scale[:, :2])
    with pytest.raises(ValueError, match="bias"):
        ops.scale_bias_act(x, b=b[:2])
    for bad in ((2, 3, 4, 5), (3, 1, 4, 5), (4, 4)):
        with pytest.raises(ValueError, match="noise"):
            ops.scale_bias_act(x, noise=torch.zeros(bad, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        ops.scale_bias_act(x[0])


@pytest.mark.parametrize("parts,noise_shape", SBA_CASES)
@pytest.mark.parametrize("clamp", [None, 2.0])
def test_scale_bias_act_gradgradcheck(parts: str, noise_shape: tuple, clamp) -> None:
    args = _sba_args(parts, noise_shape, shape=(2, 3, 3, 4), seed=1)
    present = [i for i, t in enumerate(args) if t is not None]
    leaves = tuple(args[i].requires_grad_() for i in present)

    def fn(*ts):
        full = list(args)
        for i, t in zip(present, ts):
            full[i] = t
        return ops.scale_bias_act(*full, act="lrelu", clamp=clamp, impl="reference")

    assert torch.autograd.gradcheck(fn, leaves)
    assert torch.autograd.gradgradcheck(fn, leaves)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("clamp", [-1.0, 1.5])
def test_scale_bias_act_double_backward_formula(act: str, clamp: float) -> None:
    """The differentiable PyTorch double backward that the fused path uses under
    ``create_graph=True``: equal to autograd through the reference (partial derivatives with
    respect to independent ``dy, x, scale, noise, b``), and gradcheck-ed itself, which checks
    third derivatives."""
    from dgan.ops.bias_act import _resolve
    from dgan.ops.scale_bias_act import _backward2_reference

    alpha, gain, clamp = _resolve(act, None, None, clamp)
    spec = (act, alpha, gain, clamp)
    g = torch.Generator().manual_seed(2)
    x, scale, noise, b = _sba_args("snb", (3, 4), shape=(2, 3, 3, 4), seed=3)
    dy = torch.randn(x.shape, generator=g, dtype=torch.float64)
    gin = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in (x, scale, noise, b)]
    leaves = [t.requires_grad_() for t in (dy, x, scale, noise, b)]

    with torch.enable_grad():
        y = ops.scale_bias_act(*leaves[1:], act=act, clamp=clamp, impl="reference")
        first = torch.autograd.grad(y, leaves[1:], leaves[0], create_graph=True)
        expect = torch.autograd.grad(first, leaves, gin, allow_unused=True)
    got = _backward2_reference(leaves, gin, (True,) * 5, spec)
    for a, e, t in zip(got, expect, leaves):
        # None = zero (piecewise-linear acts have no act'' terms).
        zero = torch.zeros_like(t)
        torch.testing.assert_close(zero if a is None else a, zero if e is None else e)

    def fn(*ts):
        return tuple(t for t in _backward2_reference(ts[:5], ts[5:], (True,) * 5, spec)
                     if t is not None)

    inputs = tuple(leaves) + tuple(t.requires_grad_() for t in gin)
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


def test_fused_filter_taps_are_built_once_per_buffer_and_rebuilt_when_it_changes() -> None:
    """The fused upfirdn2d's taps (outer product, gain, flip) and the backward's flipped taps
    are cached on the filter buffer: the same tensor on every call, new values after an
    in-place change, and never for a filter that is being learned."""
    from dgan.ops.upfirdn2d import _flipped, _fused_filter, _make_fused_filter

    f = setup_filter([1, 3, 3, 1])
    a = _fused_filter(f, False, 4.0, f.device)
    assert _fused_filter(f, False, 4.0, f.device) is a
    torch.testing.assert_close(a, _make_fused_filter(f, False, 4.0, f.device))
    torch.testing.assert_close(a, (torch.outer(f, f) * 4).flip([0, 1]))
    b = _fused_filter(f, True, 1.0, f.device)  # another variant of the same buffer
    torch.testing.assert_close(b, torch.outer(f, f))
    assert _flipped(a) is _flipped(a)
    torch.testing.assert_close(_flipped(a), a.flip([0, 1]))
    with torch.no_grad():
        f.mul_(2)  # an in-place change: the cached taps are stale
    c = _fused_filter(f, False, 4.0, f.device)
    torch.testing.assert_close(c, (torch.outer(f, f) * 4).flip([0, 1]))
    learned = f.clone().requires_grad_()
    assert _fused_filter(learned, False, 1.0, f.device) is not _fused_filter(
        learned, False, 1.0, f.device)
