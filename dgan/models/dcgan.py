"""DCGAN-style generator and discriminator for small images (28, 32 or 64 pixels).

G: z [N, z_dim] -> Linear(1024) + BN + ReLU -> Linear -> [N, C0, s, s] + BN + ReLU
   -> (ConvTranspose 4x4/2 + BN + ReLU) x (k - 1) -> ConvTranspose 4x4/2 -> tanh,
   images [N, channels, R, R] in [-1, 1]; s = 7 for R = 28, else 4; C0 = g_width * 2^(k-1).
D mirrors it: (Conv 4x4/2 + LeakyReLU(0.2)) x k -> Linear(1024) + LeakyReLU -> Linear(1),
   one logit per image [N].
Class-conditional (c_dim > 0, one-hot labels c [N, c_dim]): G adds a learned class embedding to its
first hidden layer; D adds the projection <embed(c), h> of its last hidden features h
(Miyato & Koyama, cGANs with projection discriminator). D has no normalisation layers, so real and fake images can share
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
                 width: int = 64, hidden: int = 1024, c_dim: int = 0) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.embed = nn.Linear(c_dim, hidden, bias=False) if c_dim else None
        self.resolution = resolution
        self.channels = channels
        self.start, stages = _plan(resolution)
        cin = width * 2 ** (stages - 1)
        self.c0 = cin
        self.fc_in = nn.Linear(z_dim, hidden, bias=False)
        self.fc = nn.Sequential(
            nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, cin * self.start**2, bias=False), nn.BatchNorm1d(cin * self.start**2),
            nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        for _ in range(stages - 1):
            layers += [nn.ConvTranspose2d(cin, cin // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(cin // 2), nn.ReLU(inplace=True)]
            cin //= 2
        layers += [nn.ConvTranspose2d(cin, channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = self.fc_in(z)
        if self.embed is not None:
            h = h + self.embed(c)
        return self.net(self.fc(h).view(z.shape[0], self.c0, self.start, self.start))


class Discriminator(nn.Module):
    def __init__(self, resolution: int = 28, channels: int = 1, width: int = 64,
                 hidden: int = 1024, c_dim: int = 0) -> None:
        super().__init__()
        self.c_dim = c_dim
        start, stages = _plan(resolution)
        layers: list[nn.Module] = []
        cin = channels
        for i in range(stages):
            cout = width * 2**i
            layers += [nn.Conv2d(cin, cout, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            cin = cout
        self.net = nn.Sequential(*layers)
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(cin * start * start, hidden),
                                    nn.LeakyReLU(0.2, inplace=True))
        self.out = nn.Linear(hidden, 1)
        self.embed = nn.Linear(c_dim, hidden, bias=False) if c_dim else None

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = self.hidden(self.net(x))
        logit = self.out(h).squeeze(1)
        if self.embed is not None:
            logit = logit + (self.embed(c) * h).sum(1)
        return logit
