"""PSNR and SSIM (dgan.metrics.quality) against values scikit-image 0.26 gives for the same
arrays (structural_similarity with gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1; peak_signal_noise_ratio with data_range=1),
and the U-Net / PatchGAN shapes and sizes of the published pix2pix networks."""

import numpy as np
import pytest
import torch

from dgan.metrics.quality import MAX_PSNR, psnr, ssim
from dgan.models.pix2pix import PatchDiscriminator, UNetGenerator


def pair():
    rng = np.random.default_rng(0)
    a = rng.random((3, 40, 48))
    b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1)
    return torch.tensor(a)[None] * 2 - 1, torch.tensor(b)[None] * 2 - 1


def test_psnr_and_ssim_match_scikit_image():
    a, b = pair()
    assert ssim(a, b).item() == pytest.approx(0.9457990309475043, abs=1e-6)
    assert psnr(a, b).item() == pytest.approx(20.46857670076285, abs=1e-4)


def test_identical_images_and_known_offsets():
    a, _ = pair()
    assert ssim(a, a).item() == pytest.approx(1.0, abs=1e-6)
    assert psnr(a, a).item() == MAX_PSNR
    zeros, shifted = torch.zeros(2, 1, 16, 16), torch.full((2, 1, 16, 16), 0.2)  # 0.1 in [0, 1]
    assert psnr(zeros, shifted).tolist() == pytest.approx([20.0, 20.0], abs=1e-4)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 1, 10, 12), torch.zeros(1, 1, 10, 12))


def test_pix2pix_networks_have_the_published_sizes():
    g = UNetGenerator(3, 3, 256, width=64)
    d = PatchDiscriminator(6, width=64, layers=3)
    # pix2pix's unet_256 / basic PatchGAN: 54.41M and 2.77M parameters (with instance norm's
    # affine weights)
    assert sum(p.numel() for p in g.parameters()) == 54_414_531
    assert sum(p.numel() for p in d.parameters()) == 2_768_705
    assert sum(isinstance(m, torch.nn.Dropout) for m in g.modules()) == 3
    x = torch.randn(1, 3, 256, 256)
    assert g(x).shape == x.shape and d(x, x).shape == (1, 1, 30, 30)  # 70x70 patches
    small = UNetGenerator(1, 1, 32, width=8)
    assert small(torch.randn(2, 1, 32, 32)).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="not divisible"):
        UNetGenerator(1, 1, 48)
