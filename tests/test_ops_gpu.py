"""Fused (Triton) vs reference ops on CUDA: outputs, first and second derivatives.

Every check runs the op three times on the same values: fused in the dtype under test,
reference in that dtype, and reference in float64 (the truth). The error measure is the
relative norm ``||a - truth|| / ||truth||`` over each output and derivative. The fused path
passes when its error is within the dtype's tolerance (fp32 1e-4, bf16 8e-3, fp16 1e-3)
or within twice the reference's own error in the same dtype (convolutions in bf16 round
their products, whichever path runs them).

Derivatives: first ``d/dx sum(u * y)``-style gradients with a fixed random ``u`` plus a
quadratic term (so that they depend on the inputs), then second derivatives
``d/dx sum(v * grad)`` with fixed random ``v`` per gradient. The weights are drawn once
and shared by the three runs. TF32 is off: the float32 comparison is against float64.
Shapes are random, including odd sizes, from fixed seeds.
"""

from __future__ import annotations

import pytest
import torch

from dgan.ops import (
    ACTIVATIONS,
    bias_act,
    modulated_conv2d,
    scale_bias_act,
    setup_filter,
    upfirdn2d,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
pytest.importorskip("triton")

TOL = {torch.float32: 1e-4, torch.bfloat16: 8e-3, torch.float16: 1e-3}
DTYPES = list(TOL)


@pytest.fixture(autouse=True)
def _no_tf32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _rel(a: torch.Tensor, truth: torch.Tensor) -> float:
    a, truth = a.double(), truth.double()
    if not torch.isfinite(a).all():
        return float("inf")
    return ((a - truth).norm() / truth.norm().clamp_min(1e-30)).item()


def _run(fn, inputs, impl, dtype, seed):
    """Output, first and second derivatives of ``fn`` (weights drawn from ``seed``)."""
    xs = [t.detach().to(dtype).requires_grad_() for t in inputs]
    y = fn(*xs, impl=impl)
    gen = torch.Generator(device=y.device).manual_seed(seed)
    u = torch.randn(y.shape, generator=gen, device=y.device, dtype=torch.float64)
    yf = y.double()
    g = torch.autograd.grad((u * yf).sum() + yf.square().mean(), xs, create_graph=True)
    vs = [torch.randn(t.shape, generator=gen, device=t.device, dtype=torch.float64) for t in g]
    gg = torch.autograd.grad(sum((v * t.double()).sum() for v, t in zip(vs, g)), xs,
                             allow_unused=True)
    gg = [torch.zeros_like(x) if t is None else t for x, t in zip(xs, gg)]
    return [y, *g, *gg]


def _check(fn, inputs, dtype: torch.dtype) -> None:
    """Fused in ``dtype`` against float64 reference, allowing the reference's own error."""
    truth = _run(fn, inputs, "reference", torch.float64, seed=1)
    fused = _run(fn, inputs, "fused", dtype, seed=1)
    ref = _run(fn, inputs, "reference", dtype, seed=1)
    names = ["out"] + [f"d1[{i}]" for i in range(len(inputs))] + \
        [f"d2[{i}]" for i in range(len(inputs))]
    for name, f, r, t in zip(names, fused, ref, truth):
        err_f, err_r = _rel(f, t), _rel(r, t)
        assert err_f <= max(TOL[dtype], 2 * err_r), \
            f"{name}: fused error {err_f:.2e}, reference error {err_r:.2e} in {dtype}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_bias_act_fused_matches_reference(dtype: torch.dtype, act: str) -> None:
    g = torch.Generator().manual_seed(sum(map(ord, act)))
    n, c, h, w = (int(v) for v in torch.randint(1, 40, (4,), generator=g))
    x = torch.randn(n, c, h, w, generator=g).cuda()
    b = torch.randn(c, generator=g).cuda()
    _check(lambda x, b, impl: bias_act(x, b, act=act, clamp=256, impl=impl), [x, b], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("up,down,pad", [(1, 1, (1, 2, 1, 2)), (2, 1, (2, 1, 2, 1)),
                                         (1, 2, (1, 1, 1, 1)), (2, 2, (0, 1, 3, -1))])
@pytest.mark.parametrize("channels_last", [False, True])
def test_upfirdn2d_fused_matches_reference(dtype, up, down, pad, channels_last) -> None:
    g = torch.Generator().manual_seed(up * 10 + down)
    x = torch.randn(3, 17, 31, 23, generator=g).cuda()
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    f = setup_filter([1, 3, 3, 1], device="cuda")
    _check(lambda x, impl: upfirdn2d(x, f, up=up, down=down, padding=pad, impl=impl), [x], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("up,down,k,fused", [(1, 1, 3, True), (2, 1, 3, True), (1, 2, 3, True),
                                             (1, 2, 1, False), (2, 1, 3, False),
                                             (1, 1, 1, False)])
def test_modulated_conv2d_fused_matches_reference(dtype, up, down, k, fused) -> None:
    g = torch.Generator().manual_seed(k + up)
    x = torch.randn(5, 19, 13, 13, generator=g).cuda()
    w = torch.randn(21, 19, k, k, generator=g).cuda()
    s = torch.randn(5, 19, generator=g).cuda() + 1
    f = setup_filter([1, 3, 3, 1], device="cuda")
    _check(lambda x, w, s, impl: modulated_conv2d(x, w, s, up=up, down=down, padding=k // 2,
                                                  resample_filter=f, fused_modconv=fused,
                                                  impl=impl), [x, w, s], dtype)


# scale_bias_act: (act, clamp, parts, noise shape: "random" [N,1,H,W] / "const" [H,W], shape)
SBA_CASES = {
    "epilogue": ("lrelu", 256, "snb", "random", (5, 67, 19, 23)),
    "epilogue_c64": ("lrelu", 256, "snb", "random", (4, 64, 40, 36)),
    "const_noise": ("lrelu", 256, "snb", "const", (3, 33, 17, 31)),
    "styles": ("linear", None, "s", None, (5, 67, 19, 23)),
    "bias_act": ("lrelu", 256, "b", None, (3, 65, 9, 11)),
    "tanh": ("tanh", None, "snb", "random", (3, 33, 17, 31)),
    "residual": ("lrelu", 256, "br", None, (3, 65, 9, 11)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(SBA_CASES))
@pytest.mark.parametrize("channels_last", [False, True])
def test_scale_bias_act_fused_matches_reference(dtype, case, channels_last) -> None:
    act, clamp, parts, noise, (n, c, h, w) = SBA_CASES[case]
    g = torch.Generator().manual_seed(sum(map(ord, case)))
    x = torch.randn(n, c, h, w, generator=g).cuda()
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    inputs, names = [x], []
    if "s" in parts:
        inputs.append(torch.randn(n, c, generator=g).cuda() + 1)
        names.append("scale")
    if "n" in parts:
        shape = (n, 1, h, w) if noise == "random" else (h, w)
        inputs.append(torch.randn(shape, generator=g).cuda())
        names.append("noise")
    if "b" in parts:
        inputs.append(torch.randn(c, generator=g).cuda())
        names.append("b")
    if "r" in parts:
        inputs.append(torch.randn_like(x))
        names.append("residual")

    def fn(x, *rest, impl):
        return scale_bias_act(x, **dict(zip(names, rest)), act=act, clamp=clamp, impl=impl)

    # Values representable in ``dtype``, so the truth sees what the fused path sees: otherwise
    # an element whose v = x*s + noise + b lies within the input rounding of lrelu's kink
    # takes the other slope than in the truth (whichever path computes it), and a handful of
    # such elements decide the comparison (seen with fp16 under the interpreter).
    _check(fn, [t.to(dtype).float() for t in inputs], dtype)


@pytest.mark.parametrize("channels_last", [False, True])
def test_scale_bias_act_fused_clamped_float32(channels_last) -> None:
    """An active clamp (a third of the outputs clamped): in fp32 the mask agrees with the
    float64 truth except within rounding of the bound."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(6, 37, 21, 13, generator=g).cuda()
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    s = torch.randn(6, 37, generator=g).cuda() + 1
    nz = torch.randn(6, 1, 21, 13, generator=g).cuda()
    b = torch.randn(37, generator=g).cuda()
    _check(lambda x, s, nz, b, impl: scale_bias_act(x, s, nz, b, act="lrelu", clamp=1.0,
                                                    impl=impl), [x, s, nz, b], torch.float32)
