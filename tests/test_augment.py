"""Differentiable augmentation and the adaptive probability p."""

from __future__ import annotations

import pytest
import torch

from dgan.augment import AdaptiveAugment, brightness, cutout, translation


def test_p_rises_when_d_overfits_and_falls_otherwise() -> None:
    aug = AdaptiveAugment(p=0.0, target=0.6, speed_kimg=500)
    for _ in range(10):
        aug.observe(torch.full((64, 1), 3.0))  # D confident on every real: r_t = 1 > 0.6
        aug.update()
    # 640 images at 500k images per unit of p.
    assert float(aug.p) == pytest.approx(640 / 500_000)
    for _ in range(20):
        aug.observe(-torch.ones(64, 1))
        aug.update()
    assert float(aug.p) == 0.0  # clamped at 0


def test_p_can_go_from_zero_to_one_in_500k_images() -> None:
    aug = AdaptiveAugment(p=0.0, speed_kimg=500)
    aug.observe(torch.ones(500_000))
    aug.update()
    assert float(aug.p) == pytest.approx(1.0)


def test_p_is_checkpointed_and_update_uses_all_reduce() -> None:
    aug = AdaptiveAugment(p=0.3)
    state = aug.state_dict()
    assert set(state) == {"p"}
    other = AdaptiveAugment()
    other.load_state_dict(state)
    assert float(other.p) == pytest.approx(0.3)
    other.observe(torch.ones(10))
    rt = other.update(all_reduce=lambda t: t * torch.tensor([-1.0, 2.0]))  # two "ranks"
    assert rt == pytest.approx(-0.5) and float(other.p) < 0.3


def test_fixed_p_without_target() -> None:
    aug = AdaptiveAugment(p=0.5, target=None)
    aug.observe(torch.ones(1000))
    aug.update()
    assert float(aug.p) == 0.5


def test_gradients_and_second_derivatives_flow_through_augmentation() -> None:
    torch.manual_seed(0)
    aug = AdaptiveAugment(p=1.0)
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    w = torch.randn(3, 8, 8, requires_grad=True)
    y = aug(x)
    assert y.shape == x.shape and not torch.allclose(y, x)
    (g,) = torch.autograd.grad((y * w).square().sum(), x, create_graph=True)
    assert g.abs().sum() > 0
    (gw,) = torch.autograd.grad(g.square().sum(), w)  # the R1 pattern: grad of a grad
    assert torch.isfinite(gw).all() and gw.abs().sum() > 0


def test_zero_p_is_identity() -> None:
    x = torch.randn(2, 3, 8, 8)
    assert AdaptiveAugment(p=0.0)(x) is x


def test_individual_ops() -> None:
    torch.manual_seed(0)
    x = torch.ones(2, 1, 8, 8)
    on, off = torch.ones(2, 1, 1, 1), torch.zeros(2, 1, 1, 1)
    assert torch.equal(translation(x, off), x) and torch.equal(cutout(x, off), x)
    assert torch.equal(brightness(x, off), x)
    cut = cutout(x, on, ratio=0.5)
    assert ((cut == 0).float().mean(dim=[1, 2, 3]) > 0.1).all()
    a = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
    for seed in range(5):
        torch.manual_seed(seed)
        t = translation(a, torch.ones(1, 1, 1, 1), ratio=0.5)
        # The result must be a whole-pixel shift of ``a`` with zeros shifted in.
        matches = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                ref = torch.zeros(6 + 4, 6 + 4)
                ref[3 + dy:7 + dy, 3 + dx:7 + dx] = a[0, 0]
                matches.append(torch.equal(t[0, 0], ref[3:7, 3:7]))
        assert any(matches)


def test_loaded_p_takes_effect_in_forward() -> None:
    aug = AdaptiveAugment(p=0.0)
    x = torch.randn(2, 3, 8, 8)
    assert aug(x) is x
    aug.load_state_dict(AdaptiveAugment(p=1.0).state_dict())
    assert not torch.equal(aug(x), x)
