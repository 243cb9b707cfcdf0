"""Built-in datasets shipped with the package (no download): MNIST (5,000 digits),
Stacked MNIST made from it (three digits as R, G, B; 1,000 modes), MNIST edges (pairs:
a digit's outline as image "a", the digit as image "b", for the translation demo) and MNIST
outlines (the same outlines as single images, for the unpaired CycleGAN demo: shuffled by
another seed than builtin:mnist, so the two streams never pair a digit with its own
outline by construction; both use all 5,000 digits), and the unpaired CycleGAN demo's two
domains, made from disjoint halves of the 5,000 digits (`halves`: 250 of each class per
half): MNIST bold half 1 (half 1's digits made bold, `bold`: the demo's domain A), MNIST
outlines half 1 (the outlines of half 1's digits; the earlier, harder domain A) and MNIST
half 2 (half 2's digits, domain B), so no digit appears in both domains, as itself or in
another style. The mode-count metric that reads Stacked MNIST samples is
dgan.metrics.stacked; data never imports metrics.

For enhancement (super-resolution), `photos` and `photos_heldout`: square RGB tiles of the
real photographs that scikit-image ships inside its wheel (no download; `pip install
'dgan[photos]'`), cut at full resolution. `photos` tiles 12 of them (grey ones as RGB) with
half-tile overlap; `photos_heldout` tiles two others (the cat "chelsea" and "rocket") that
`photos` never contains, without overlap, for evaluation."""

from __future__ import annotations

import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np

from dgan.cache import cache_root
from dgan.data.shards import INDEX, encode_image, write_shards

BUILTIN = ("mnist", "stacked_mnist", "mnist_edges", "mnist_outlines", "mnist_outlines_half1",
           "mnist_bold_half1", "mnist_half2", "photos", "photos_heldout")
# scikit-image's bundled photographs (skimage/data; the names of its own loaders): training
# photos, then the held-out ones. Left out: its synthetic images, text/page scans, the
# logo, and motorcycle_right (the stereo twin of motorcycle_left).
TRAIN_PHOTOS = ("astronaut.png", "coffee.png", "motorcycle_left.png", "hubble_deep_field.jpg",
                "ihc.png", "retina.jpg", "camera.png", "brick.png", "grass.png", "gravel.png",
                "moon.png", "coins.png")
HELDOUT_PHOTOS = ("chelsea.png", "rocket.jpg")
PHOTOS_INSTALL = "pip install 'dgan[photos]' (scikit-image, whose wheel holds the photos)"
FLAT_TILE_STD = 4.0  # a tile whose pixels vary less than this (of 255) is background: left out
PAIRED = ("a", "b")  # the image keys of paired samples
DIGITS = [str(d) for d in range(10)]
STACKED_SAMPLES = 60_000  # ~60 per mode of the 1,000: every mode is present
HALVES_SEED = 5  # the split of the 5,000 digits into the two halves (`halves`)


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The shipped MNIST subset: images uint8 (5000, 28, 28), labels uint8 (5000,)."""
    with resources.files("dgan.data").joinpath("mnist5k.npz").open("rb") as f:
        data = np.load(f, allow_pickle=False)
        return data["images"], data["labels"]


def fit_resolution(images: np.ndarray, resolution: int) -> np.ndarray:
    """Zero-pad (N, 28, 28) digits to (N, R, R) for R >= 28, centred, as is usual for MNIST."""
    size = images.shape[1]
    if resolution == size:
        return images
    if resolution < size:
        raise ValueError(f"built-in MNIST is {size}x{size}; resolution {resolution} is smaller")
    lo = (resolution - size) // 2
    hi = resolution - size - lo
    return np.pad(images, ((0, 0), (lo, hi), (lo, hi)))


def stacked_mnist(n: int, seed: int, resolution: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """n Stacked MNIST images built from the built-in 5,000-digit subset.

    Each image takes three digits drawn independently and uniformly (the subset has
    500 per class, so the 1000 labels are uniform) as its R, G, B channels.
    Returns images uint8 (n, resolution, resolution, 3), 0 = background, and labels
    int64 (n,) = 100 * r + 10 * g + b in 0..999. resolution 28 is native, 32 pads
    with 2 pixels of background (what `DigitClassifier` undoes), other sizes resize.
    """
    digits, digit_labels = load_mnist()
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(digits), size=(n, 3))
    images = np.stack([digits[picks[:, c]] for c in range(3)], axis=-1)
    labels = (digit_labels[picks].astype(np.int64) * np.array([100, 10, 1])).sum(axis=1)
    if resolution == 32:
        images = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
    elif resolution != 28:
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True,
                          align_corners=False)  # fmt: skip
        images = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return np.ascontiguousarray(images), labels


def halves(labels: np.ndarray, seed: int = HALVES_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint index arrays into the built-in digits, each with half of every class
    (250 of each digit: 2,500 per half), sorted; a seeded permutation within each class."""
    rng = np.random.default_rng(seed)
    first, second = [], []
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        first.append(idx[:len(idx) // 2])
        second.append(idx[len(idx) // 2:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def outlines(images: np.ndarray) -> np.ndarray:
    """(N, H, W) uint8 digits -> their outer outlines (N, H, W) uint8: the pixels a 3x3
    dilation of the digit (thresholded at 128) adds, 255 on the outline: a hollow digit."""
    on = np.pad(images >= 128, ((0, 0), (1, 1), (1, 1)))
    h, w = images.shape[1:]
    shifts = [on[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
              for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    dilated = np.logical_or.reduce(shifts)
    return ((dilated & ~on[:, 1:-1, 1:-1]) * 255).astype(np.uint8)


def bold(images: np.ndarray) -> np.ndarray:
    """(N, H, W) uint8 digits -> bold digits (N, H, W) uint8: a 3x3 grey-level dilation (each
    pixel the maximum of its 3x3 neighbourhood), so every stroke is about 2 pixels thicker
    and keeps its anti-aliased edge."""
    h, w = images.shape[1:]
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    return np.maximum.reduce([padded[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
                              for dy in (-1, 0, 1) for dx in (-1, 0, 1)])


def photo_file(name: str) -> Path:
    """The path of scikit-image's bundled photo `name` (e.g. "astronaut.png")."""
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"builtin:photos needs scikit-image: {PHOTOS_INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / name
    if not path.is_file():
        raise ValueError(f"{path}: missing from the installed scikit-image; expected its "
                         f"bundled photo {name} ({PHOTOS_INSTALL})")
    return path


def photo_tiles(names: tuple[str, ...], size: int, overlap: bool) -> np.ndarray:
    """(N, size, size, 3) uint8 tiles of the photos `names` at full resolution, in order:
    row-major per photo, a stride of size / 2 with `overlap` else size; flat tiles
    (background: std below FLAT_TILE_STD) left out."""
    from PIL import Image

    stride = max(1, size // 2) if overlap else size
    tiles = []
    for name in names:
        with Image.open(photo_file(name)) as img:
            pixels = np.asarray(img.convert("RGB"))
        h, w = pixels.shape[:2]
        for y in range(0, h - size + 1, stride):
            for x in range(0, w - size + 1, stride):
                tile = pixels[y:y + size, x:x + size]
                if tile.std() >= FLAT_TILE_STD:
                    tiles.append(tile)
    if not tiles:
        raise ValueError(f"builtin:photos at resolution {size}: no tile fits the photos")
    return np.stack(tiles)


def make_builtin(name: str, out: str | os.PathLike, *, resolution: int = 28,
                 per_shard: int = 1000, seed: int = 0, samples: int | None = None) -> dict:
    """Write a built-in dataset as shards into `out`. Samples are shuffled (fixed seed).

    `samples` sets the size of generated datasets (stacked_mnist: 60,000 by default).
    """
    if name == "mnist":
        images, labels = load_mnist()
        images = fit_resolution(images, resolution)
        order = np.random.default_rng(seed).permutation(len(images))
        encoded = ((encode_image(images[i]), "png", int(labels[i])) for i in order)
        return write_shards(encoded, out, name, resolution=resolution, channels=1,
                            labels=DIGITS, per_shard=per_shard, extra=lambda: {"builtin": name})
    if name == "mnist_outlines":
        images, labels = load_mnist()
        edges = outlines(fit_resolution(images, resolution))
        order = np.random.default_rng(seed + 1).permutation(len(images))
        encoded = ((encode_image(edges[i]), "png", int(labels[i])) for i in order)
        return write_shards(encoded, out, name, resolution=resolution, channels=1,
                            labels=DIGITS, per_shard=per_shard, extra=lambda: {"builtin": name})
    if name in ("mnist_outlines_half1", "mnist_bold_half1", "mnist_half2"):
        images, labels = load_mnist()
        images = fit_resolution(images, resolution)
        first, second = halves(labels)
        if name == "mnist_outlines_half1":
            images, keep = outlines(images), first
        elif name == "mnist_bold_half1":
            images, keep = bold(images), first
        else:
            keep = second
        order = keep[np.random.default_rng(seed).permutation(len(keep))]
        encoded = ((encode_image(images[i]), "png", int(labels[i])) for i in order)
        return write_shards(encoded, out, name, resolution=resolution, channels=1,
                            labels=DIGITS, per_shard=per_shard, extra=lambda: {"builtin": name})
    if name == "mnist_edges":
        images, labels = load_mnist()
        images = fit_resolution(images, resolution)
        edges = outlines(images)
        order = np.random.default_rng(seed).permutation(len(images))
        paired = (({"a": encode_image(edges[i]), "b": encode_image(images[i])}, "png",
                   int(labels[i])) for i in order)
        return write_shards(paired, out, name, resolution=resolution, channels=1,
                            labels=DIGITS, per_shard=per_shard,
                            extra=lambda: {"builtin": name, "images": list(PAIRED)})
    if name in ("photos", "photos_heldout"):
        tiles = photo_tiles(TRAIN_PHOTOS if name == "photos" else HELDOUT_PHOTOS, resolution,
                            overlap=name == "photos")
        order = np.random.default_rng(seed).permutation(len(tiles)) if name == "photos" else (
            np.arange(len(tiles)))
        encoded = ((encode_image(tiles[i]), "png", None) for i in order)
        return write_shards(encoded, out, name, resolution=resolution, channels=3,
                            per_shard=per_shard, extra=lambda: {"builtin": name})
    if name == "stacked_mnist":
        # Three digits as the R, G and B channels: 1,000 modes (label 100 r + 10 g + b).
        images, labels = stacked_mnist(samples or STACKED_SAMPLES, seed, resolution=resolution)
        encoded = ((encode_image(images[i]), "png", int(labels[i])) for i in range(len(images)))
        return write_shards(encoded, out, name, resolution=resolution, channels=3,
                            labels=[f"{m:03d}" for m in range(1000)], per_shard=per_shard * 5,
                            extra=lambda: {"builtin": name})
    raise ValueError(f"unknown built-in dataset {name!r}; expected one of {list(BUILTIN)}")


def builtin_shards(name: str = "mnist", resolution: int = 28) -> Path:
    """The cached shard directory of a built-in dataset, built on first use.

    Safe when several processes call it at once: each builds into its own temporary
    directory and renames it into place; losers of the race discard theirs.
    """
    final = cache_root() / "data" / f"{name}-{resolution}"
    if (final / INDEX).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-{resolution}-", dir=final.parent))
    try:
        make_builtin(name, tmp, resolution=resolution)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / INDEX).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
