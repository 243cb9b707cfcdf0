"""The degradations' settings (`sr.degrade.*`), apart from dgan.data.degrade so that the
config schema does not import torch. docs/enhancement.md, "Degradations", describes each."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

RESIZE_MODES = ("area", "bilinear", "bicubic")


@dataclass
class DegradeConfig:
    """Probabilities and ranges of the degradations (Real-ESRGAN's defaults where it has
    them). Each probability is per sample. Fields ending in 2 are the second order's."""

    # --- first order, on the HR image
    blur_prob: float = 1.0  # blur with a Gaussian kernel
    blur_iso_prob: float = 0.65  # of the blurs: isotropic (else anisotropic, rotated)
    blur_kernel_min: int = 7  # kernel side, odd, drawn among the odd sizes in [min, max]
    blur_kernel_max: int = 21
    blur_sigma_min: float = 0.2  # Gaussian sigma in HR pixels; anisotropic: each axis
    blur_sigma_max: float = 3.0  # draws its own (rotation uniform in [-pi, pi))
    resize_up_prob: float = 0.2  # upscale by a factor in [1, resize_max]
    resize_down_prob: float = 0.7  # downscale by a factor in [resize_min, 1]; else keep
    resize_min: float = 0.15  # factors relative to the HR size
    resize_max: float = 1.5
    noise_prob: float = 1.0  # add noise (Gaussian or Poisson)
    gaussian_noise_prob: float = 0.5  # of the noisy samples: Gaussian (else Poisson)
    noise_sigma_min: float = 1.0  # Gaussian noise sigma, in 8-bit levels (0..255)
    noise_sigma_max: float = 30.0
    poisson_scale_min: float = 0.05  # Poisson noise: std sqrt(x / 255) x scale
    poisson_scale_max: float = 3.0
    gray_noise_prob: float = 0.4  # the same noise in every channel (RGB only)
    jpeg_prob: float = 1.0  # JPEG-compress (dgan.data.jpeg) at a quality in [min, max]
    jpeg_quality_min: int = 30
    jpeg_quality_max: int = 95
    # --- second order, probability `second_order` per sample; its resize factors are
    # relative to the LR size (H/scale x W/scale)
    second_order: float = 1.0  # Real-ESRGAN always runs it; lower it for milder inputs
    blur_prob2: float = 0.8
    blur_iso_prob2: float = 0.65
    blur_kernel_min2: int = 7
    blur_kernel_max2: int = 21
    blur_sigma_min2: float = 0.2
    blur_sigma_max2: float = 1.5
    resize_up_prob2: float = 0.3
    resize_down_prob2: float = 0.4
    resize_min2: float = 0.3
    resize_max2: float = 1.2
    noise_prob2: float = 1.0
    gaussian_noise_prob2: float = 0.5
    noise_sigma_min2: float = 1.0
    noise_sigma_max2: float = 25.0
    poisson_scale_min2: float = 0.05
    poisson_scale_max2: float = 2.5
    gray_noise_prob2: float = 0.4
    jpeg_prob2: float = 1.0
    jpeg_quality_min2: int = 30
    jpeg_quality_max2: int = 95
    # the second order's JPEG comes after the final resize (its 8x8 blocks land on the LR
    # grid) with this probability, else before it
    jpeg_last_prob2: float = 0.5
    # --- resizes (each order's and the final one to H/scale x W/scale): the mode is drawn
    # uniformly from these (area, bilinear, bicubic; not antialiased, as in Real-ESRGAN)
    resize_modes: list[str] = field(default_factory=lambda: list(RESIZE_MODES))

    def validate(self, prefix: str = "") -> None:
        """Raise ValueError naming the first bad field (`prefix` + its name)."""
        for f in fields(self):
            v = getattr(self, f.name)
            is_prob = f.name.endswith(("_prob", "_prob2")) or f.name == "second_order"
            if is_prob and not 0.0 <= v <= 1.0:
                raise ValueError(f"{prefix}{f.name}={v}: expected a probability in [0, 1]")
        for s in ("", "2"):
            self._validate_order(s, prefix)
        bad = [m for m in self.resize_modes if m not in RESIZE_MODES]
        if bad or not self.resize_modes:
            raise ValueError(f"{prefix}resize_modes={list(self.resize_modes)}: expected a "
                             f"non-empty list of {', '.join(RESIZE_MODES)}")

    def _validate_order(self, s: str, prefix: str) -> None:
        """The ranges of one order ("" or "2")."""
        def get(key):
            return getattr(self, key + s)

        def name(key):
            return f"{prefix}{key}{s}={get(key)}"
        for lo, hi in (("blur_kernel_min", "blur_kernel_max"),
                       ("blur_sigma_min", "blur_sigma_max"),
                       ("noise_sigma_min", "noise_sigma_max"),
                       ("poisson_scale_min", "poisson_scale_max")):
            if not 0 <= get(lo) <= get(hi):
                raise ValueError(f"{name(lo)}, {name(hi)}: expected 0 <= min <= max")
        for key in ("blur_kernel_min", "blur_kernel_max"):
            if get(key) % 2 != 1:
                raise ValueError(f"{name(key)}: expected an odd kernel size")
        if get("blur_sigma_min") <= 0:
            raise ValueError(f"{name('blur_sigma_min')}: expected > 0")
        if not 0 < get("resize_min") <= 1 <= get("resize_max"):
            raise ValueError(f"{name('resize_min')}, {name('resize_max')}: expected "
                             "0 < min <= 1 <= max")
        if get("resize_up_prob") + get("resize_down_prob") > 1:
            raise ValueError(f"{name('resize_up_prob')}, {name('resize_down_prob')}: "
                             "expected a sum <= 1 (the rest keeps the size)")
        if not 1 <= get("jpeg_quality_min") <= get("jpeg_quality_max") <= 100:
            raise ValueError(f"{name('jpeg_quality_min')}, {name('jpeg_quality_max')}: "
                             "expected 1 <= min <= max <= 100")
