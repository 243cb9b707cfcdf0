"""ESRGAN-class networks for super-resolution (task.name=sr): an RRDB generator (Wang et
al. 2018, ESRGAN) and a U-Net discriminator with spectral normalisation (Wang et al. 2021,
Real-ESRGAN).

Images are in [-1, 1] on both sides, like every dgan task (the stream's range); G's output
is not squashed (no tanh, as ESRGAN): the losses pull it into range, and whoever saves it
clamps.

RRDBGenerator(in_ch, out_ch, scale, width, blocks, growth):
  conv3x3(in -> width) -> trunk: `blocks` residual-in-residual dense blocks, conv3x3, plus
  the first conv's features (long skip) -> per factor 2 of `scale` (1, 2 or 4):
  nearest-neighbour x2, conv3x3, LeakyReLU(0.2) -> conv3x3, LeakyReLU -> conv3x3(-> out).
  A dense block: 5 convs, each seeing the block input and every earlier conv's output
  (`growth` channels each), LeakyReLU after the first four; out = x + 0.2 * conv5. An RRDB:
  three dense blocks, out = x + 0.2 * (their chain). No batch norm anywhere. The dense
  blocks' convs start from Kaiming-normal weights scaled by 0.1 with zero biases
  (ESRGAN's init: each dense block starts near the identity, so deep stacks train
  stably); the other convs keep torch's default init.
UNetDiscriminator(in_ch, width): conv3x3(in -> w), three 4x4 stride-2 convs (w -> 2w -> 4w
  -> 8w), then three (bilinear x2, conv3x3) levels back up (8w -> 4w -> 2w -> w), each
  added to the encoder's features of its resolution (skip connections), two conv3x3 and a
  conv3x3 to one channel: a realness logit per pixel, [N, 1, H, W]. Every conv but the
  first and the last is spectrally normalised (`SNConv2d`); LeakyReLU(0.2). Any H, W >= 8
  (the decoder resizes to the skip's size).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

RESIDUAL_SCALE = 0.2  # ESRGAN's residual scaling in dense blocks and RRDBs
INIT_SCALE = 0.1  # ESRGAN's scale of the dense blocks' initial weights
SCALES = (1, 2, 4)


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


class DenseBlock(nn.Module):
    """Five 3x3 convs with dense connections; x + 0.2 * the last conv's output."""

    def __init__(self, width: int, growth: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(width + i * growth, growth if i < 4 else width, 3, padding=1)
            for i in range(5))
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_in")
            with torch.no_grad():
                conv.weight.mul_(INIT_SCALE)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in self.convs[:4]:
            feats.append(_lrelu(conv(torch.cat(feats, 1))))
        return x + RESIDUAL_SCALE * self.convs[4](torch.cat(feats, 1))


class RRDB(nn.Module):
    """Residual in residual dense block: x + 0.2 * three dense blocks in a row."""

    def __init__(self, width: int, growth: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(DenseBlock(width, growth) for _ in range(3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + RESIDUAL_SCALE * self.blocks(x)


class RRDBGenerator(nn.Module):
    """LR [N, in_ch, h, w] in [-1, 1] -> SR [N, out_ch, scale * h, scale * w]."""

    def __init__(self, in_channels: int, out_channels: int, scale: int = 4, width: int = 64,
                 blocks: int = 23, growth: int = 32) -> None:
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"RRDB generator: scale {scale}; expected one of {list(SCALES)}")
        self.scale = scale
        self.conv_first = nn.Conv2d(in_channels, width, 3, padding=1)
        self.body = nn.Sequential(*(RRDB(width, growth) for _ in range(blocks)))
        self.conv_body = nn.Conv2d(width, width, 3, padding=1)
        self.ups = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1)
                                 for _ in range(scale.bit_length() - 1))
        self.conv_hr = nn.Conv2d(width, width, 3, padding=1)
        self.conv_last = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for conv in self.ups:
            feat = _lrelu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(_lrelu(self.conv_hr(feat)))


class SNConv2d(nn.Conv2d):
    """A conv whose weight is divided by its largest singular value (Miyato et al. 2018),
    estimated by one power iteration per forward in training mode (the left singular
    vector estimate `sn_u` is a buffer: saved, restored, and put back on a skipped step);
    in eval mode the stored estimate is used as is."""

    def __init__(self, *args, eps: float = 1e-12, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.eps = eps
        self.register_buffer("sn_u", F.normalize(torch.randn(self.out_channels), dim=0,
                                                 eps=eps))

    def normalised_weight(self) -> torch.Tensor:
        w = self.weight.flatten(1).float()
        with torch.no_grad():
            u = self.sn_u.float()
            v = F.normalize(w.t() @ u, dim=0, eps=self.eps)
            if self.training:
                u = F.normalize(w @ v, dim=0, eps=self.eps)
                v = F.normalize(w.t() @ u, dim=0, eps=self.eps)
                self.sn_u.copy_(u)
            u, v = u.clone(), v.clone()  # constants of this forward's graph
        sigma = torch.dot(u, w @ v)
        return (self.weight.float() / sigma).to(self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.normalised_weight(), self.bias)


class UNetDiscriminator(nn.Module):
    """Images [N, C, H, W] in [-1, 1] -> per-pixel realness logits [N, 1, H, W]."""

    def __init__(self, in_channels: int, width: int = 64) -> None:
        super().__init__()
        w = width
        self.conv0 = nn.Conv2d(in_channels, w, 3, padding=1)
        self.downs = nn.ModuleList([SNConv2d(w, 2 * w, 4, 2, 1, bias=False),
                                    SNConv2d(2 * w, 4 * w, 4, 2, 1, bias=False),
                                    SNConv2d(4 * w, 8 * w, 4, 2, 1, bias=False)])
        self.ups = nn.ModuleList([SNConv2d(8 * w, 4 * w, 3, 1, 1, bias=False),
                                  SNConv2d(4 * w, 2 * w, 3, 1, 1, bias=False),
                                  SNConv2d(2 * w, w, 3, 1, 1, bias=False)])
        self.head = nn.ModuleList([SNConv2d(w, w, 3, 1, 1, bias=False),
                                   SNConv2d(w, w, 3, 1, 1, bias=False)])
        self.conv_last = nn.Conv2d(w, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < 8:
            raise ValueError(f"U-Net discriminator: images of at least 8x8, got "
                             f"{x.shape[-2]}x{x.shape[-1]}")
        feats = [_lrelu(self.conv0(x))]
        for conv in self.downs:
            feats.append(_lrelu(conv(feats[-1])))
        h = feats.pop()
        for conv in self.ups:
            skip = feats.pop()
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = _lrelu(conv(h)) + skip
        for conv in self.head:
            h = _lrelu(conv(h))
        return self.conv_last(h)
