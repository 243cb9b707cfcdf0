"""Use a trained generator: load G_ema, generate images by seed, write PNGs (`dgan sample`).

    G = dgan.load_generator("runs/quickstart")      # a run, a checkpoint or an export
    images = G.generate(seeds=range(8))              # [8, C, H, W] float32 in [-1, 1]

Image i is a function of seeds[i] alone (and of the class, truncation and noise options):
its latent z, its drawn class and its random noise come from `torch.Generator` seeded with
that seed, and every seed goes through G on its own (see `generate`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dgan import checkpoint
from dgan.checkpoint import layout
from dgan.config import config_from_yaml_text
from dgan.export import EXPORT_CLASSES, EXPORT_WEIGHTS, FILES
from dgan.images import make_grid, save_png, to_uint8
from dgan.models import build_models

NOISE_MODES = ("const", "random", "none")


class SampleError(ValueError):
    """A request the generator cannot serve (a class it lacks, an option of another model)."""


class TrainedGenerator(nn.Module):
    """G_ema of a trained run, in eval mode on the CPU, with what it takes to use it.

    Attributes: `net` (the generator module), `config` (the run's resolved config),
    `class_names` (one per class of a class-conditional model, else empty), `step`,
    `source` (the checkpoint or export it came from); properties `z_dim`, `c_dim`,
    `resolution`, `channels`. Calling it calls `net(z, c, ...)`.
    """

    def __init__(self, net: nn.Module, config: DictConfig, class_names: Sequence[str],
                 step: int, source: Path) -> None:
        super().__init__()
        self.net = net
        self.config, self.class_names = config, list(class_names)
        self.step, self.source = step, source
        self.eval().requires_grad_(False)

    @property
    def z_dim(self) -> int:
        return int(self.net.z_dim)

    @property
    def c_dim(self) -> int:
        return int(getattr(self.net, "c_dim", 0))

    @property
    def resolution(self) -> int:
        return int(self.config.data.resolution)

    @property
    def channels(self) -> int:
        return int(self.config.data.channels)

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None, **kw: Any
                ) -> torch.Tensor:
        return self.net(z, c, **kw)

    def class_index(self, cls: int | str) -> int:
        """The index of class `cls`: one of `class_names`, else an index 0..c_dim-1."""
        if not self.c_dim:
            raise SampleError(f"class {cls!r}: this generator is unconditional (no classes)")
        if isinstance(cls, str) and cls in self.class_names:  # a name first, then an index
            return self.class_names.index(cls)
        text = str(cls)
        if text.lstrip("-").isdigit() and 0 <= int(text) < self.c_dim:
            return int(text)
        raise SampleError(f"class {cls!r}: expected one of {', '.join(self.class_names)} or an "
                          f"index 0..{self.c_dim - 1}")

    def generate(self, seeds: Iterable[int], **kw: Any) -> torch.Tensor:
        """`generate(self, seeds, **kw)`."""
        return generate(self, seeds, **kw)


def _state_of(path: Path, ckpt: Optional[str | int]) -> tuple[Path, dict[str, Any]]:
    """(checkpoint directory, shared state) for a run or checkpoint directory and --ckpt."""
    if layout.is_checkpoint_dir(path):
        if ckpt is not None:
            raise SampleError(f"--ckpt {ckpt}: {path} is itself a checkpoint; give its run "
                              "directory to choose another")
        return path, checkpoint.load(path)
    if ckpt is None:
        found = checkpoint.load_latest(path)
        if found is None:
            raise FileNotFoundError(f"{path}: not a dgan run, checkpoint or export directory "
                                    f"(no checkpoint in {checkpoint.checkpoint_dir(path)}, "
                                    f"no {layout.META}, no {EXPORT_WEIGHTS})")
        return found
    chosen = checkpoint_of(path, ckpt)
    return chosen, checkpoint.load(chosen)


def checkpoint_of(path: Path, ckpt: str | int) -> Path:
    """The checkpoint directory that `ckpt` names in run directory `path`: a step number,
    `best` (the one <run>/best.json names, see dgan.checkpoint.best) or a checkpoint
    directory. SampleError when there is no such checkpoint."""
    from dgan.checkpoint import best

    text = str(ckpt)
    if text == "best":
        try:
            return best.best_checkpoint(path)
        except best.BestError as e:
            raise SampleError(f"--ckpt best: {e}") from None
    if text.isdigit():
        chosen = checkpoint.checkpoint_dir(path) / layout.step_name(int(text))
        if not chosen.is_dir():
            have = [str(int(layout.NAME.match(p.name).group(1)))  # type: ignore[union-attr]
                    for p in checkpoint.list_checkpoints(path)]
            raise SampleError(f"--ckpt {text}: {path} has no checkpoint of step {text} "
                              f"(steps: {', '.join(have) or 'none'})")
    else:
        chosen = Path(text)
        if not layout.is_checkpoint_dir(chosen):
            raise SampleError(f"--ckpt {text}: expected a step number or a checkpoint directory"
                              " (or best)")
    return chosen


def load_generator(path: str | os.PathLike, ckpt: Optional[str | int] = None
                   ) -> TrainedGenerator:
    """G_ema of `path`: a run directory (its newest valid checkpoint, or `ckpt`: a step, "best"
    (the checkpoint <run>/best.json names) or a checkpoint directory), a checkpoint
    directory, or a `dgan ckpt export` folder.

    Raises FileNotFoundError, InvalidCheckpoint (every checkpoint damaged or refused),
    SampleError (a bad `ckpt`) and ConfigError (a stored config this dgan cannot read).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such run, checkpoint or export directory")
    if (path / EXPORT_WEIGHTS).is_file():
        if ckpt is not None:
            raise SampleError(f"--ckpt {ckpt}: {path} is an export, which holds one checkpoint")
        return _load_export(path)
    graphs = [FILES[f] for f in ("torchscript", "onnx") if (path / FILES[f]).is_file()]
    if graphs:
        raise SampleError(f"{path}: holds {' and '.join(graphs)}, a graph for torch.jit.load / "
                          f"ONNX runtimes; dgan reads a safetensors export ({EXPORT_WEIGHTS}: "
                          "dgan ckpt export --format safetensors)")
    from dgan.export import TRANSLATOR_WEIGHTS

    if (path / TRANSLATOR_WEIGHTS).is_file():
        raise SampleError(f"{path}: an export of a translation run (G translates images); "
                          "use dgan translate / dgan.load_translator")
    chosen, state = _state_of(path, ckpt)
    cfg = config_from_yaml_text(OmegaConf.to_yaml(OmegaConf.create(state["config"])))
    if "G_ema" not in state:
        raise SampleError(f"{chosen}: a task.name={cfg.task.name or cfg.model.name} run "
                          "translates images, it does not generate from noise; use "
                          "dgan translate / dgan.load_translator")
    c_dim = int(state.get("c_dim", 0))
    # checkpoints written before class names were saved: their indices
    names = state.get("class_names") or [str(i) for i in range(c_dim)]
    g, _ = build_models(cfg, c_dim)
    g.load_state_dict(state["G_ema"])
    return TrainedGenerator(g, cfg, names, int(state["step"]), chosen)


def _load_export(path: Path) -> TrainedGenerator:
    from safetensors import safe_open
    from safetensors.torch import load_file

    cfg = config_from_yaml_text((path / "config.yaml").read_text())
    with safe_open(str(path / EXPORT_WEIGHTS), framework="pt") as f:
        meta = f.metadata() or {}
    c_dim = int(meta.get("c_dim", 0))
    classes = path / EXPORT_CLASSES
    names = json.loads(classes.read_text()) if classes.is_file() else [str(i) for i in range(c_dim)]
    g, _ = build_models(cfg, c_dim)
    g.load_state_dict(load_file(str(path / EXPORT_WEIGHTS)))
    return TrainedGenerator(g, cfg, names, int(meta.get("step", 0)), path)


def parse_seeds(text: str) -> list[int]:
    """'0-99,200' -> [0, 1, ..., 99, 200]: comma-separated seeds and inclusive ranges."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not (lo.isdigit() and (hi.isdigit() if dash else True)) or (dash and int(hi) < int(lo)):
            raise SampleError(f"--seeds {text}: expected seeds and ranges like 0-99,200 "
                              f"(non-negative, ranges low-high), not {part!r}")
        seeds += range(int(lo), int(hi) + 1) if dash else [int(lo)]
    if len(set(seeds)) != len(seeds):
        raise SampleError(f"--seeds {text}: a seed is given twice")
    return seeds


def _inputs(g: nn.Module, seeds: Sequence[int], class_idx: Optional[int | str]
            ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """z [N, z_dim] and one-hot c [N, c_dim] (None: unconditional), row i from seeds[i]'s own
    generator: z first, then (without class_idx) a uniformly drawn class."""
    c_dim = int(getattr(g, "c_dim", 0))
    if not seeds or min(seeds) < 0:
        raise SampleError(f"seeds {', '.join(map(str, seeds)) or '(none)'}: expected one or "
                          "more seeds >= 0")
    if class_idx is not None:
        if isinstance(g, TrainedGenerator):
            class_idx = g.class_index(class_idx)
        elif not (isinstance(class_idx, int) and 0 <= class_idx < c_dim):
            raise SampleError(f"class {class_idx!r}: expected an index 0..{c_dim - 1}"
                              if c_dim else f"class {class_idx!r}: G is unconditional")
    zs, classes = [], []
    for seed in seeds:
        gen = torch.Generator().manual_seed(seed)
        zs.append(torch.randn(1, g.z_dim, generator=gen))
        if c_dim:
            classes.append(class_idx if class_idx is not None else
                           int(torch.randint(0, c_dim, (1,), generator=gen)))
    z = torch.cat(zs)
    c = (torch.nn.functional.one_hot(torch.tensor(classes, dtype=torch.long), c_dim).float()
         if c_dim else None)
    return z, c


def _style_options(net: nn.Module, truncation_psi: float, noise_mode: Optional[str]
                   ) -> dict[str, Any]:
    """G's keyword arguments for truncation and noise; refused for a model without them."""
    if not hasattr(net, "mapping"):  # DCGAN: no mapping network, no noise inputs
        if truncation_psi != 1:
            raise SampleError(f"truncation psi {truncation_psi}: only StyleGAN2 generators "
                              "have truncation (this one is a DCGAN)")
        if noise_mode is not None:
            raise SampleError(f"noise mode {noise_mode!r}: only StyleGAN2 generators have noise "
                              "inputs (this one is a DCGAN)")
        return {}
    mode = noise_mode or "const"
    if mode not in NOISE_MODES:
        raise SampleError(f"noise mode {mode!r}: expected one of {', '.join(NOISE_MODES)}")
    return {"truncation_psi": float(truncation_psi), "noise_mode": mode}


def _noise_seed(seed: int) -> int:
    """The RNG seed of seed's random noise: not `seed` itself, whose stream gave its z."""
    return int.from_bytes(hashlib.sha256(f"dgan noise {seed}".encode()).digest()[:8]) >> 1


def _run_each(fn: Callable[..., torch.Tensor], rows: Sequence[Optional[torch.Tensor]],
              seeds: Sequence[int], device: torch.device) -> torch.Tensor:
    """fn(row i's inputs) for every i on its own, with torch's RNG (StyleGAN2's random noise)
    seeded from seeds[i] and the caller's RNG state put back afterwards. One image per call:
    a batch would make an image's bits depend on its batch (kernels choose by batch size)."""
    cuda = [device.index or 0] if device.type == "cuda" else []
    out = []
    with torch.random.fork_rng(devices=cuda):
        for i, seed in enumerate(seeds):
            torch.manual_seed(_noise_seed(seed))
            out.append(fn(*(r[i:i + 1].to(device) if r is not None else None for r in rows)))
    return torch.cat(out).float()


@torch.no_grad()
def generate(g: nn.Module, seeds: Iterable[int], class_idx: Optional[int | str] = None,
             truncation_psi: float = 1.0, noise_mode: Optional[str] = None) -> torch.Tensor:
    """Images [len(seeds), C, H, W], float32 in [-1, 1] on G's device; `dgan.images.to_uint8`
    makes uint8 [N, H, W, C] of them.

    g: a `TrainedGenerator` (class names allowed) or a bare generator module.
    class_idx: the class of every image (name or index); None: each seed draws its own.
    truncation_psi, noise_mode ('const' (default), 'random', 'none'): StyleGAN2 only.
    """
    seeds = list(seeds)
    net = g.net if isinstance(g, TrainedGenerator) else g
    kw = _style_options(net, truncation_psi, noise_mode)
    z, c = _inputs(g, seeds, class_idx)
    device = next(net.parameters()).device
    return _run_each(lambda zi, ci: net(zi, ci, **kw), (z, c), seeds, device)


def _slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of Gaussian latents (rows): keeps their typical norm."""
    cos = (a * b).sum(1, keepdim=True) / (a.norm(dim=1, keepdim=True) * b.norm(dim=1, keepdim=True))
    omega = torch.arccos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


@torch.no_grad()
def interpolate(g: nn.Module, seeds: Sequence[int], frames: int = 8,
                class_idx: Optional[int | str] = None, truncation_psi: float = 1.0,
                noise_mode: Optional[str] = None) -> torch.Tensor:
    """Images [(len(seeds) - 1) * frames + 1, C, H, W] walking from each seed to the next
    (`frames` steps per pair, the seeds' own images at both ends): StyleGAN2 linearly in W,
    DCGAN spherically in z (classes linearly). Random noise is seeds[0]'s in every frame."""
    seeds = list(seeds)
    if len(seeds) < 2 or frames < 1:
        raise SampleError(f"interpolation needs two or more seeds and frames >= 1 (got seeds "
                          f"{','.join(map(str, seeds))}, frames {frames})")
    net = g.net if isinstance(g, TrainedGenerator) else g
    kw = _style_options(net, truncation_psi, noise_mode)
    z, c = _inputs(g, seeds, class_idx)
    t = torch.arange(frames, dtype=torch.float32)[:, None] / frames
    device = next(net.parameters()).device
    if kw:  # StyleGAN2: w of each seed (truncated), then lerp
        ws = net.mapping(z.to(device), None if c is None else c.to(device), kw["truncation_psi"])
        path = [ws[i].lerp(ws[i + 1], t[:, :, None].to(device)) for i in range(len(seeds) - 1)]
        path = torch.cat(path + [ws[-1:]])
        return _run_each(lambda w: net.synthesis(w, noise_mode=kw["noise_mode"]), (path,),
                         [seeds[0]] * len(path), device)
    zs = torch.cat([_slerp(z[i:i + 1], z[i + 1:i + 2], t) for i in range(len(seeds) - 1)]
                   + [z[-1:]])
    cs = None if c is None else torch.cat(
        [c[i].lerp(c[i + 1], t) for i in range(len(seeds) - 1)] + [c[-1:]])
    return _run_each(lambda zi, ci: net(zi, ci), (zs, cs), [seeds[0]] * len(zs), device)


def write_samples(g: TrainedGenerator, seeds: Sequence[int], out: str, grid: bool = False,
                  **kw: Any) -> list[str]:
    """Write one PNG per seed (`seed000005.png` ...) and optionally `grid.png` into `out`;
    `kw` as for `generate`."""
    images = generate(g, seeds, **kw)
    os.makedirs(out, exist_ok=True)
    paths = []
    for seed, tile in zip(seeds, to_uint8(images)):
        path = os.path.join(out, f"seed{seed:06d}.png")
        save_png(tile, path)
        paths.append(path)
    if grid:
        save_png(make_grid(images), os.path.join(out, "grid.png"))
    return paths


VIDEO_INSTALL = "pip install 'dgan[video]'"


def video_encoder() -> Optional[str]:
    """The codec `write_video` uses (H.264, else MPEG-4 part 2), or None when PyAV (the
    `video` extra) is not installed."""
    try:
        import av
    except ImportError:
        return None
    for codec in ("libx264", "mpeg4"):
        try:
            av.codec.Codec(codec, "w")
            return codec
        except Exception:  # av.codec.codec.UnknownCodecError: this FFmpeg build lacks it
            continue
    return None


def write_video(images: torch.Tensor, path: str, fps: int = 24, min_size: int = 256) -> str:
    """Write images [T, C, H, W] in [-1, 1] as an MP4 (yuv420p, plays everywhere); small
    images are enlarged by a whole factor (nearest) to at least `min_size` pixels, sides
    even as yuv420p needs. Raises SampleError when no encoder is installed."""
    codec = video_encoder()
    if codec is None:
        raise SampleError(f"a video needs an encoder: {VIDEO_INSTALL}")
    import av

    frames = np.asarray(to_uint8(images))  # [T, H, W, C] uint8
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    factor = max(1, -(-min_size // max(frames.shape[1:3])))
    frames = frames.repeat(factor, 1).repeat(factor, 2)
    h, w = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
    frames = np.ascontiguousarray(frames[:, :h, :w])
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush
            container.mux(packet)
    return path


def write_interpolation(g: TrainedGenerator, seeds: Sequence[int], out: str, frames: int = 8,
                        video: Optional[bool] = None, fps: int = 24, **kw: Any) -> list[str]:
    """Write `interpolate`'s frames as one row, `out/interpolation.png`, and as a video,
    `out/interpolation.mp4`: video=None writes it when an encoder is installed, True
    requires one (SampleError naming the install command), False never. Returns the paths
    written."""
    if video and video_encoder() is None:
        raise SampleError(f"--video needs an encoder: {VIDEO_INSTALL}")
    images = interpolate(g, seeds, frames, **kw)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "interpolation.png")
    save_png(make_grid(images, cols=len(images)), path)
    paths = [path]
    if video is not False and video_encoder() is not None:
        paths.append(write_video(images, os.path.join(out, "interpolation.mp4"), fps))
    return paths
