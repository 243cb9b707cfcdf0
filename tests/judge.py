"""A digit classifier trained on the real MNIST subset, used by tests to judge samples.

Independent of dgan's own code paths: it reads the npz directly and trains a small CNN.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from dgan.data.builtin import load_mnist


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))


def _shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    dx, dy = torch.randint(-2, 3, (2,), generator=gen).tolist()
    return torch.roll(x, (dy, dx), dims=(2, 3))


def train_judge(epochs: int = 6, seed: int = 0) -> tuple[nn.Module, float]:
    """(classifier on 28x28 inputs in [0, 1], held-out accuracy)."""
    images, labels = load_mnist()
    order = np.random.default_rng(seed).permutation(len(images))
    x = torch.from_numpy(images[order]).float().div(255).unsqueeze(1)
    y = torch.from_numpy(labels[order].astype(np.int64))
    xtr, ytr, xte, yte = x[:4500], y[:4500], x[4500:], y[4500:]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = _net()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(net(_shift(xtr[idx], gen)), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(xte).argmax(1) == yte).float().mean().item()
    return net, acc


@torch.no_grad()
def judge(net: nn.Module, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N, 28, 28] -> (predicted class [N], confidence [N])."""
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    p = torch.cat([F.softmax(net(x[i:i + 500]), 1) for i in range(0, len(x), 500)])
    conf, cls = p.max(1)
    return cls.numpy(), conf.numpy()
