"""Inception-v3 in the form used for FID: the TF graph of 2015-12-05, ported to PyTorch.

Module and parameter names follow the torchvision Inception3 layout so that the
widely used FID weights file (pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`,
a plain state dict) loads strictly. The FID graph differs from torchvision's
Inception-v3 in four places, reproduced here because FID values are only comparable
with published ones when they are:
- average pools inside the Inception blocks exclude padding (count_include_pad=False);
- the last block (Mixed_7c) max-pools instead of average-pools in its pool branch;
- the classifier has 1008 outputs (unused for features);
- inputs are resized to 299x299 bilinearly, without antialiasing.
Weights are never downloaded: pass a path, set DGAN_INCEPTION_WEIGHTS, or put the
file in the dgan cache directory ($DGAN_CACHE, default ~/.cache/dgan).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgan.metrics.cache import cache_root, state_digest

WEIGHTS_ENV = "DGAN_INCEPTION_WEIGHTS"
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
# The file name carries the first hex digits of its sha256 (torch.hub convention).
WEIGHTS_SHA256_PREFIX = "6726825d"


class InceptionWeightsMissing(FileNotFoundError):
    """The FID Inception weights file is not where we were told to look."""


class BasicConv2d(nn.Module):
    """Conv without bias, batch norm (eps 1e-3 as in the TF graph), ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], **kw: object) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class BlockA(nn.Module):
    """35x35 block (Mixed_5b..5d): 1x1, 5x5, double 3x3 and pool branches."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool(x))
        return torch.cat([b1, b5, b3, bp], 1)


class BlockB(nn.Module):
    """Grid reduction 35 -> 17 (Mixed_6a)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class BlockC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (Mixed_6b..6e)."""

    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for layer in (
            self.branch7x7dbl_1,
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            bd = layer(bd)
        bp = self.branch_pool(_avg_pool(x))
        return torch.cat([b1, b7, bd, bp], 1)


class BlockD(nn.Module):
    """Grid reduction 17 -> 8 (Mixed_7a)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class BlockE(nn.Module):
    """8x8 block with split 1x3 / 3x1 branches (Mixed_7b, 7c).

    max_pool=True gives the Mixed_7c variant of the TF FID graph, whose pool branch
    max-pools (a quirk of that graph that FID numbers depend on).
    """

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        t = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(t), self.branch3x3_2b(t)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        if self.max_pool:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _avg_pool(x)
        return torch.cat([b1, b3, bd, self.branch_pool(pooled)], 1)


class InceptionV3Network(nn.Module):
    """The FID Inception-v3 trunk; forward gives (N, 2048) pool3 features from
    (N, 3, 299, 299) float inputs in [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = BlockA(192, pool_features=32)
        self.Mixed_5c = BlockA(256, pool_features=64)
        self.Mixed_5d = BlockA(288, pool_features=64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b = BlockC(768, c7=128)
        self.Mixed_6c = BlockC(768, c7=160)
        self.Mixed_6d = BlockC(768, c7=160)
        self.Mixed_6e = BlockC(768, c7=192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b = BlockE(1280, max_pool=False)
        self.Mixed_7c = BlockE(2048, max_pool=True)
        # Kept so the 1008-class checkpoint loads strictly; features stop before it.
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x: Tensor) -> Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (
            self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
            self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
            self.Mixed_7c,
        ):  # fmt: skip
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def default_weights_path() -> Path:
    """Where dgan looks when no path is given: <cache dir>/pt_inception-2015-12-05-....pth."""
    return cache_root() / WEIGHTS_FILE


def resolve_weights(path: str | os.PathLike | None = None) -> Path:
    """The weights file to load: `path`, else $DGAN_INCEPTION_WEIGHTS, else
    `default_weights_path()`; raises InceptionWeightsMissing naming the file, the
    variable and the default location when none of them exists."""
    given = path if path is not None else os.environ.get(WEIGHTS_ENV) or None
    hint = (
        f"FID needs the Inception weights file {WEIGHTS_FILE} (pytorch-fid's release "
        f"asset 'fid_weights'); dgan never downloads it. Download it once and pass its "
        f"path (--inception-weights / weights=...), set the environment variable "
        f"{WEIGHTS_ENV}=/path/to/{WEIGHTS_FILE}, or put it at {default_weights_path()}. "
        f"See docs/metrics.md."
    )
    if given is None:
        if default_weights_path().is_file():
            return default_weights_path()
        raise InceptionWeightsMissing(f"no Inception weights given. {hint}")
    resolved = Path(given).expanduser()
    if not resolved.is_file():
        raise InceptionWeightsMissing(f"Inception weights not found at {resolved}. {hint}")
    return resolved


def inception_available(path: str | os.PathLike | None = None) -> bool:
    """True when a weights file is given (argument or environment) and exists."""
    try:
        resolve_weights(path)
    except InceptionWeightsMissing:
        return False
    return True


def load_inception_state(net: nn.Module, state: dict[str, Tensor]) -> None:
    """Load a state dict strictly, except that BatchNorm step counters
    (num_batches_tracked), absent from older checkpoints, may be missing."""
    result = net.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"Inception weights do not match the FID architecture: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )


class InceptionV3FID:
    """FeatureNet: 2048-d pool3 features of the FID Inception-v3.

    __call__(images (N, C, H, W) float in [-1, 1], C in {1, 3}) -> (N, 2048) float32.
    Grayscale is repeated to RGB; any size is resized to 299x299 bilinearly.
    `weights`: a path, else $DGAN_INCEPTION_WEIGHTS, else the file in the cache dir.
    `random_init=True` builds the network with random weights (tests and shape checks
    only; not FID).
    `name` ends with a hash of the loaded weights, so the real-statistics cache misses
    when the weights file changes. Runs in fp32 with autocast off whatever the caller's
    autocast: bf16 features differ by ~16% and would not be FID.
    """

    dim = 2048

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        device: torch.device | str = "cpu",
        batch_size: int = 64,
        random_init: bool = False,
        check_hash: bool = True,
    ) -> None:
        self.net = InceptionV3Network()
        if not random_init:
            path = resolve_weights(weights)
            if check_hash:
                _warn_on_hash_mismatch(path)
            load_inception_state(self.net, torch.load(path, map_location="cpu", weights_only=True))
        self.name = f"inception_v3_fid-{state_digest(self.net)[:16]}"
        self.net.eval().requires_grad_(False).to(device)
        self.device = torch.device(device)
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        out = []
        for lo in range(0, images.shape[0], self.batch_size):
            x = images[lo : lo + self.batch_size].to(self.device, torch.float32)
            if x.shape[1] == 1:
                x = x.repeat(1, 3, 1, 1)
            with torch.autocast(self.device.type, enabled=False):
                if x.shape[-2:] != (299, 299):
                    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
                out.append(self.net(x))
        if not out:
            return torch.empty((0, self.dim), device=images.device)
        return torch.cat(out).to(images.device)


def _warn_on_hash_mismatch(path: Path) -> None:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if not h.hexdigest().startswith(WEIGHTS_SHA256_PREFIX):
        warnings.warn(
            f"{path} is not {WEIGHTS_FILE} (sha256 does not start with "
            f"{WEIGHTS_SHA256_PREFIX}); FID values will not match published ones",
            stacklevel=3,
        )
