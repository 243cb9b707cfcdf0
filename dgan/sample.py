"""Generate images from a run's G_ema: `dgan sample --run RUN_DIR --n N --seed S --out DIR`."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from dgan import checkpoint
from dgan.config import config_from_yaml_text
from dgan.images import make_grid, save_png, to_uint8
from dgan.models import build_models


def load_generator(run_dir: str | os.PathLike) -> tuple[nn.Module, int]:
    """(G_ema in eval mode on the CPU, its step) from the run's newest valid checkpoint."""
    run_dir = Path(run_dir)
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{run_dir}: not a dgan run directory (no config.yaml)")
    cfg = config_from_yaml_text(config_file.read_text())
    found = checkpoint.load_latest(run_dir)
    if found is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint in {checkpoint.checkpoint_dir(run_dir)}")
    _, state = found
    g, _ = build_models(cfg, int(state.get("c_dim", 0)))
    g.load_state_dict(state["G_ema"])
    return g.eval().requires_grad_(False), int(state["step"])


@torch.no_grad()
def generate(g: nn.Module, n: int, seed: int, batch: int = 256) -> torch.Tensor:
    """n images [n, C, H, W] in [-1, 1]; the same (G, n, seed) gives the same images.

    A class-conditional G gets uniformly drawn classes from the same seed. Randomness
    inside G (StyleGAN2's noise inputs) is seeded too, without touching the caller's RNG.
    """
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, g.z_dim, generator=gen)
    c_dim = getattr(g, "c_dim", 0)
    c = (torch.nn.functional.one_hot(torch.randint(0, c_dim, (n,), generator=gen), c_dim).float()
         if c_dim else None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parts = [g(z[i:i + batch], c[i:i + batch] if c is not None else None)
                 for i in range(0, n, batch)]
    return torch.cat(parts).float()


def write_samples(run_dir: str, n: int, seed: int, out: str, grid: bool = False) -> list[str]:
    """Write n PNG files (`000000.png` ...) and optionally `grid.png` into `out`."""
    g, _ = load_generator(run_dir)
    images = generate(g, n, seed)
    os.makedirs(out, exist_ok=True)
    tiles = to_uint8(images)
    paths = []
    for i, tile in enumerate(tiles):
        path = os.path.join(out, f"{i:06d}.png")
        save_png(tile, path)
        paths.append(path)
    if grid:
        save_png(make_grid(images), os.path.join(out, "grid.png"))
    return paths
