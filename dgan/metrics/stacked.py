"""Stacked MNIST: three MNIST digits as the R, G, B channels, 1000 modes, and the
mode-count metric of the Unrolled GAN / PacGAN papers.

Protocol: generate 26,000 samples, classify each channel with a pretrained MNIST
classifier (here dgan's offline `DigitClassifier`), read the triple as a mode
100 * r + 10 * g + b, and report the number of modes hit (out of 1000) and
KL(mode histogram || uniform over 1000) in nats.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dgan.metrics.digits import DigitClassifier, kl_from_uniform, load_mnist5k
from dgan.metrics.feature_net import to_model_images

NUM_MODES = 1000
PROTOCOL_SAMPLES = 26_000


def stacked_mnist(n: int, seed: int, resolution: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """n Stacked MNIST images built from the built-in 5,000-digit subset.

    Each image takes three digits drawn independently and uniformly (the subset has
    500 per class, so the 1000 labels are uniform) as its R, G, B channels.
    Returns images uint8 (n, resolution, resolution, 3), 0 = background, and labels
    int64 (n,) = 100 * r + 10 * g + b in 0..999. resolution 28 is native, 32 pads
    with 2 pixels of background (what `DigitClassifier` undoes), other sizes resize.
    """
    digits, digit_labels = load_mnist5k()
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(digits), size=(n, 3))
    images = np.stack([digits[picks[:, c]] for c in range(3)], axis=-1)
    labels = (digit_labels[picks].astype(np.int64) * np.array([100, 10, 1])).sum(axis=1)
    if resolution == 32:
        images = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
    elif resolution != 28:
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True,
                          align_corners=False)  # fmt: skip
        images = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return np.ascontiguousarray(images), labels


def modes_from_digits(digits: Tensor) -> dict[str, object]:
    """Mode statistics from per-channel digit predictions (N, 3) int.

    Returns {'modes': int modes with at least one sample, 'kl': float
    KL(histogram || uniform over 1000) in nats, 'histogram': int64 ndarray (1000,)}.
    """
    if digits.ndim != 2 or digits.shape[1] != 3:
        raise ValueError(f"expected (N, 3) digit predictions, got {tuple(digits.shape)}")
    mode = (digits.long().cpu() * torch.tensor([100, 10, 1])).sum(1)
    counts = torch.bincount(mode, minlength=NUM_MODES)
    hist = counts.double() / counts.sum().clamp(min=1)
    return {
        "modes": int((counts > 0).sum()),
        "kl": kl_from_uniform(hist),
        "histogram": counts.numpy(),
    }


def count_modes(
    images: np.ndarray | Tensor,
    classifier: DigitClassifier | None = None,
    chunk: int = 4096,
) -> dict[str, object]:
    """Mode count of Stacked MNIST samples.

    images: uint8 (N, H, W, 3) / (N, 3, H, W), or float (N, 3, H, W) in [-1, 1];
    H = W = 28, 32 (padded) or any size (resized). Use N = 26,000 for numbers that
    compare with the papers. Processed in chunks so memory stays bounded.
    Returns {'modes', 'kl', 'histogram'} as in `modes_from_digits`.
    """
    classifier = classifier or DigitClassifier.load_or_train()
    batch = torch.as_tensor(images) if isinstance(images, np.ndarray) else images
    predictions = []
    for lo in range(0, batch.shape[0], chunk):
        x = to_model_images(batch[lo : lo + chunk])
        if x.shape[1] != 3:
            raise ValueError(f"Stacked MNIST images have 3 channels, got {x.shape[1]}")
        predictions.append(classifier.predict(x).cpu())
    return modes_from_digits(torch.cat(predictions))
