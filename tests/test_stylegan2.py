"""StyleGAN2 G/D: parameter counts, shapes, conditioning, and a short CPU training run."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dgan.augment import AdaptiveAugment
from dgan.engine.ema import halflife_beta, update_ema
from dgan.models.stylegan2 import Discriminator, Generator
from dgan.tasks.stylegan2_loss import StyleGAN2Loss, lazy_adam_hparams


def _count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_parameter_counts_match_nvlabs_stylegan2_256() -> None:
    torch.manual_seed(0)
    g = Generator(z_dim=512, w_dim=512, img_resolution=256, img_channels=3,
                  channel_base=16384, channel_max=512, mapping_layers=2)
    d = Discriminator(img_resolution=256, img_channels=3, channel_base=16384, channel_max=512)
    assert abs(_count(g) - 23.2e6) / 23.2e6 < 0.01, _count(g)
    assert abs(_count(d) - 24.0e6) / 24.0e6 < 0.01, _count(d)
    assert g.num_ws == 14


def _small_pair(c_dim: int = 0, **kw) -> tuple[Generator, Discriminator]:
    g = Generator(z_dim=16, c_dim=c_dim, w_dim=16, img_resolution=32, img_channels=3,
                  channel_base=128, channel_max=16, mapping_layers=2, **kw)
    d = Discriminator(c_dim=c_dim, img_resolution=32, img_channels=3, channel_base=128,
                      channel_max=16, **kw)
    return g, d


@pytest.mark.parametrize("fused_modconv", [False, True])
def test_generator_modes_and_truncation(fused_modconv: bool) -> None:
    torch.manual_seed(0)
    g, d = _small_pair(c_dim=3)
    g.synthesis.requires_grad_(False)
    for m in g.modules():
        if hasattr(m, "fused_modconv"):
            m.fused_modconv = fused_modconv
        if hasattr(m, "noise_strength"):
            m.noise_strength.fill_(0.1)  # initialised to 0, which would hide the noise
    z, c = torch.randn(4, 16), torch.eye(3)[[0, 1, 2, 0]]
    a = g(z, c, noise_mode="const")
    assert a.shape == (4, 3, 32, 32) and a.dtype == torch.float32
    torch.testing.assert_close(a, g(z, c, noise_mode="const"))
    assert not torch.allclose(g(z, c, noise_mode="random"), g(z, c, noise_mode="random"))
    # psi = 0 collapses every sample onto w_avg: identical images.
    t = g(z, c, truncation_psi=0.0, noise_mode="const")
    torch.testing.assert_close(t[0], t[1])
    assert d(a, c).shape == (4, 1)


def test_fused_and_grouped_modconv_agree() -> None:
    torch.manual_seed(0)
    g, _ = _small_pair()
    z = torch.randn(2, 16)
    a = g(z, noise_mode="const")
    for m in g.modules():
        if hasattr(m, "fused_modconv"):
            m.fused_modconv = True
    torch.testing.assert_close(g(z, noise_mode="const"), a, rtol=1e-4, atol=1e-4)


def test_channels_last_matches_contiguous() -> None:
    torch.manual_seed(0)
    g, d = _small_pair()
    torch.manual_seed(0)
    g2, d2 = _small_pair(channels_last=True)
    z = torch.randn(2, 16)
    img = g(z, noise_mode="const")
    torch.testing.assert_close(g2(z, noise_mode="const"), img, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(d2(img), d(img), rtol=1e-4, atol=1e-4)


def test_four_phases_train_on_cpu() -> None:
    torch.manual_seed(0)
    g, d = _small_pair()
    g_ema = copy.deepcopy(g).eval().requires_grad_(False)
    aug = AdaptiveAugment(p=0.5)
    loss_fn = StyleGAN2Loss(g, d, augment=aug, r1_gamma=1.0, r1_interval=2, pl_interval=2)
    lr, betas = lazy_adam_hparams(2e-3, (0.0, 0.99), 2)
    opt_g = torch.optim.Adam(g.parameters(), lr=lr, betas=betas)
    opt_d = torch.optim.Adam(d.parameters(), lr=lr, betas=betas)
    g0 = [p.detach().clone() for p in g.parameters()]
    d0 = [p.detach().clone() for p in d.parameters()]
    ema0 = [p.detach().clone() for p in g_ema.parameters()]
    real = torch.rand(4, 3, 32, 32) * 2 - 1
    seen: list[str] = []
    for step in range(3):
        for phase in loss_fn.phases(step):
            seen.append(phase)
            net, opt = (g, opt_g) if phase.startswith("G") else (d, opt_d)
            opt.zero_grad(set_to_none=True)
            if phase == "Gmain":
                loss, stats = loss_fn.g_main(4)
            elif phase == "Greg":
                loss, stats = loss_fn.g_reg(4)
            elif phase == "Dmain":
                loss, stats = loss_fn.d_main(real)
            else:
                loss, stats = loss_fn.d_reg(real)
            loss.backward()
            assert torch.isfinite(loss) and all(torch.isfinite(v) for v in stats.values())
            opt.step()
        update_ema(g_ema, g, halflife_beta(cur_nimg=(step + 1) * 4, batch_size=4))
    assert seen.count("Greg") == 2 and seen.count("Dreg") == 2 and seen.count("Dmain") == 3
    assert float(loss_fn.pl_mean) > 0
    assert "pl_mean" in loss_fn.state_dict() and len(loss_fn.state_dict()) == 1
    for before, net in ((g0, g), (d0, d), (ema0, g_ema)):
        params = list(net.parameters())
        assert all(torch.isfinite(p).all() for p in params)
        assert any(not torch.equal(a, b) for a, b in zip(before, params))


def test_ema_rampup_and_foreach_lerp() -> None:
    g = torch.nn.Linear(2, 2)
    g_ema = copy.deepcopy(g)
    with torch.no_grad():
        g.weight.add_(1.0)
    beta = update_ema(g_ema, g, halflife_beta(cur_nimg=1000, batch_size=10, ema_kimg=10,
                                              ema_rampup=0.05))
    assert beta == pytest.approx(0.5 ** (10 / 50))
    torch.testing.assert_close(g_ema.weight, g.weight - beta)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_all_phases_under_autocast_with_channels_last(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    g, d = _small_pair(channels_last=True)
    loss_fn = StyleGAN2Loss(g, d, augment=AdaptiveAugment(p=0.5), r1_interval=1, pl_interval=1)
    real = torch.rand(4, 3, 32, 32) * 2 - 1
    calls = {"Gmain": lambda: loss_fn.g_main(4), "Greg": lambda: loss_fn.g_reg(4),
             "Dmain": lambda: loss_fn.d_main(real), "Dreg": lambda: loss_fn.d_reg(real)}
    assert loss_fn.phases(0) == ["Gmain", "Greg", "Dmain", "Dreg"]
    for phase in loss_fn.phases(0):
        g.zero_grad(set_to_none=True)
        d.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype):
            loss, _ = calls[phase]()
        loss.backward()
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        net = g if phase.startswith("G") else d
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(gr).all() for gr in grads)


def test_style_mixing_switches_latents_after_a_cutoff() -> None:
    torch.manual_seed(0)
    g, _ = _small_pair()
    z = torch.randn(3, 16)
    _, ws = g(z, style_mixing_prob=0.0, return_ws=True)
    assert torch.equal(ws, ws[:, :1].expand_as(ws))
    for _ in range(5):
        _, ws = g(z, style_mixing_prob=1.0, return_ws=True)
        same = [torch.equal(ws[:, i], ws[:, 0]) for i in range(g.num_ws)]
        cutoff = same.index(False)  # at least the last w comes from the second latent
        assert 1 <= cutoff < g.num_ws and not any(same[cutoff:])


@pytest.mark.parametrize("resolution", [64, 1024])
def test_resolutions_build_and_run(resolution: int) -> None:
    torch.manual_seed(0)
    kw = {"img_resolution": resolution, "channel_base": 2 * resolution, "channel_max": 4}
    g = Generator(z_dim=4, w_dim=4, mapping_layers=1, **kw)
    d = Discriminator(**kw)
    with torch.no_grad():
        img = g(torch.randn(2, 4))
        assert img.shape == (2, 3, resolution, resolution) and d(img).shape == (2, 1)
    assert g.num_ws == 2 * int(torch.log2(torch.tensor(resolution))) - 2


def test_invalid_configs_are_rejected() -> None:
    with pytest.raises(ValueError, match="power of two"):
        Generator(img_resolution=48)
    with pytest.raises(ValueError, match="no channels"):
        Discriminator(img_resolution=128, channel_base=64)


@pytest.mark.parametrize("down", [1, 2])
def test_linear_conv_layer_folds_its_gain_into_the_weight(down: int, monkeypatch) -> None:
    """A bias-free linear Conv2dLayer (D's skip) scales its weight, not its output: no
    activation pass, same result as convolving and then multiplying by the gain."""
    from dgan.models import _layers
    from dgan.models._layers import Conv2dLayer
    from dgan.ops import conv2d_resample

    torch.manual_seed(0)
    layer = Conv2dLayer(6, 5, 1, bias=False, down=down).double()
    x = torch.randn(2, 6, 8, 8, dtype=torch.float64)
    w = layer.weight * layer.weight_gain
    want = conv2d_resample(x, w, layer.resample_filter, down=down) * 0.7
    with monkeypatch.context() as m:
        m.setattr(_layers, "scale_bias_act", lambda *a, **k: pytest.fail("bias_act was called"))
        got = layer(x, gain=0.7)
    torch.testing.assert_close(got, want)
    # With a bias the activation pass stays: gain applies after the bias.
    biased = Conv2dLayer(6, 5, 1, down=down).double()
    with torch.no_grad():
        biased.weight.copy_(layer.weight)
        biased.bias.fill_(1.0)
    torch.testing.assert_close(biased(x, gain=0.7), (want / 0.7 + 1.0) * 0.7)


class _Casts(TorchDispatchMode):
    """Counts dtype casts (``_to_copy``): each is a kernel launch of its own on a GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += func.overloadpacket.__name__ == "_to_copy"
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fully_connected_layers_stay_float32_under_autocast(dtype: torch.dtype) -> None:
    """The mapping network, the style affines and D's head run in fp32 with no casts of
    their weights (each cast, and its gradient's cast back, is a kernel launch of its own)."""
    from dgan.models._layers import FullyConnectedLayer

    torch.manual_seed(0)
    fc = FullyConnectedLayer(16, 8, activation="lrelu", lr_multiplier=0.01)
    lin = FullyConnectedLayer(16, 8)
    x = torch.randn(4, 16, requires_grad=True)
    with _Casts() as casts:
        with torch.autocast("cpu", dtype=dtype):
            y, z = fc(x), lin(x)
        (y.sum() + z.sum()).backward()  # outside autocast, as the recipe's backward runs
    assert y.dtype == z.dtype == torch.float32
    assert casts.n == 0
    assert torch.allclose(z, x @ (lin.weight / 4).t() + lin.bias, atol=1e-6)
    g = Generator(z_dim=8, w_dim=8, img_resolution=32, channel_base=64, channel_max=16)
    with torch.autocast("cpu", dtype=dtype):
        ws = g.mapping(torch.randn(2, 8), None)
    assert ws.dtype == torch.float32


def test_regularisers_take_their_gradient_without_autocast_casts() -> None:
    """R1's and path length's inner gradient runs with autocast off: an fp32 layer's backward
    stays fp32 instead of being cast to bf16 and back."""
    from dgan.models._layers import FullyConnectedLayer
    from dgan.tasks.stylegan2_loss import _grad_of

    fc = FullyConnectedLayer(16, 8, activation="lrelu")
    x = torch.randn(4, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with _Casts() as plain:
            (g0,) = torch.autograd.grad(fc(x).square().sum(), x, create_graph=True)
        with _Casts() as ours:
            (g1,) = _grad_of(fc(x).square().sum(), x)
    assert plain.n > 0 and ours.n == 0
    assert g1.dtype == torch.float32 and g1.requires_grad
    (h1,) = torch.autograd.grad(g1.square().sum(), x)  # and a second derivative follows
    with torch.no_grad():
        ref = torch.func.grad(lambda t: torch.func.grad(lambda u: fc(u).square().sum())(t)
                              .square().sum())(x)
    torch.testing.assert_close(h1, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g1, g0.float(), rtol=2e-2, atol=2e-2)


def test_discriminator_splits_match_separate_calls_and_mbstd_formula() -> None:
    """D on [fakes; reals] with splits=2 gives exactly the logits of one call per half (the
    minibatch-stddev groups stay inside a half); splits=1 keeps the NVlabs grouping."""
    from dgan.models._stylegan2_d import MinibatchStdLayer

    torch.manual_seed(0)
    d = Discriminator(img_resolution=32, channel_base=256, channel_max=32).double()
    x = torch.randn(16, 3, 32, 32, dtype=torch.float64)
    both = d(x, splits=2)
    torch.testing.assert_close(both, torch.cat([d(x[:8]), d(x[8:])]), rtol=0, atol=1e-12)
    assert (both - d(x)).abs().max() > 1e-6  # one call of 16 would mix the halves' groups
    with pytest.raises(ValueError, match="does not split"):
        d(x[:15], splits=2)

    mb = MinibatchStdLayer(group_size=4, num_channels=2)
    h = torch.randn(12, 6, 4, 4, dtype=torch.float64)
    y = h.reshape(4, -1, 2, 3, 4, 4)  # NVlabs: group g holds samples g * 3 + j
    y = ((y - y.mean(0)).square().mean(0) + 1e-8).sqrt().mean(dim=[2, 3, 4])
    expect = torch.cat([h, y.reshape(-1, 2, 1, 1).repeat(4, 1, 4, 4)], dim=1)
    torch.testing.assert_close(mb(h), expect, rtol=1e-6, atol=1e-6)  # statistics in fp32
    torch.testing.assert_close(mb(torch.cat([h, h]), splits=2), torch.cat([expect, expect]),
                               rtol=1e-6, atol=1e-6)


def test_d_main_runs_fakes_and_reals_in_one_d_call_with_the_same_loss() -> None:
    torch.manual_seed(0)
    g = Generator(z_dim=16, w_dim=16, img_resolution=32, channel_base=256, channel_max=32)
    d = Discriminator(img_resolution=32, channel_base=256, channel_max=32)
    loss = StyleGAN2Loss(g, d, style_mixing_prob=0.0)
    real = torch.randn(8, 3, 32, 32)
    calls = []
    d.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    torch.manual_seed(1)
    value, stats = loss.d_main(real)
    assert calls == [16]
    torch.manual_seed(1)
    with torch.no_grad():
        fake = g(loss._z(8), None, style_mixing_prob=0.0, update_emas=True)
    f, r = d(fake), d(real)
    expect = torch.nn.functional.softplus(f).mean() + torch.nn.functional.softplus(-r).mean()
    torch.testing.assert_close(value, expect, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats["D/real_score"], r.mean(), rtol=1e-5, atol=1e-6)
    value.backward()
    assert all(p.grad is not None for p in d.parameters())
