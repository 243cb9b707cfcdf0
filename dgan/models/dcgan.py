"""DCGAN-style generator and discriminator for small images (28, 32 or 64 pixels).

G: z [N, z_dim] -> Linear(1024) + BN + ReLU -> Linear -> [N, C0, s, s] + BN + ReLU
   -> (ConvTranspose 4x4/2 + BN + ReLU) x (k - 1) -> ConvTranspose 4x4/2 -> tanh,
   images [N, channels, R, R] in [-1, 1]; s = 7 for R = 28, else 4; C0 = g_width * 2^(k-1).
D mirrors it: (Conv 4x4/2 + LeakyReLU(0.2)) x k -> Linear(1024) + LeakyReLU -> Linear(1),
   one logit per image [N]. D has no normalisation layers, so real and fake images can share
   one forward pass and R1 needs no batch-statistics care.
The two fully connected layers follow the small-image GANs of the InfoGAN paper: on
MNIST they learn clean digits in far fewer images than an all-convolutional pair.
"""

from __future__ import annotations

import torch
from torch import nn


def _plan(resolution: int) -> tuple[int, int]:
    """(start size, number of 2x stages) for a supported resolution."""
    if resolution == 28:
        return 7, 2
    if resolution in (32, 64):
        return 4, {32: 3, 64: 4}[resolution]
    raise ValueError(f"DCGAN supports resolution 28, 32 or 64, not {resolution}")


class Generator(nn.Module):
    def __init__(self, z_dim: int = 64, resolution: int = 28, channels: int = 1,
                 width: int = 64, hidden: int = 1024) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.resolution = resolution
        self.channels = channels
        self.start, stages = _plan(resolution)
        cin = width * 2 ** (stages - 1)
        self.c0 = cin
        self.fc = nn.Sequential(
            nn.Linear(z_dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, cin * self.start**2, bias=False), nn.BatchNorm1d(cin * self.start**2),
            nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        for _ in range(stages - 1):
            layers += [nn.ConvTranspose2d(cin, cin // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(cin // 2), nn.ReLU(inplace=True)]
            cin //= 2
        layers += [nn.ConvTranspose2d(cin, channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(z.shape[0], self.c0, self.start, self.start))


class Discriminator(nn.Module):
    def __init__(self, resolution: int = 28, channels: int = 1, width: int = 64,
                 hidden: int = 1024) -> None:
        super().__init__()
        start, stages = _plan(resolution)
        layers: list[nn.Module] = []
        cin = channels
        for i in range(stages):
            cout = width * 2**i
            layers += [nn.Conv2d(cin, cout, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            cin = cout
        self.net = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(cin * start * start, hidden),
                                  nn.LeakyReLU(0.2, inplace=True), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(x)).squeeze(1)
