"""VGG19 features for the perceptual loss of task.name=sr, in plain torch.

The weights come only from a file the user names (`loss.perceptual_weights`), never from
the network and never random: torchvision's vgg19 state dict (`features.N.weight` /
`features.N.bias` for the 16 convolutions; `classifier.*` is ignored) in a `.safetensors`
file or a `.pth` read with `torch.load(..., weights_only=True)` (no pickled code runs).

Its sha256 is checked before it is read: against `loss.perceptual_sha256` when given
(e.g. a .safetensors converted from torchvision's file), else against torchvision's own
file `vgg19-dcbb9e9d.pth`, which torchvision names by the first 8 hex digits of its sha256
and checks by that prefix (as torch.hub does; dgan does not ship the full digest). Every
problem (missing file, wrong hash, wrong layout: a missing or mis-shaped key) is a
`PerceptualWeightsError`, one line naming the file and what was expected.

Layers are named conv{block}_{index} (the conv's output, before its ReLU: ESRGAN's
"before activation" features) or relu{block}_{index} (after it). Inputs are images in
[-1, 1] (dgan's range), 1 or 3 channels (grey repeated), normalised with ImageNet's
mean / std before the first conv.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

# torchvision's vgg19 (configuration "E"): output channels per conv, "M" a 2x2 max pool
VGG19_PLAN = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
TORCHVISION_FILE = "vgg19-dcbb9e9d.pth"
TORCHVISION_SHA256_PREFIX = "dcbb9e9d"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Real-ESRGAN's perceptual layers and weights (before activation)
DEFAULT_LAYERS = "conv1_2:0.1,conv2_2:0.1,conv3_4:1,conv4_4:1,conv5_4:1"


class PerceptualWeightsError(ValueError):
    """A VGG19 weights file that is missing, not the expected file, or not VGG19."""


def conv_layers() -> dict[str, tuple[int, int, int]]:
    """conv name -> (index in `features`, in channels, out channels), e.g. conv1_1 -> (0, 3,
    64): torchvision's layout (a conv at index i, its ReLU at i + 1, pools between)."""
    out: dict[str, tuple[int, int, int]] = {}
    index, cin, block, k = 0, 3, 1, 1
    for item in VGG19_PLAN:
        if item == "M":
            index += 1
            block, k = block + 1, 1
            continue
        out[f"conv{block}_{k}"] = (index, cin, int(item))
        index, cin, k = index + 2, int(item), k + 1
    return out


def parse_layers(spec: str) -> dict[str, float]:
    """"conv5_4:1,relu2_2:0.5" -> {"conv5_4": 1.0, "relu2_2": 0.5}; ValueError (one line)
    for an unknown name, a bad weight or an empty list."""
    convs = conv_layers()
    layers: dict[str, float] = {}
    for part in str(spec).split(","):
        part = part.strip()
        m = re.fullmatch(r"(conv|relu)(\d_\d):([0-9.eE+-]+)", part)
        if not m or f"conv{m.group(2)}" not in convs:
            raise ValueError(f"{part!r}: expected NAME:WEIGHT with NAME conv1_1 .. conv5_4 or "
                             f"relu1_1 .. relu5_4 (e.g. {DEFAULT_LAYERS})")
        try:
            weight = float(m.group(3))
        except ValueError:
            raise ValueError(f"{part!r}: the weight is not a number") from None
        if not weight >= 0 or weight == float("inf"):
            raise ValueError(f"{part!r}: expected a finite weight >= 0")
        layers[m.group(1) + m.group(2)] = weight
    if not layers or not any(layers.values()):
        raise ValueError(f"{spec!r}: expected at least one layer with a weight > 0")
    return layers


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_vgg19_state(path: str, sha256: Optional[str] = None) -> dict[str, torch.Tensor]:
    """The 32 `features.*` tensors of the VGG19 weights file `path` after the checks of the
    module doc (PerceptualWeightsError otherwise)."""
    if not os.path.isfile(path):
        raise PerceptualWeightsError(
            f"loss.perceptual_weights {path}: no such file; expected torchvision's VGG19 "
            f"weights ({TORCHVISION_FILE}) or a .safetensors of them")
    digest = file_sha256(path)
    if sha256:
        if digest != str(sha256).strip().lower():
            raise PerceptualWeightsError(
                f"loss.perceptual_weights {path}: sha256 {digest}, expected "
                f"{str(sha256).strip().lower()} (loss.perceptual_sha256)")
    elif not digest.startswith(TORCHVISION_SHA256_PREFIX):
        raise PerceptualWeightsError(
            f"loss.perceptual_weights {path}: sha256 {digest} is not torchvision's "
            f"{TORCHVISION_FILE} (sha256 {TORCHVISION_SHA256_PREFIX}...); for another file "
            "(e.g. a converted .safetensors) give its sha256 as loss.perceptual_sha256")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state: Any = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or foreign files raise many types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PerceptualWeightsError(f"loss.perceptual_weights {path}: cannot read it "
                                     f"({first}); expected a .safetensors or a torch "
                                     "state-dict .pth") from None
    if not isinstance(state, dict):
        raise PerceptualWeightsError(f"loss.perceptual_weights {path}: holds a "
                                     f"{type(state).__name__}, expected a state dict")
    out: dict[str, torch.Tensor] = {}
    for name, (i, cin, cout) in conv_layers().items():
        for kind, shape in (("weight", (cout, cin, 3, 3)), ("bias", (cout,))):
            key = f"features.{i}.{kind}"
            t = state.get(key)
            if not torch.is_tensor(t):
                raise PerceptualWeightsError(
                    f"loss.perceptual_weights {path}: no tensor {key} ({name}); expected "
                    "torchvision's vgg19 layout (features.N.weight / features.N.bias)")
            if tuple(t.shape) != shape:
                raise PerceptualWeightsError(
                    f"loss.perceptual_weights {path}: {key} ({name}) has shape "
                    f"{list(t.shape)}, expected {list(shape)} (VGG19)")
            out[key] = t.float()
    return out


class VGG19Features(nn.Module):
    """The convs of VGG19 up to the deepest layer asked for; `forward(x)` -> {layer name:
    features} for images x in [-1, 1]. Frozen, eval mode."""

    def __init__(self, state: dict[str, torch.Tensor], layers: list[str]) -> None:
        super().__init__()
        convs = conv_layers()
        order = list(convs)
        self.layers = list(layers)
        last = max(order.index("conv" + name[4:] if name.startswith("relu") else name)
                   for name in self.layers)
        self.names = order[:last + 1]
        self.convs = nn.ModuleList()
        for name in self.names:
            i, cin, cout = convs[name]
            conv = nn.Conv2d(cin, cout, 3, padding=1)
            conv.weight.data.copy_(state[f"features.{i}.weight"])
            conv.bias.data.copy_(state[f"features.{i}.bias"])
            self.convs.append(conv)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h = ((x + 1) / 2 - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        out: dict[str, torch.Tensor] = {}
        wanted = set(self.layers)
        for name, conv in zip(self.names, self.convs):
            block, k = name[4:].split("_")
            if k == "1" and block != "1":  # a pool before every block but the first
                h = F.max_pool2d(h, 2)
            h = conv(h)
            if name in wanted:
                out[name] = h
            h = F.relu(h)
            if "relu" + name[4:] in wanted:
                out["relu" + name[4:]] = h
        return out


class PerceptualLoss(nn.Module):
    """sum over layers of weight x mean |phi(x) - phi(y)| (L1 on VGG19 features, as
    Real-ESRGAN); y's features without gradient."""

    def __init__(self, path: str, layers: str = DEFAULT_LAYERS,
                 sha256: Optional[str] = None) -> None:
        super().__init__()
        self.weights = {k: w for k, w in parse_layers(layers).items() if w > 0}
        self.net = VGG19Features(read_vgg19_state(path, sha256), list(self.weights))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx = self.net(x)
        with torch.no_grad():
            fy = self.net(y)
        loss = torch.zeros((), device=x.device)
        for name, w in self.weights.items():
            loss = loss + w * F.l1_loss(fx[name].float(), fy[name].float())
        return loss
