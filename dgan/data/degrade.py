"""On-the-fly degradations for super-resolution: high-resolution batches in, low-resolution
inputs out, Real-ESRGAN style (Wang et al. 2021, "Real-ESRGAN: Training Real-World Blind
Super-Resolution with Pure Synthetic Data").

`degrade(hr, scale, cfg, generator)` runs a first order (blur, resize, noise, JPEG), with
probability `cfg.second_order` a second order with its own ranges, and a final resize to
exactly H/scale x W/scale, quantized to 8-bit levels. `bicubic_degrade` is classic SR's
antialiased bicubic downscale. docs/enhancement.md, "Degradations", describes each field.

Randomness: every draw (blur kernels, scale factors, resize modes, noise, JPEG qualities)
comes from the caller's CPU generator, one set of parameters per sample, drawn in a fixed
order and number whatever the probabilities decide; the image work then runs on hr.device.
So the parameters do not depend on the device (the pixels differ across devices only by
float rounding) and a resumed run, given `dgan.engine.seeding.step_generator(...)` of the
same step, degrades exactly as the uninterrupted one did.

Per-sample sizes: after a random resize every sample has its own size. The batch stays one
tensor, a canvas as large as the largest sample, in which each sample sits top-left and the
rest repeats its last row and column. Blur (replicate padding) and JPEG (libjpeg also
repeats the edge into partial blocks) see exactly what they would see for the sample alone,
so the convolutions and DCTs run batched; only the resizes loop over the samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from dgan.data.degrade_config import RESIZE_MODES, DegradeConfig  # noqa: F401 - re-exported
from dgan.data.jpeg import jpeg


@dataclass
class OrderParams:
    """One order's draws, one entry per sample, on the CPU."""

    blur: torch.Tensor  # [N] bool: blurred
    kernel: torch.Tensor  # [N, K, K] float32 kernels (sum 1; K the order's blur_kernel_max)
    factor: torch.Tensor  # [N] float64 resize factor (1: keep)
    mode: torch.Tensor  # [N] int64 index into cfg.resize_modes
    noise: torch.Tensor  # [N] bool: noise added
    gaussian: torch.Tensor  # [N] bool: Gaussian (else Poisson)
    gray: torch.Tensor  # [N] bool: one noise plane for all channels
    sigma: torch.Tensor  # [N] float64 Gaussian sigma, in [0, 1] units
    poisson: torch.Tensor  # [N] float64 Poisson scale
    noise_seed: torch.Tensor  # [N] int64 seed of the sample's own noise generator
    jpeg: torch.Tensor  # [N] bool: JPEG-compressed
    quality: torch.Tensor  # [N] int64 JPEG quality


@dataclass
class DegradeParams:
    """Every random parameter of one `degrade` call; `second`'s flags are already off for
    the samples without a second order."""

    first: OrderParams
    has_second: torch.Tensor  # [N] bool
    second: OrderParams
    jpeg_last: torch.Tensor  # [N] bool: the second JPEG follows the final resize
    final_mode: torch.Tensor  # [N] int64 mode of the final resize

    def select(self, index: int | slice | torch.Tensor) -> DegradeParams:
        """The parameters of some samples (an index, slice or mask over the batch)."""
        def cut(obj):
            return type(obj)(**{f.name: cut(getattr(obj, f.name)) if f.name in ("first", "second")
                                else getattr(obj, f.name)[index] for f in fields(obj)})
        index = [index] if isinstance(index, int) else index
        return cut(self)


def _gaussian_kernels(size: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor,
                      theta: torch.Tensor, kmax: int) -> torch.Tensor:
    """[N, kmax, kmax] Gaussian kernels with std sx, sy along axes rotated by theta, cut to
    each sample's odd `size` (zeros around it, centred) and normalised to sum 1."""
    ax = torch.arange(kmax, dtype=torch.float64) - kmax // 2
    yy, xx = ax.view(1, -1, 1), ax.view(1, 1, -1)
    c, s = torch.cos(theta).view(-1, 1, 1), torch.sin(theta).view(-1, 1, 1)
    u, v = c * xx + s * yy, -s * xx + c * yy
    k = torch.exp(-0.5 * ((u / sx.view(-1, 1, 1)) ** 2 + (v / sy.view(-1, 1, 1)) ** 2))
    half = (size // 2).view(-1, 1, 1)
    k = k * ((xx.abs() <= half) & (yy.abs() <= half))
    return (k / k.sum((1, 2), keepdim=True)).to(torch.float32)


def _impulse(k: int) -> torch.Tensor:
    """The k x k kernel that leaves an image as it is."""
    delta = torch.zeros(k, k)
    delta[k // 2, k // 2] = 1
    return delta


def _draw_order(n: int, cfg: DegradeConfig, s: str, gen: torch.Generator) -> OrderParams:
    """One order's parameters from `gen` ("" first order, "2" second); always the same
    draws in the same order, whatever the probabilities."""
    def get(key):
        return getattr(cfg, key + s)

    def uniform(lo=0.0, hi=1.0):
        return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)

    blur, iso = uniform() < get("blur_prob"), uniform() < get("blur_iso_prob")
    kmin, kmax = get("blur_kernel_min"), get("blur_kernel_max")
    size = kmin + 2 * torch.randint((kmax - kmin) // 2 + 1, (n,), generator=gen)
    sx = uniform(get("blur_sigma_min"), get("blur_sigma_max"))
    sy = torch.where(iso, sx, uniform(get("blur_sigma_min"), get("blur_sigma_max")))
    theta = uniform(-math.pi, math.pi)
    kernel = _gaussian_kernels(size, sx, sy, theta, kmax)
    kernel = torch.where(blur.view(-1, 1, 1), kernel, _impulse(kmax))
    r, up, down = uniform(), uniform(1.0, get("resize_max")), uniform(get("resize_min"), 1.0)
    p_up, p_down = get("resize_up_prob"), get("resize_down_prob")
    factor = torch.where(r < p_up, up, torch.where(r < p_up + p_down, down, 1.0))
    mode = torch.randint(len(cfg.resize_modes), (n,), generator=gen)
    noise, gaussian = uniform() < get("noise_prob"), uniform() < get("gaussian_noise_prob")
    gray = uniform() < get("gray_noise_prob")
    sigma = uniform(get("noise_sigma_min"), get("noise_sigma_max")) / 255
    poisson = uniform(get("poisson_scale_min"), get("poisson_scale_max"))
    noise_seed = torch.randint(2**62, (n,), generator=gen)
    jpeg_on = uniform() < get("jpeg_prob")
    quality = torch.randint(get("jpeg_quality_min"), get("jpeg_quality_max") + 1, (n,),
                            generator=gen)
    return OrderParams(blur, kernel, factor, mode, noise, gaussian, gray, sigma, poisson,
                       noise_seed, jpeg_on, quality)


def draw_params(n: int, cfg: DegradeConfig, generator: torch.Generator) -> DegradeParams:
    """Every random parameter for a batch of `n` images, from the CPU `generator`."""
    if generator.device.type != "cpu":
        raise ValueError(f"degrade: expected a CPU torch.Generator, got one on "
                         f"{generator.device} (draws must not depend on the device)")
    first = _draw_order(n, cfg, "", generator)
    has_second = torch.rand(n, generator=generator, dtype=torch.float64) < cfg.second_order
    second = _draw_order(n, cfg, "2", generator)
    for key in ("blur", "noise", "jpeg"):
        setattr(second, key, getattr(second, key) & has_second)
    second.kernel = torch.where(second.blur.view(-1, 1, 1), second.kernel,
                                _impulse(second.kernel.shape[-1]))
    jpeg_last = torch.rand(n, generator=generator, dtype=torch.float64) < cfg.jpeg_last_prob2
    final_mode = torch.randint(len(cfg.resize_modes), (n,), generator=generator)
    return DegradeParams(first, has_second, second, jpeg_last, final_mode)


Sizes = list[tuple[int, int]]  # each sample's (height, width) on the canvas


def _extend(x: torch.Tensor, sizes: Sizes) -> torch.Tensor:
    """Refill the canvas around each sample with its last row and column."""
    n, _, hc, wc = x.shape
    if all(hw == (hc, wc) for hw in sizes):
        return x
    h = torch.tensor([hw[0] for hw in sizes]).view(n, 1)
    w = torch.tensor([hw[1] for hw in sizes]).view(n, 1)
    iy = torch.minimum(torch.arange(hc).view(1, hc), h - 1).to(x.device)
    ix = torch.minimum(torch.arange(wc).view(1, wc), w - 1).to(x.device)
    rows = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    chans = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return x[rows, chans, iy.view(n, 1, hc, 1), ix.view(n, 1, 1, wc)]


def _on(x: torch.Tensor, mask: torch.Tensor, fn) -> torch.Tensor:
    """x with fn(x[mask], cpu index) in place of the masked samples (mask: [N] bool, CPU)."""
    idx = mask.nonzero().flatten()
    if len(idx) == len(mask):
        return fn(x, idx)
    if len(idx) == 0:
        return x
    dev = idx.to(x.device)
    return x.index_copy(0, dev, fn(x.index_select(0, dev), idx))


def _blur(x: torch.Tensor, o: OrderParams, sizes: Sizes) -> torch.Tensor:
    """Each blurred sample convolved with its kernel: one grouped conv2d over all its
    channels (the kernel repeated per channel), edges padded by repetition."""
    def conv(xs, idx):
        n, c, h, w = xs.shape
        k = o.kernel.shape[-1]
        weight = o.kernel[idx].repeat_interleave(c, 0).unsqueeze(1).to(xs.device)
        xs = F.pad(xs.reshape(1, n * c, h, w), (k // 2,) * 4, mode="replicate")
        return F.conv2d(xs, weight, groups=n * c).view(n, c, h, w)
    return _on(_extend(x, sizes), o.blur, conv)


def _resize(x: torch.Tensor, sizes: Sizes, new: Sizes, modes: list[str]) -> torch.Tensor:
    """Resize each sample to its new size with its mode (a loop: the sizes differ), onto a
    canvas as large as the largest; clamped to [0, 1] (bicubic overshoots)."""
    if new == sizes:
        return x
    hc, wc = max(h for h, _ in new), max(w for _, w in new)
    out = []
    for i, ((h, w), (nh, nw)) in enumerate(zip(sizes, new)):
        xi = x[i:i + 1, :, :h, :w]
        if (nh, nw) != (h, w):
            mode = modes[i]
            xi = F.interpolate(xi, size=(nh, nw), mode=mode,
                               align_corners=None if mode == "area" else False).clamp(0, 1)
        out.append(F.pad(xi, (0, wc - nw, 0, hc - nh), mode="replicate"))
    return torch.cat(out)


def _noise(x: torch.Tensor, o: OrderParams, sizes: Sizes) -> torch.Tensor:
    """Add Gaussian (std sigma) or Poisson noise to the noisy samples. The standard normal
    draws come from each sample's own CPU generator (its own seed: independent of the other
    samples' sizes) and move to the device. Poisson noise is its Gaussian approximation,
    std sqrt(x / 255) x scale (Real-ESRGAN's Poisson at 255 counts per unit, times scale):
    an exact torch.poisson with a generator would need the image itself on the CPU, a
    device-to-host copy of the batch each step; they differ only in near-black pixels."""
    def add(xs, idx):
        n, c, hc, wc = xs.shape
        z = torch.zeros(n, c, hc, wc)
        for j, i in enumerate(idx.tolist()):
            (h, w), gen = sizes[i], torch.Generator().manual_seed(int(o.noise_seed[i]))
            z[j, :, :h, :w] = torch.randn(1 if o.gray[i] else c, h, w, generator=gen)
        z = z.to(xs.device)

        def per(t):
            return t[idx].to(xs.device, torch.float32).view(n, 1, 1, 1)
        src = xs
        if c == 3:  # grey Poisson noise follows the luma
            luma = (xs * torch.tensor([0.299, 0.587, 0.114], device=xs.device).view(1, 3, 1, 1)
                    ).sum(1, keepdim=True)
            src = torch.where(per(o.gray).bool(), luma, xs)
        std = torch.where(per(o.gaussian).bool(), per(o.sigma),
                          per(o.poisson) * torch.sqrt(src.clamp(min=0) / 255))
        return (xs + std * z).clamp(0, 1)
    return _on(x, o.noise, add)


def _jpeg(x: torch.Tensor, mask: torch.Tensor, quality: torch.Tensor,
          sizes: Sizes) -> torch.Tensor:
    return _on(_extend(x, sizes), mask, lambda xs, idx: jpeg(xs, quality[idx]))


def _check(hr: torch.Tensor, scale: int) -> None:
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"degrade: scale must be a positive integer (1, 2, 4, ...), got "
                         f"{scale!r}")
    if not isinstance(hr, torch.Tensor) or hr.ndim != 4 or hr.shape[1] not in (1, 3):
        shape = tuple(hr.shape) if isinstance(hr, torch.Tensor) else type(hr).__name__
        raise ValueError(f"degrade: expected images [N, C, H, W] with C 1 or 3, got {shape}")
    if not hr.is_floating_point():
        raise ValueError(f"degrade: expected float images in [0, 1], got {hr.dtype}")
    h, w = hr.shape[-2:]
    if h % scale or w % scale or h == 0 or w == 0:
        raise ValueError(f"degrade: image shape {tuple(hr.shape)}: H and W must be positive "
                         f"multiples of scale {scale}")


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round to 8-bit levels and clamp to [0, 1], as a saved LR image would be."""
    return (torch.round(x * 255) / 255).clamp(0, 1)


def apply_params(hr: torch.Tensor, scale: int, cfg: DegradeConfig,
                 params: DegradeParams) -> torch.Tensor:
    """Degrade `hr` with given parameters (`draw_params`); what `degrade` runs."""
    _check(hr, scale)
    n, c, hh, ww = hr.shape
    th, tw = hh // scale, ww // scale
    if n == 0:
        return hr.new_zeros(0, c, th, tw)
    modes = cfg.resize_modes
    x = hr.float().clamp(0, 1)
    p1, p2 = params.first, params.second
    sizes = [(hh, ww)] * n
    x = _blur(x, p1, sizes)
    new = [(max(1, round(hh * f)), max(1, round(ww * f))) for f in p1.factor.tolist()]
    x, sizes = _resize(x, sizes, new, [modes[m] for m in p1.mode.tolist()]), new
    x = _noise(x, p1, sizes)
    x = _jpeg(x, p1.jpeg, p1.quality, sizes)
    # second order, from the LR size
    x = _blur(x, p2, sizes)
    new = [(max(1, round(th * f)), max(1, round(tw * f))) if on else hw
           for f, on, hw in zip(p2.factor.tolist(), params.has_second.tolist(), sizes)]
    x, sizes = _resize(x, sizes, new, [modes[m] for m in p2.mode.tolist()]), new
    x = _noise(x, p2, sizes)
    x = _jpeg(x, p2.jpeg & ~params.jpeg_last, p2.quality, sizes)
    new = [(th, tw)] * n
    x = _resize(x, sizes, new, [modes[m] for m in params.final_mode.tolist()])
    x = _jpeg(x, p2.jpeg & params.jpeg_last, p2.quality, new)
    return quantize(x).to(hr.dtype)


def degrade(hr: torch.Tensor, scale: int, cfg: DegradeConfig,
            generator: torch.Generator) -> torch.Tensor:
    """Degrade HR images [N, C, H, W] (C 1 or 3, float in [0, 1], H and W multiples of
    `scale`) into LR inputs [N, C, H/scale, W/scale] on 8-bit levels in [0, 1], on
    hr.device, every sample with its own parameters drawn from the CPU `generator`. `cfg`
    is a DegradeConfig or an OmegaConf node of one (e.g. the config's sr.degrade)."""
    _check(hr, scale)
    if not isinstance(cfg, DegradeConfig):
        cfg = DegradeConfig(**OmegaConf.to_container(cfg, resolve=True))
    cfg.validate()
    return apply_params(hr, scale, cfg, draw_params(hr.shape[0], cfg, generator))


def bicubic_degrade(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Classic SR inputs: antialiased bicubic downscale by `scale`, on 8-bit levels."""
    _check(hr, scale)
    h, w = hr.shape[-2:]
    lr = F.interpolate(hr, size=(h // scale, w // scale), mode="bicubic",
                       align_corners=False, antialias=True)
    return quantize(lr)
