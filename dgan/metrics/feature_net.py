"""The one interface every feature network implements, and image-format helpers."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class FeatureNet(Protocol):
    """Maps images to feature vectors.

    name: stable identifier, part of real-statistics cache keys and metric names.
    dim: feature width D.
    __call__(images): images (N, C, H, W) float in [-1, 1] (-1 = black) on any device
    -> (N, D) float32 features on the same device. Implementations resize and
    convert channels themselves and run without gradients.
    """

    name: str
    dim: int

    def __call__(self, images: Tensor) -> Tensor: ...


def to_model_images(batch: Tensor) -> Tensor:
    """Bring an image batch to the convention (N, C, H, W) float32 in [-1, 1].

    uint8 batches are scaled (0 -> -1, 255 -> +1) and may be channels-last
    (N, H, W, C) with C in {1, 3} or (N, H, W) grayscale; float batches must already
    be (N, C, H, W) in [-1, 1] and pass through as float32.
    """
    if batch.dtype == torch.uint8:
        x = batch
        if x.ndim == 3:
            x = x.unsqueeze(1)
        elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
            x = x.permute(0, 3, 1, 2)
        return x.float().div(127.5).sub(1.0)
    if batch.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) images, got shape {tuple(batch.shape)}")
    return batch.float()
