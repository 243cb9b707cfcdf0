"""Model construction from the config."""

from __future__ import annotations

from omegaconf import DictConfig
from torch import nn


def build_models(cfg: DictConfig) -> tuple[nn.Module, nn.Module]:
    """(G, D) for `cfg.model` at `cfg.data.resolution` and `cfg.data.channels`."""
    if cfg.model.name == "dcgan":
        from dgan.models import dcgan

        g = dcgan.Generator(cfg.model.z_dim, cfg.data.resolution, cfg.data.channels,
                            cfg.model.g_width)
        d = dcgan.Discriminator(cfg.data.resolution, cfg.data.channels, cfg.model.d_width)
        return g, d
    raise ValueError(f"unknown model.name {cfg.model.name!r}")
