"""Image tensors to uint8 arrays, grids and PNG files."""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] float in [-1, 1] -> uint8 [N, H, W, C] (C = 1 or 3)."""
    x = (images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5
    return x.round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def make_grid(images: torch.Tensor, cols: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile [N, C, H, W] images in [-1, 1] into one uint8 [H', W', C] array."""
    tiles = to_uint8(images)
    n, h, w, c = tiles.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[y:y + h, x:x + w] = tiles[i]
    return grid


def save_png(array: np.ndarray, path: str | os.PathLike) -> None:
    """uint8 [H, W, C] -> PNG at `path` (written atomically)."""
    img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    tmp = f"{path}.tmp"
    img.save(tmp, format="PNG")
    os.replace(tmp, path)
