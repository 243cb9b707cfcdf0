"""conv2d_gradfix: same values and derivatives (first and second order) as torch's convs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dgan.ops import no_weight_gradients
from dgan.ops.conv2d_gradfix import conv2d, conv_transpose2d

CASES = [  # (transposed, stride, padding, groups, kernel)
    (False, 1, 1, 1, 3), (False, 2, 0, 1, 3), (False, 1, 0, 2, 1), (False, 2, 1, 2, 3),
    (True, 2, 0, 1, 3), (True, 2, 1, 2, 3), (True, 1, 1, 1, 3),
]


def _inputs(transposed, groups, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    cin, cout = 2, 4
    x = torch.randn(2, cin, 5, 4, generator=g, dtype=torch.float64)
    shape = (cin, cout // groups, k, k) if transposed else (cout, cin // groups, k, k)
    w = torch.randn(*shape, generator=g, dtype=torch.float64)
    return x.requires_grad_(), w.requires_grad_()


def _op(transposed, stride, padding, groups, impl):
    if transposed:
        return lambda x, w: conv_transpose2d(x, w, stride, padding, groups=groups, impl=impl)
    return lambda x, w: conv2d(x, w, stride, padding, groups=groups, impl=impl)


@pytest.mark.parametrize("transposed,stride,padding,groups,k", CASES)
def test_gradcheck_and_gradgradcheck(transposed, stride, padding, groups, k):
    x, w = _inputs(transposed, groups, k)
    op = _op(transposed, stride, padding, groups, "fused")
    assert torch.autograd.gradcheck(op, (x, w), fast_mode=True)
    assert torch.autograd.gradgradcheck(op, (x, w), fast_mode=True)


@pytest.mark.parametrize("transposed,stride,padding,groups,k", CASES)
def test_r1_style_second_derivative_matches_torch(transposed, stride, padding, groups, k):
    """grad w.r.t. the input with create_graph, a penalty on it, then weight gradients."""
    results = {}
    for impl in ("fused", "reference"):
        x, w = _inputs(transposed, groups, k, seed=1)
        op = _op(transposed, stride, padding, groups, impl)
        y = F.leaky_relu(op(x, w), 0.2)
        y = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).square()
        with no_weight_gradients(impl == "fused"):
            (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
        penalty = gx.square().sum()
        gw, gx2 = torch.autograd.grad(penalty, [w, x])
        results[impl] = (op(x, w), gx, gw, gx2)
    for a, b in zip(results["fused"], results["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_no_weight_gradients_skips_weights_only():
    x, w = _inputs(False, 1, 3)
    y = conv2d(x, w, 1, 1, impl="fused")
    with no_weight_gradients():
        y.square().sum().backward()
    assert w.grad is None and x.grad is not None
    y = conv2d(x, w, 1, 1, impl="fused")
    y.square().sum().backward()  # outside the context the weights get their gradient
    assert w.grad is not None


def test_auto_path_uses_custom_function_only_inside_double_backward(monkeypatch):
    """Outside double_backward() convolutions are plain torch ops (first-order backward is
    as fast there); inside, on the fused path, they are the custom Functions."""
    from dgan.ops import conv2d_gradfix, double_backward

    monkeypatch.setattr(conv2d_gradfix, "use_fused", lambda op, x, impl: impl != "reference")
    x, w = _inputs(False, 1, 3)
    assert conv2d(x, w, 1, 1).grad_fn.name() != "_ConvBackward"
    with double_backward():
        y = conv2d(x, w, 1, 1)
        assert conv2d(x, w, 1, 1, impl="reference").grad_fn.name() != "_ConvBackward"
    assert y.grad_fn.name() == "_ConvBackward"
