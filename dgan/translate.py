"""Use a trained translator: load G of an image-to-image run, translate files (`dgan translate`).

    T = dgan.load_translator("runs/pix2pix_mnist")   # a run, a checkpoint or an export
    y = T(x)                                           # [N, C, H, W] in [-1, 1], any H, W
    T = dgan.load_translator("runs/cyclegan_mnist", direction="BtoA")  # G_BA of a CycleGAN

G is fully convolutional, so any image size works: the input is padded by reflection to a
multiple of G's total stride (U-Net: 2^levels, CycleGAN's ResNet G: 4) and the output
cropped back (instance normalisation then sees the padded border too; outputs at the
trained resolution are G's own). A pix2pix run translates its task.direction only; a
CycleGAN run either way (G_AB for AtoB, G_BA for BtoA).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from PIL import Image, UnidentifiedImageError
from torch import nn

from dgan.config import config_from_yaml_text
from dgan.images import save_png, to_uint8

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
TRANSLATION_TASKS = ("pix2pix", "cyclegan")
BOTH_WAYS = ("cyclegan",)  # its "G" holds G_AB ("AB") and G_BA ("BA")
# most pixels accepted from one input file (PIL's own guard is 89M, with a warning only)
MAX_PIXELS = 16384 * 16384


class TranslateError(ValueError):
    """A bad input or option of `dgan translate`: one line naming it."""


class TrainedTranslator(nn.Module):
    """G of a translation run in eval mode, with its config: input domain -> output domain."""

    def __init__(self, net: nn.Module, config: DictConfig, step: int, source: Path,
                 direction: Optional[str] = None) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.config, self.step, self.source = config, step, source
        self.direction = direction or str(config.task.direction)
        self.multiple = int(net.multiple)  # type: ignore[arg-type]

    @property
    def channels(self) -> int:
        return int(self.config.data.channels)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] in [-1, 1] -> translated [N, C, H, W] in [-1, 1], any H and W."""
        h, w = x.shape[-2:]
        m = self.multiple
        ph, pw = -h % m, -w % m
        if ph or pw:
            # reflection needs the pad smaller than the side: repeat it for tiny inputs
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode=mode)
        device = next(self.net.parameters()).device
        y = self.net(x.to(device)).float()
        return y[..., ph // 2:ph // 2 + h, pw // 2:pw // 2 + w]


def load_translator(path: str | os.PathLike, ckpt: Optional[str | int] = None,
                    direction: Optional[str] = None) -> TrainedTranslator:
    """G of `path`: a translation run (newest valid checkpoint, or `ckpt`), a checkpoint
    directory, or a `dgan ckpt export` folder of one. `direction` AtoB | BtoA: a CycleGAN's
    G_AB (the default) or G_BA; for pix2pix it must be the run's task.direction. Raises
    FileNotFoundError, InvalidCheckpoint, TranslateError."""
    from dgan.tasks import task_name

    net, cfg, step, chosen = load_translation_networks(path, ckpt)
    if direction not in (None, "AtoB", "BtoA"):
        raise TranslateError(f"--direction {direction}: expected AtoB or BtoA")
    if task_name(cfg) in BOTH_WAYS:
        direction = direction or "AtoB"
        net = net.AB if direction == "AtoB" else net.BA  # type: ignore[assignment]
    elif direction is not None and direction != cfg.task.direction:
        raise TranslateError(f"--direction {direction}: {path} was trained "
                             f"{cfg.task.direction} (task.direction), and pix2pix's G goes "
                             "one way")
    return TrainedTranslator(net, cfg, step, chosen, direction)


def load_translation_networks(path: str | os.PathLike, ckpt: Optional[str | int] = None
                              ) -> tuple[nn.Module, DictConfig, int, Path]:
    """(the task's whole "G" with its weights, config, step, the checkpoint or export read)
    of a translation run, checkpoint or export; see load_translator."""
    from dgan.export import TRANSLATOR_WEIGHTS
    from dgan.sample import SampleError, _state_of

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such run, checkpoint or export directory")
    if (path / TRANSLATOR_WEIGHTS).is_file():
        from safetensors import safe_open
        from safetensors.torch import load_file

        if ckpt is not None:
            raise TranslateError(f"--ckpt {ckpt}: {path} is an export, which holds one "
                                 "checkpoint")
        cfg = config_from_yaml_text((path / "config.yaml").read_text())
        with safe_open(str(path / TRANSLATOR_WEIGHTS), framework="pt") as f:
            meta = f.metadata() or {}
        weights, step, chosen = load_file(str(path / TRANSLATOR_WEIGHTS)), int(
            meta.get("step", 0)), path
    else:
        try:
            chosen, state = _state_of(path, ckpt)
        except SampleError as e:
            raise TranslateError(str(e)) from None
        cfg = config_from_yaml_text(OmegaConf.to_yaml(OmegaConf.create(state["config"])))
        weights, step = state.get("G"), int(state["step"])
    from dgan.tasks import build_task, task_name

    if task_name(cfg) not in TRANSLATION_TASKS:
        raise TranslateError(f"{path}: a task.name={task_name(cfg)} run generates from noise; "
                             "dgan translate takes a translation run (task.name pix2pix, "
                             "cyclegan); "
                             "use dgan sample")
    net = build_task(cfg).build_networks()["G"]
    net.load_state_dict(weights)
    return net, cfg, step, chosen


def _inputs(src: Path) -> Iterator[tuple[Path, Path]]:
    """(file, path relative to SRC's root) of every image under `src` (or `src` itself)."""
    if src.is_file():
        yield src, Path(src.name)
        return
    for root, dirs, files in os.walk(src):  # symlinked folders are not followed
        dirs.sort()
        for name in sorted(files):
            p = Path(root) / name
            if p.suffix.lower() in IMAGE_EXTS and not p.is_symlink():
                yield p, p.relative_to(src)


def _read(path: Path, channels: int) -> tuple[torch.Tensor, Optional[np.ndarray]]:
    """[1, C, H, W] in [-1, 1] and the alpha channel (uint8 [H, W]) when the file has one."""
    with Image.open(path) as img:
        if img.width * img.height > MAX_PIXELS:
            raise TranslateError(f"{path}: {img.width}x{img.height} pixels, more than "
                                 f"{MAX_PIXELS} accepted")
        img.load()
        alpha = np.asarray(img.getchannel("A")) if "A" in img.getbands() else None
        arr = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[..., None]
    x = torch.from_numpy(arr).permute(2, 0, 1)[None] / 127.5 - 1
    return x, alpha


def _images(src: Path, out: Path, channels: int, skipped: list[tuple[Path, str]]
            ) -> Iterator[tuple[Path, Path, torch.Tensor, Optional[np.ndarray]]]:
    """(file, relative path, [1, C, H, W] in [-1, 1], alpha or None) of every readable image
    under `src` (see _inputs, _read); an unreadable one is appended to `skipped` as
    (file, reason) and passed over. Raises FileNotFoundError / TranslateError first when
    `src` is missing or `out` lies inside it."""
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents and src.is_dir():
        raise TranslateError(f"{out}: inside the input folder {src}; choose another OUT")
    for path, rel in _inputs(src):
        try:
            x, alpha = _read(path, channels)
        except TranslateError as e:
            skipped.append((path, str(e).split(": ", 1)[-1]))
            continue
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            skipped.append((path, f"unreadable image ({type(e).__name__}: {e})"))
            continue
        yield path, rel, x, alpha


def _write(y: np.ndarray, alpha: Optional[np.ndarray], target: Path) -> None:
    """uint8 [H, W, C] (C 1 or 3) -> PNG `target` (atomically, folders made); with an alpha
    (uint8 [H, W]) an RGBA PNG (grey repeated into RGB)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if alpha is None:
        save_png(y, target)
        return
    y = np.concatenate([np.repeat(y, 3, -1) if y.shape[-1] == 1 else y, alpha[..., None]], -1)
    tmp = f"{target}.tmp"
    Image.fromarray(y, "RGBA").save(tmp, format="PNG")
    os.replace(tmp, target)


def translate_files(t: TrainedTranslator, src: str | os.PathLike, out: str | os.PathLike
                    ) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Translate every image under `src` (a folder, recursively, or one file) into `out` as
    PNG with the same relative name (extension .png); alpha is carried over unchanged.
    Returns (written, [(input, reason) skipped])."""
    src, out = Path(src), Path(out)
    written: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for _, rel, x, alpha in _images(src, out, t.channels, skipped):
        target = out / rel.with_suffix(".png")
        _write(to_uint8(t(x))[0], alpha, target)
        written.append(target)
    return written, skipped
