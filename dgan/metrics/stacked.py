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
from torch import Tensor

from dgan.metrics.digits import DigitClassifier, kl_from_uniform
from dgan.metrics.feature_net import to_model_images

NUM_MODES = 1000
PROTOCOL_SAMPLES = 26_000


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
