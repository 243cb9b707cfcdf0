"""CycleGAN's networks (Zhu et al. 2017): a ResNet generator per direction and a PatchGAN
discriminator per domain, held in two containers so that checkpoints, optimizer groups and
DDP each see one network per side ("G": AB and BA, "D": A and B).

The generator is the paper's c7s1-w, d2w, d4w, R4w x `blocks`, u2w, uw, c7s1-C with
reflection padding, instance norm (affine) and a tanh output; its input sides must be
multiples of 4 (two stride-2 convolutions). Each D is pix2pix's PatchGAN on single images
(dgan.models.pix2pix.PatchDiscriminator with in_channels = the image's channels).
"""

from __future__ import annotations

import torch
from torch import nn

from dgan.models.pix2pix import PatchDiscriminator


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=True)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=False),
            _norm(channels), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=False),
            _norm(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    multiple = 4  # input sides must be multiples of this (dgan translate pads to it)

    def __init__(self, in_channels: int, out_channels: int, width: int = 64,
                 blocks: int = 9) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(3),
                                   nn.Conv2d(in_channels, width, 7, bias=False),
                                   _norm(width), nn.ReLU()]
        w = width
        for _ in range(2):  # d2w, d4w
            layers += [nn.Conv2d(w, 2 * w, 3, 2, 1, bias=False), _norm(2 * w), nn.ReLU()]
            w *= 2
        layers += [ResidualBlock(w) for _ in range(blocks)]
        for _ in range(2):  # u2w, uw
            layers += [nn.ConvTranspose2d(w, w // 2, 3, 2, 1, output_padding=1, bias=False),
                       _norm(w // 2), nn.ReLU()]
            w //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(w, out_channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CycleGenerators(nn.Module):
    """G_AB ("AB": domain A -> B) and G_BA ("BA"). One forward computes everything G's
    step needs (one DDP forward per backward)."""

    def __init__(self, channels: int, width: int = 64, blocks: int = 9) -> None:
        super().__init__()
        self.AB = ResnetGenerator(channels, channels, width, blocks)
        self.BA = ResnetGenerator(channels, channels, width, blocks)

    def forward(self, a: torch.Tensor, b: torch.Tensor, identity: bool = True
                ) -> dict[str, torch.Tensor]:
        """fake_b = G_AB(a), rec_a = G_BA(fake_b), and the B way; with `identity` also
        idt_b = G_AB(b) and idt_a = G_BA(a)."""
        fake_b, fake_a = self.AB(a), self.BA(b)
        out = {"fake_b": fake_b, "fake_a": fake_a, "rec_a": self.BA(fake_b),
               "rec_b": self.AB(fake_a)}
        if identity:
            out["idt_b"], out["idt_a"] = self.AB(b), self.BA(a)
        return out


class CycleDiscriminators(nn.Module):
    """D_A judges domain A images, D_B domain B images (PatchGAN logits per patch)."""

    def __init__(self, channels: int, width: int = 64, layers: int = 3) -> None:
        super().__init__()
        self.A = PatchDiscriminator(channels, width=width, layers=layers)
        self.B = PatchDiscriminator(channels, width=width, layers=layers)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.A(a), self.B(b)
