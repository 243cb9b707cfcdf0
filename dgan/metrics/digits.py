"""An offline digit classifier trained by dgan on its built-in MNIST subset, and the
metrics it gives: classifier-feature Frechet distance, class coverage, confident share.

The classifier needs no download: the first use trains it on CPU from
`dgan/data/mnist5k.npz` (4,000 train / 1,000 held-out, fixed seed, ~10 s on two cores),
prints the held-out accuracy, and caches the weights as safetensors under
<cache>/digits/, keyed by a hash of the training recipe. Later uses load the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import Tensor, nn

from dgan.data.builtin import load_mnist as load_mnist5k
from dgan.metrics.cache import atomic_write, cache_root, digest, state_digest
from dgan.metrics.distributed import broadcast_module, broadcast_object, rank_and_world

# Everything that changes the trained weights; its hash names the cache file.
RECIPE = {
    "arch": "conv16-conv32-fc128-v1",
    "data": "mnist5k",
    "split_seed": 1234,
    "train": 4000,
    "heldout": 1000,
    "init_seed": 0,
    "epochs": 10,
    "batch": 64,
    "max_lr": 3e-3,
    "max_shift": 2,
    "dropout": 0.3,
}
FEATURE_DIM = 128
CONFIDENT = 0.9


def split_indices() -> tuple[Tensor, Tensor]:
    """(train, held-out) index tensors into the built-in subset, from the recipe's seed.
    The file is sorted by label, so the split is a seeded permutation."""
    gen = torch.Generator().manual_seed(RECIPE["split_seed"])
    perm = torch.randperm(RECIPE["train"] + RECIPE["heldout"], generator=gen)
    return perm[: RECIPE["train"]], perm[RECIPE["train"] :]


class DigitCNN(nn.Module):
    """Two conv blocks and a 128-wide hidden layer: (N, 1, 28, 28) in [-1, 1] -> (N, 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 7 * 7, FEATURE_DIM)
        self.fc2 = nn.Linear(FEATURE_DIM, 10)
        self.dropout = nn.Dropout(RECIPE["dropout"])

    def embed(self, x: Tensor) -> Tensor:
        """Penultimate features (N, 128), post-ReLU."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc1(x.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(self.embed(x)))


def _random_shift(x: Tensor, max_shift: int, gen: torch.Generator) -> Tensor:
    """Translate each image (N, 1, H, W) by up to max_shift pixels, filling background."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, :, None].expand(n, h, w)
    cols = (dx[:, None] + torch.arange(w))[:, None, :].expand(n, h, w)
    return padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)


def _mnist_tensors() -> tuple[Tensor, Tensor]:
    images, labels = load_mnist5k()
    x = torch.from_numpy(images).float().div(127.5).sub(1.0).unsqueeze(1)
    return x, torch.from_numpy(labels).long()


@torch.no_grad()
def heldout_accuracy(net: DigitCNN) -> float:
    """Accuracy of `net` on the recipe's 1,000 held-out digits."""
    x, y = _mnist_tensors()
    _, held = split_indices()
    net.eval()
    device = next(net.parameters()).device
    return float((net(x[held].to(device)).argmax(1).cpu() == y[held]).float().mean())


def train_digit_cnn(verbose: bool = True) -> tuple[DigitCNN, float]:
    """Train on CPU with the fixed recipe (Adam, one-cycle LR, random shifts);
    returns (net in eval mode, held-out accuracy). CPU keeps the weights the same
    wherever the cache is (re)built."""
    x, y = _mnist_tensors()
    train_idx, _ = split_indices()
    gen = torch.Generator().manual_seed(RECIPE["init_seed"] + 1)
    # fork_rng: init and dropout draw from the global RNG; the caller's stream stays put.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RECIPE["init_seed"])
        net = DigitCNN()
        batch = RECIPE["batch"]
        steps_per_epoch = len(train_idx) // batch
        opt = torch.optim.Adam(net.parameters(), lr=RECIPE["max_lr"])
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=RECIPE["max_lr"], total_steps=RECIPE["epochs"] * steps_per_epoch
        )
        for _ in range(RECIPE["epochs"]):
            net.train()
            order = train_idx[torch.randperm(len(train_idx), generator=gen)]
            for step in range(steps_per_epoch):
                idx = order[step * batch : (step + 1) * batch]
                xb = _random_shift(x[idx], RECIPE["max_shift"], gen)
                loss = F.cross_entropy(net(xb), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    accuracy = heldout_accuracy(net)
    if verbose:
        print(f"dgan: digit classifier trained, held-out accuracy {accuracy:.4f} (1,000 digits)")
    return net.eval(), accuracy


def classifier_path(root: Path | None = None) -> Path:
    """Where the classifier for the current recipe is cached."""
    return (root or cache_root()) / "digits" / f"digit-cnn-{digest(RECIPE)[:16]}.safetensors"


def fit_to_28(x: Tensor) -> Tensor:
    """(N, 1, H, W) -> (N, 1, 28, 28). 32x32 is center-cropped (dgan pads MNIST to 32
    with background); other sizes are resized with antialiasing."""
    h, w = x.shape[-2:]
    if (h, w) == (28, 28):
        return x
    if (h, w) == (32, 32):
        return x[..., 2:30, 2:30]
    return F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False, antialias=True)


class DigitClassifier:
    """The trained classifier applied per channel to images (N, C, H, W) in [-1, 1].

    Each channel is one digit (C = 1 for MNIST, C = 3 for Stacked MNIST).
    Use `DigitClassifier.load_or_train()`.
    """

    def __init__(self, net: DigitCNN, accuracy: float, device: torch.device | str = "cpu",
                 batch_size: int = 256) -> None:  # fmt: skip
        self.net = net.eval().requires_grad_(False).to(device)
        self.weights_hash = state_digest(self.net)  # part of DigitFeatures.name (cache key)
        self.accuracy = accuracy
        self.device = torch.device(device)
        self.batch_size = batch_size

    @classmethod
    def load_or_train(
        cls, device: torch.device | str = "cpu", root: Path | None = None, verbose: bool = True
    ) -> "DigitClassifier":
        """Load the cached classifier or train and cache it. Under torch.distributed,
        rank 0 does this and broadcasts the weights, so every rank embeds identically
        even when nodes do not share a cache directory."""
        rank, _ = rank_and_world()
        with torch.random.fork_rng(devices=[]):  # the init is overwritten; keep the caller's RNG
            net = DigitCNN()
        accuracy = 0.0
        if rank == 0:
            path = classifier_path(root)
            if path.exists():
                net.load_state_dict(load_file(path))
                with safe_open(path, framework="pt") as f:
                    accuracy = float(f.metadata()["heldout_accuracy"])
            else:
                net, accuracy = train_digit_cnn(verbose)
                blob = save(
                    {k: v.contiguous() for k, v in net.state_dict().items()},
                    metadata={"heldout_accuracy": f"{accuracy:.6f}", "recipe": json.dumps(RECIPE)},
                )
                atomic_write(path, lambda f: f.write(blob))
        broadcast_module(net)
        accuracy = broadcast_object(accuracy)
        return cls(net, accuracy, device)

    @torch.no_grad()
    def _per_channel(self, images: Tensor, fn: str) -> Tensor:
        n, c = images.shape[:2]
        flat = fit_to_28(images.reshape(n * c, 1, *images.shape[-2:]).float())
        out = []
        with torch.autocast(self.device.type, enabled=False):  # fp32 whatever the caller's
            for lo in range(0, flat.shape[0], self.batch_size):
                chunk = flat[lo : lo + self.batch_size].to(self.device)
                out.append(getattr(self.net, fn)(chunk))
        result = torch.cat(out) if out else torch.empty(0, device=self.device)
        return result.reshape(n, c, -1).to(images.device)

    def logits(self, images: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C, 10) class logits per channel."""
        return self._per_channel(images, "forward")

    def probs(self, images: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C, 10) class probabilities per channel."""
        return self.logits(images).softmax(-1)

    def predict(self, images: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C) int64 predicted digit per channel."""
        return self.logits(images).argmax(-1)

    def embed(self, images: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C * 128) penultimate features, channels concatenated."""
        return self._per_channel(images, "embed").flatten(1)


class DigitFeatures:
    """FeatureNet over the digit classifier for C-channel digit images; dim = 128 * C."""

    def __init__(self, classifier: DigitClassifier, channels: int = 1) -> None:
        self.classifier = classifier
        self.channels = channels
        self.name = f"digit_cnn_c{channels}_{classifier.weights_hash[:12]}"
        self.dim = FEATURE_DIM * channels

    def __call__(self, images: Tensor) -> Tensor:
        if images.shape[1] != self.channels:
            raise ValueError(f"{self.name} expects {self.channels} channels, got {images.shape[1]}")
        return self.classifier.embed(images)


def class_histogram(labels: Tensor, num_classes: int = 10) -> Tensor:
    """Share of each class among integer `labels` (any shape), float64 (num_classes,)."""
    counts = torch.bincount(labels.flatten().long().cpu(), minlength=num_classes).double()
    return counts / counts.sum().clamp(min=1)


def kl_from_uniform(histogram: Tensor) -> float:
    """KL(histogram || uniform) in nats; empty bins contribute 0."""
    p = histogram.double()
    nz = p > 0
    return float((p[nz] * (p[nz] * p.numel()).log()).sum())


def coverage_metrics(probs: Tensor, threshold: float = CONFIDENT) -> dict[str, float]:
    """Digit-class coverage of generated samples from probabilities (N, C, 10).

    All channels are pooled (each channel is one digit). Returns the histogram as
    'coverage/0'..'coverage/9' (shares), 'classes_covered' (classes with any sample),
    'coverage_min' (smallest share; 0.1 is perfectly uniform), 'coverage_kl'
    (KL from uniform, nats) and 'confident' (share with max prob >= threshold).
    """
    flat = probs.reshape(-1, probs.shape[-1])
    hist = class_histogram(flat.argmax(-1), probs.shape[-1])
    out = {f"coverage/{i}": float(share) for i, share in enumerate(hist)}
    out["classes_covered"] = float((hist > 0).sum())
    out["coverage_min"] = float(hist.min())
    out["coverage_kl"] = kl_from_uniform(hist)
    out["confident"] = float((flat.max(-1).values >= threshold).double().mean())
    return out

