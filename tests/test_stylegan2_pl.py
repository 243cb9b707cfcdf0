"""The regularisers' inner gradients written out as forward ops (what lets torch.compile
hold Greg and Dreg).

``SynthesisNetwork.forward_and_vjp`` must give autograd's ``d sum(g * img) / d ws`` and
``Discriminator.forward_and_input_grad`` autograd's ``d logits.sum() / d img``; since the
penalties differentiate those gradients once more, also the same parameter gradients of any
function of them. The compiled networks must give the eager phases' losses and gradients.
"""

from __future__ import annotations

import pytest
import torch

from dgan.models.stylegan2 import Discriminator, Generator
from dgan.ops import double_backward, setup_filter
from dgan.ops.conv2d_resample import conv2d_resample, conv2d_resample_input_grad
from dgan.ops.upfirdn2d import upsample2d, upsample2d_input_grad

F64 = torch.float64


@pytest.mark.parametrize(("up", "down", "k", "padding", "hw"), [
    (1, 1, 3, 1, (8, 8)), (2, 1, 3, 1, (8, 8)), (2, 1, 3, 1, (5, 7)), (1, 2, 3, 1, (8, 8)),
    (1, 2, 3, 1, (9, 7)), (1, 2, 1, 0, (8, 8)), (1, 1, 1, 0, (6, 6)), (2, 1, 1, 0, (4, 4)),
])
def test_conv2d_resample_input_grad_is_autograds(up, down, k, padding, hw) -> None:
    torch.manual_seed(0)
    f = setup_filter([1, 3, 3, 1]).to(F64)
    x = torch.randn(2, 4, *hw, dtype=F64, requires_grad=True)
    w = torch.randn(5, 4, k, k, dtype=F64)
    y = conv2d_resample(x, w, f, up, down, padding)
    dy = torch.randn_like(y)
    (want,) = torch.autograd.grad(y, x, dy)
    got = conv2d_resample_input_grad(dy, w, hw, f, up, down, padding)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_upsample2d_input_grad_is_autograds() -> None:
    torch.manual_seed(0)
    f = setup_filter([1, 3, 3, 1]).to(F64)
    x = torch.randn(2, 3, 5, 6, dtype=F64, requires_grad=True)
    y = upsample2d(x, f)
    dy = torch.randn_like(y)
    (want,) = torch.autograd.grad(y, x, dy)
    torch.testing.assert_close(upsample2d_input_grad(dy, f, (5, 6)), want, rtol=0, atol=1e-12)


def _generator(res: int = 32, channels_last: bool = False, dtype=torch.float32) -> Generator:
    torch.manual_seed(0)
    g = Generator(z_dim=16, w_dim=16, img_resolution=res, img_channels=3, channel_base=256,
                  channel_max=16, mapping_layers=2, channels_last=channels_last).to(dtype)
    with torch.no_grad():  # non-zero biases and noise strengths: every term matters
        for name, p in g.named_parameters():
            if "bias" in name or "noise_strength" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return g


def _second_derivatives(want: torch.Tensor, got: torch.Tensor, params: list[torch.Tensor]):
    """Pairs ``(from autograd's gradient, from the written-out one)`` of the gradients of
    ``||gradient||^2`` with respect to each of ``params`` (an unused one: zeros)."""
    a = torch.autograd.grad(want.square().sum(), params, allow_unused=True)
    b = torch.autograd.grad(got.square().sum(), params, allow_unused=True)
    for p, x, y in zip(params, a, b):
        yield (torch.zeros_like(p) if x is None else x, torch.zeros_like(p) if y is None else y)


@pytest.mark.parametrize(("res", "channels_last"), [(32, False), (32, True), (64, True)])
def test_forward_and_vjp_is_autograd_to_second_order(res, channels_last) -> None:
    g = _generator(res, channels_last, F64)
    ws = torch.randn(3, g.num_ws, 16, dtype=F64, requires_grad=True)
    img = g.synthesis(ws, noise_mode="const")
    g_img = torch.randn_like(img)
    (want,) = torch.autograd.grad((img * g_img).sum(), ws, create_graph=True)
    img2, got = g.synthesis.forward_and_vjp(ws, lambda im: g_img, noise_mode="const")
    assert torch.equal(img2, img)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-11)
    # The penalty differentiates the gradient again, w.r.t. every parameter and ws.
    for x, y in _second_derivatives(want, got, [ws, *g.parameters()]):
        torch.testing.assert_close(y, x, rtol=1e-9, atol=1e-9 * max(1.0, x.abs().max()))


def _pl_phase(g, z, autocast: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Greg's loss (as StyleGAN2Loss forms it from G's output) and the parameter gradients."""
    base = getattr(g, "_orig_mod", g)
    base.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    with double_backward(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        img, grad = g(z, None, style_mixing_prob=0.9, path_length=True, noise_mode="const")
    loss = grad.float().square().sum(2).mean(1).sqrt().mean() + img[:, 0, 0, 0].mean() * 0
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in base.named_parameters()
                           if p.grad is not None}


def test_compiled_path_length_phase_matches_eager() -> None:
    """torch.compile (AOTAutograd, whole graph) of the generator's path-length call: no graph
    break, the eager (autograd) phase's loss and parameter gradients. The random draws are
    the same (the aot_eager backend runs the graph's ops as they are)."""
    torch._dynamo.reset()
    g = _generator(32, channels_last=True)
    z = torch.randn(4, 16)
    loss, grads = _pl_phase(g, z)
    compiled = torch.compile(g, backend="aot_eager", fullgraph=True, dynamic=False)
    loss_c, grads_c = _pl_phase(compiled, z)
    torch.testing.assert_close(loss_c, loss, rtol=1e-5, atol=1e-6)
    assert grads_c.keys() == grads.keys()
    for name, want in grads.items():
        torch.testing.assert_close(grads_c[name], want, rtol=1e-4,
                                   atol=1e-5 * max(1.0, want.abs().max().item())), name


def _error(grads: dict[str, torch.Tensor], truth: dict[str, torch.Tensor]) -> float:
    """Overall relative error ``||grads - truth|| / ||truth||`` over every parameter."""
    num = sum(((grads[n] - t) ** 2).sum() for n, t in truth.items())
    return (num / sum((t ** 2).sum() for t in truth.values())).sqrt().item()


def test_written_out_gradient_under_bf16_autocast_is_at_least_as_accurate(monkeypatch) -> None:
    """bf16 autocast: the written-out form's parameter gradients are no further from the
    fp32 ones than the eager autograd form's (overall relative error; measured here 0.04
    against autograd's 0.14-0.18, whose bf16 convolution double backward is the worse)."""
    from dgan.models import stylegan2

    g = _generator(32, channels_last=True)
    z = torch.randn(4, 16)
    _, truth = _pl_phase(g, z)
    _, autograd = _pl_phase(g, z, autocast=True)
    monkeypatch.setattr(stylegan2, "EAGER_PL_VJP", True)
    _, vjp = _pl_phase(g, z, autocast=True)

    assert _error(vjp, truth) <= min(_error(autograd, truth), 0.08)


def test_forward_and_vjp_refuses_fp16() -> None:
    g = _generator(32)
    ws = torch.randn(2, g.num_ws, 16)
    with pytest.raises(NotImplementedError, match="float16"):
        g.half().synthesis.forward_and_vjp(ws.half(), lambda im: im, noise_mode="const")


def test_train_compile_leaves_greg_eager_under_fp16_and_dreg_with_augmentation() -> None:
    from dgan.config import load_config
    from dgan.tasks.stylegan2 import compiled_phases

    base = ["model.name=stylegan2", "data.resolution=32", "train.compile=true"]
    assert compiled_phases(load_config(None, base)) == ("Gmain", "Dmain", "Greg", "Dreg")
    assert compiled_phases(load_config(None, [*base, "train.precision=fp16"])) == \
        ("Gmain", "Dmain", "Dreg")
    assert compiled_phases(load_config(None, [*base, "loss.augment=ada"])) == \
        ("Gmain", "Dmain", "Greg")


# -- R1: the discriminator's input gradient ---------------------------------------------------

def _discriminator(c_dim: int = 0, channels_last: bool = False, dtype=torch.float32
                   ) -> Discriminator:
    torch.manual_seed(0)
    d = Discriminator(c_dim=c_dim, img_resolution=32, channel_base=256, channel_max=16,
                      channels_last=channels_last, mapping_layers=2).to(dtype)
    with torch.no_grad():
        for p in d.parameters():
            if p.ndim <= 1:
                p.add_(torch.randn_like(p) * 0.2)
    return d


@pytest.mark.parametrize(("channels_last", "c_dim", "splits", "n"), [
    (False, 0, 1, 4), (True, 0, 2, 8), (True, 5, 1, 6), (False, 0, 1, 6)])
def test_forward_and_input_grad_is_autograd_to_second_order(channels_last, c_dim, splits,
                                                            n) -> None:
    """Float64, so the two forms agree to rounding (minibatch-stddev groups of 4, of 2 for
    n=6, and the projection head with c_dim > 0 included)."""
    d = _discriminator(c_dim, channels_last, F64)
    img = torch.randn(n, 3, 32, 32, dtype=F64, requires_grad=True)
    c = torch.randn(n, c_dim, dtype=F64) if c_dim else None
    logits = d(img, c, splits)
    (want,) = torch.autograd.grad(logits.sum(), img, create_graph=True)
    logits2, got = d.forward_and_input_grad(img, c, splits)
    assert torch.equal(logits2, logits)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-15)
    for x, y in _second_derivatives(want, got, [img, *d.parameters()]):
        torch.testing.assert_close(y, x, rtol=1e-9, atol=1e-14)


def _r1_phase(d, img, autocast: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Dreg's penalty (as StyleGAN2Loss forms it from D's output) and parameter gradients."""
    base = getattr(d, "_orig_mod", d)
    base.zero_grad(set_to_none=True)
    with double_backward(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits, grad = d(img.detach().requires_grad_(True), None, input_grad=True)
    loss = grad.float().square().sum(dim=[1, 2, 3]).mean() + logits.mean() * 0
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in base.named_parameters()
                           if p.grad is not None}


def test_compiled_r1_phase_matches_eager() -> None:
    torch._dynamo.reset()
    d = _discriminator(channels_last=True)
    img = torch.randn(8, 3, 32, 32).to(memory_format=torch.channels_last)
    loss, grads = _r1_phase(d, img)
    compiled = torch.compile(d, backend="aot_eager", fullgraph=True, dynamic=False)
    loss_c, grads_c = _r1_phase(compiled, img)
    torch._dynamo.reset()
    torch.testing.assert_close(loss_c, loss, rtol=1e-5, atol=1e-8)
    assert grads_c.keys() == grads.keys()
    for name, want in grads.items():
        torch.testing.assert_close(grads_c[name], want, rtol=1e-4,
                                   atol=1e-5 * max(1e-3, want.abs().max().item())), name


def test_written_out_r1_under_bf16_autocast_is_at_least_as_accurate(monkeypatch) -> None:
    from dgan.models import _stylegan2_d

    d = _discriminator(channels_last=True)
    img = torch.randn(8, 3, 32, 32).to(memory_format=torch.channels_last)
    _, truth = _r1_phase(d, img)
    _, autograd = _r1_phase(d, img, autocast=True)
    monkeypatch.setattr(_stylegan2_d, "EAGER_R1_VJP", True)
    _, vjp = _r1_phase(d, img, autocast=True)

    assert _error(vjp, truth) <= min(_error(autograd, truth), 0.08)  # seen: 0.04 vs 0.33
