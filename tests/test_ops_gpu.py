"""Fused (Triton) vs reference ops on CUDA: outputs, first and second derivatives.

Tolerances, relative to the max magnitude of the reference result (the reference runs in
float64 on the same inputs, so the error budget is the fused path's own rounding):
fp32 1e-4, bf16 3e-2, fp16 1e-2 for outputs and first derivatives; second derivatives get
twice that. Shapes are random, including odd sizes, from a fixed seed.
"""

from __future__ import annotations

import pytest
import torch

from dgan.ops import ACTIVATIONS, bias_act, modulated_conv2d, setup_filter, upfirdn2d

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
pytest.importorskip("triton")

TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 1e-2}
DTYPES = list(TOL)


def _check(fn, inputs, dtype: torch.dtype) -> None:
    """Run ``fn`` fused in ``dtype`` and reference in float64 on the same values."""
    def run(impl, dt):
        xs = [t.detach().to(dt).requires_grad_() if t.is_floating_point() else t for t in inputs]
        y = fn(*xs, impl=impl)
        g = torch.autograd.grad(y.float().square().sum(), xs, create_graph=True)
        gg = torch.autograd.grad(sum((t.float() * t.detach().float().sign()).sum() for t in g), xs)
        return [y, *g], list(gg)
    (first_f, second_f), (first_r, second_r) = run("fused", dtype), run("reference", torch.float64)
    for a, b in zip(first_f, first_r):
        scale = max(b.abs().max().item(), 1.0)
        assert (a.double() - b).abs().max().item() <= TOL[dtype] * scale
    for a, b in zip(second_f, second_r):
        scale = max(b.abs().max().item(), 1.0)
        assert (a.double() - b).abs().max().item() <= 2 * TOL[dtype] * scale


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_bias_act_fused_matches_reference(dtype: torch.dtype, act: str) -> None:
    g = torch.Generator().manual_seed(hash(act) % 1000)
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
                                             (1, 2, 1, False), (2, 1, 3, False)])
def test_modulated_conv2d_fused_matches_reference(dtype, up, down, k, fused) -> None:
    g = torch.Generator().manual_seed(k + up)
    x = torch.randn(5, 19, 13, 13, generator=g).cuda()
    w = torch.randn(21, 19, k, k, generator=g).cuda()
    s = torch.randn(5, 19, generator=g).cuda() + 1
    f = setup_filter([1, 3, 3, 1], device="cuda")
    _check(lambda x, w, s, impl: modulated_conv2d(x, w, s, up=up, down=down, padding=k // 2,
                                                  resample_filter=f, fused_modconv=fused,
                                                  impl=impl), [x, w, s], dtype)
