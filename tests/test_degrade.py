"""SR degradations (dgan.data.degrade) and the torch JPEG codec (dgan.data.jpeg)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image

from dgan.data.builtin import load_mnist, stacked_mnist
from dgan.data.degrade import DegradeConfig, apply_params, bicubic_degrade, degrade, draw_params
from dgan.data.jpeg import jpeg, quant_tables
from dgan.engine.seeding import step_generator


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def only(**on) -> DegradeConfig:
    """A config with every degradation off except the fields given."""
    off = {"blur_prob": 0.0, "resize_up_prob": 0.0, "resize_down_prob": 0.0,
           "noise_prob": 0.0, "jpeg_prob": 0.0, "second_order": 0.0}
    return DegradeConfig(**{**off, **on})


def hf_energy(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of neighbouring pixels (high-frequency energy), per sample."""
    return ((x[..., 1:, :] - x[..., :-1, :]) ** 2).mean((1, 2, 3)) + \
        ((x[..., :, 1:] - x[..., :, :-1]) ** 2).mean((1, 2, 3))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


def on_levels(x: torch.Tensor) -> bool:
    return bool(torch.equal(torch.round(x * 255) / 255, x))


def smooth_rgb(n: int, size: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size),
                            indexing="ij")
    img = torch.stack([0.5 + 0.4 * torch.sin(6 * xx + 2 * yy), 0.5 + 0.4 * torch.cos(5 * yy),
                       xx * yy])
    return (torch.round(img * 255) / 255).expand(n, 3, size, size).contiguous()


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("scale", [1, 2, 4])
def test_shapes_range_and_levels(channels: int, scale: int) -> None:
    hr = torch.rand(5, channels, 48, 40)
    lr = degrade(hr, scale, DegradeConfig(), gen(1))
    assert lr.shape == (5, channels, 48 // scale, 40 // scale) and lr.dtype == torch.float32
    assert lr.min() >= 0 and lr.max() <= 1 and on_levels(lr)
    assert degrade(hr[:0], scale, DegradeConfig(), gen(1)).shape == (0, channels, 48 // scale,
                                                                     40 // scale)


def test_same_generator_identical_other_step_differs_samples_differ() -> None:
    hr = torch.rand(1, 3, 32, 32).expand(6, 3, 32, 32).contiguous()  # six copies of one image
    cfg = DegradeConfig()
    a = degrade(hr, 2, cfg, step_generator(7, 0, 100, 3))
    b = degrade(hr, 2, cfg, step_generator(7, 0, 100, 3))
    c = degrade(hr, 2, cfg, step_generator(7, 0, 101, 3))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # every sample its own parameters: no two copies degrade alike
    for i in range(6):
        for j in range(i + 1, 6):
            assert not torch.equal(a[i], a[j])


def test_parameters_are_per_sample() -> None:
    p = draw_params(64, DegradeConfig(), gen(2))
    assert p.first.quality.unique().numel() > 10 and p.first.factor.unique().numel() > 10
    assert p.first.kernel.shape == (64, 21, 21) and p.second.kernel.shape == (64, 21, 21)
    assert torch.allclose(p.first.kernel.sum((1, 2)), torch.ones(64))
    assert p.first.noise_seed.unique().numel() == 64


def test_a_sample_degrades_alike_in_any_batch() -> None:
    """The ragged canvas (samples of different sizes in one tensor) gives each sample what
    it would get alone, bit for bit."""
    hr = torch.rand(6, 3, 48, 48)
    cfg = DegradeConfig()
    p = draw_params(6, cfg, gen(3))
    assert p.first.factor.unique().numel() == 6  # six sizes on one canvas
    batch = apply_params(hr, 2, cfg, p)
    for i in range(6):
        assert torch.equal(apply_params(hr[i:i + 1], 2, cfg, p.select(i)), batch[i:i + 1])


def test_omegaconf_node_is_accepted() -> None:
    hr = torch.rand(2, 3, 16, 16)
    node = OmegaConf.structured(DegradeConfig)
    assert torch.equal(degrade(hr, 2, node, gen(4)), degrade(hr, 2, DegradeConfig(), gen(4)))


def test_nothing_on_is_quantization_only() -> None:
    hr = torch.rand(3, 3, 24, 24)
    assert torch.equal(degrade(hr, 1, only(), gen(0)), torch.round(hr * 255) / 255)


def test_blur_lowers_high_frequencies_and_kernels_are_iso_or_not() -> None:
    hr = torch.rand(4, 3, 32, 32)
    out = degrade(hr, 1, only(blur_prob=1.0, blur_sigma_min=1.0), gen(0))
    assert (hf_energy(out) < 0.3 * hf_energy(hr)).all()
    iso = draw_params(16, only(blur_prob=1.0, blur_iso_prob=1.0), gen(0)).first.kernel
    aniso = draw_params(16, only(blur_prob=1.0, blur_iso_prob=0.0), gen(0)).first.kernel
    assert torch.allclose(iso, iso.transpose(1, 2), atol=1e-6)
    assert not torch.allclose(aniso, aniso.transpose(1, 2), atol=1e-3)
    # cut to its own odd size: no weight outside the centred size x size square
    p = draw_params(16, only(blur_prob=1.0, blur_kernel_min=3, blur_kernel_max=21), gen(1))
    support = (p.first.kernel > 0).any(1).sum(1)
    assert support.unique().numel() > 2 and (support % 2 == 1).all()


def test_resize_down_loses_detail() -> None:
    hr = torch.rand(8, 1, 32, 32)
    out = degrade(hr, 1, only(resize_down_prob=1.0, resize_min=0.25), gen(0))
    assert hf_energy(out).mean() < 0.6 * hf_energy(hr).mean()
    # up then back: each mode resamples, the image changes
    out = degrade(hr, 1, only(resize_up_prob=1.0, resize_max=2.0), gen(0))
    assert not torch.equal(out, torch.round(hr * 255) / 255)


def test_gaussian_noise_has_its_sigma_and_grey_noise_is_shared() -> None:
    flat = torch.full((4, 3, 64, 64), 0.5)
    cfg = only(noise_prob=1.0, gaussian_noise_prob=1.0, noise_sigma_min=10.0,
               noise_sigma_max=10.0, gray_noise_prob=0.0)
    out = degrade(flat, 1, cfg, gen(0))
    assert out.std().item() == pytest.approx(10 / 255, rel=0.05)
    assert not torch.equal(out[:, 0], out[:, 1])
    cfg.gray_noise_prob = 1.0
    out = degrade(flat, 1, cfg, gen(0))
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])
    assert out.std().item() > 5 / 255


def test_poisson_noise_grows_with_intensity() -> None:
    cfg = only(noise_prob=1.0, gaussian_noise_prob=0.0, poisson_scale_min=1.0,
               poisson_scale_max=1.0)
    stds = {}
    for level in (0.1, 0.5):
        out = degrade(torch.full((4, 1, 64, 64), level), 1, cfg, gen(0))
        stds[level] = out.std().item()
        assert stds[level] == pytest.approx(math.sqrt(level / 255), rel=0.1)
    assert stds[0.5] > 2 * stds[0.1]


def test_jpeg_makes_8x8_blocks_on_a_gradient() -> None:
    """A gentle gradient (0.4 -> 0.5) at quality 30: each block comes out flat, so the
    horizontal variation sits at the block boundaries (7 of the 63 column boundaries: 11%
    of it on the gradient itself; measured 100% after JPEG)."""
    xx = torch.linspace(0.4, 0.5, 64)
    hr = (0.6 * xx.view(1, -1) + 0.4 * xx.view(-1, 1) ** 2).expand(2, 3, 64, 64).contiguous()
    out = degrade(hr, 1, only(jpeg_prob=1.0, jpeg_quality_min=30, jpeg_quality_max=30), gen(0))

    def share_at_block_edges(x):  # between columns 8k-1 and 8k
        step = (x[..., 1:] - x[..., :-1]).abs().sum((0, 1, 2))
        return float(step[7::8].sum() / step.sum())
    assert share_at_block_edges(hr) < 0.15 and share_at_block_edges(out) > 0.8


def test_second_order_changes_only_what_follows_the_first() -> None:
    hr = torch.rand(4, 3, 32, 32)
    one = degrade(hr, 2, DegradeConfig(second_order=0.0), gen(5))
    two = degrade(hr, 2, DegradeConfig(second_order=1.0), gen(5))
    assert not torch.equal(one, two)
    # the same draws either way: the first order's parameters do not move
    p0 = draw_params(4, DegradeConfig(second_order=0.0), gen(5))
    p1 = draw_params(4, DegradeConfig(second_order=1.0), gen(5))
    assert torch.equal(p0.first.kernel, p1.first.kernel) and not p0.has_second.any()
    assert p1.has_second.all() and not p0.second.jpeg.any()


def _pil_jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    arr = torch.round(x.permute(1, 2, 0) * 255).to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(buf, "JPEG",
                                                                    quality=quality)
    out = np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float32) / 255
    return torch.from_numpy(out.reshape(*out.shape[:2], -1)).permute(2, 0, 1)


def _real_images() -> dict[str, torch.Tensor]:
    images, _ = load_mnist()
    grey = torch.from_numpy(images[:4]).float().unsqueeze(1) / 255
    rgb = torch.from_numpy(stacked_mnist(4, 0)[0]).float().permute(0, 3, 1, 2) / 255

    def up(x):  # to 100 x 100: not a multiple of 16, the padding is exercised
        return torch.round(F.interpolate(x, size=(100, 100), mode="bicubic").clamp(0, 1)
                           * 255) / 255
    return {"mnist_grey": up(grey), "stacked_mnist_rgb": up(rgb), "smooth_rgb": smooth_rgb(2, 96)}


@pytest.mark.parametrize("quality", [30, 60, 90])
def test_jpeg_matches_pil(quality: int) -> None:
    """Measured (torch 2.13 CPU, Pillow 13): PSNR ours vs PIL 55.9-59.4 dB grey, 46.0-49.7 dB
    RGB; MSE vs the original 0.998-1.011 x PIL's."""
    for name, x in _real_images().items():
        ours = jpeg(x, quality)
        ref = torch.stack([_pil_jpeg(xi, quality) for xi in x])
        assert ours.shape == x.shape and on_levels(ours)
        assert psnr(ours, ref) > 40, name
        ratio = ((ours - x) ** 2).mean() / ((ref - x) ** 2).mean()
        assert 0.85 < ratio < 1.15, (name, float(ratio))


def test_jpeg_quality_per_sample_and_tables() -> None:
    x = smooth_rgb(2, 32) * torch.tensor([1.0, 0.7]).view(2, 1, 1, 1)
    both = jpeg(x, torch.tensor([20, 95]))
    assert torch.equal(both[:1], jpeg(x[:1], 20)) and torch.equal(both[1:], jpeg(x[1:], 95))
    luma, chroma = quant_tables(torch.tensor([50, 100, 10]))
    assert luma[0, 0, 0] == 16 and chroma[0, 0, 0] == 17  # quality 50: the standard tables
    assert (luma[1] == 1).all() and luma[2].max() == 255  # clamped to 1..255 (baseline)


def test_bicubic_degrade_is_antialiased_bicubic_then_8_bit() -> None:
    hr = torch.rand(3, 3, 32, 24)
    for scale in (1, 2, 4):
        ref = F.interpolate(hr, size=(32 // scale, 24 // scale), mode="bicubic",
                            align_corners=False, antialias=True)
        assert torch.equal(bicubic_degrade(hr, scale), (torch.round(ref * 255) / 255).clamp(0, 1))


@pytest.mark.parametrize("hr, scale, words", [
    (torch.rand(2, 2, 16, 16), 2, "(2, 2, 16, 16)"),
    (torch.rand(2, 3, 30, 32), 4, "(2, 3, 30, 32)"),
    (torch.rand(2, 3, 32, 32), 0, "scale"),
    (torch.rand(2, 3, 32, 32), 2.0, "scale"),
    (torch.rand(3, 32, 32), 2, "(3, 32, 32)"),
    (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), 2, "torch.uint8"),
])
def test_bad_input_is_a_clear_value_error(hr, scale, words: str) -> None:
    for fn in (lambda: degrade(hr, scale, DegradeConfig(), gen()),
               lambda: bicubic_degrade(hr, scale)):
        with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
            fn()


@pytest.mark.parametrize("field, value", [("blur_prob", 1.5), ("blur_kernel_max2", 20),
                                          ("resize_min", 0.0), ("jpeg_quality_max", 101),
                                          ("noise_sigma_min", 40.0), ("resize_modes", ["x"])])
def test_bad_config_names_the_field(field: str, value) -> None:
    with pytest.raises(ValueError, match=f"sr.degrade.{field}="):
        DegradeConfig(**{field: value}).validate("sr.degrade.")
    with pytest.raises(ValueError, match=field):
        degrade(torch.rand(1, 1, 8, 8), 2, DegradeConfig(**{field: value}), gen())


@pytest.mark.gpu
def test_cuda_draws_the_same_parameters_and_gives_the_same_images() -> None:
    hr = torch.rand(8, 3, 64, 64)
    cpu = degrade(hr, 4, DegradeConfig(), gen(9))
    cuda = degrade(hr.cuda(), 4, DegradeConfig(), gen(9))
    assert cuda.device.type == "cuda"
    assert torch.equal(cuda, degrade(hr.cuda(), 4, DegradeConfig(), gen(9)))
    diff = (cuda.cpu() - cpu).abs()
    # float rounding differs between devices: a few pixels move by an 8-bit level or two
    assert diff.mean() < 1e-3 and (diff == 0).float().mean() > 0.95, (diff.mean(), diff.max())
    x = smooth_rgb(2, 48)
    assert (jpeg(x.cuda(), 50).cpu() - jpeg(x, 50)).abs().mean() < 1e-3
