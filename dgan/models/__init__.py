"""Model construction from the config."""

from __future__ import annotations

from omegaconf import DictConfig
from torch import nn


def build_models(cfg: DictConfig, c_dim: int = 0) -> tuple[nn.Module, nn.Module]:
    """(G, D) for `cfg.model` at `cfg.data.resolution` and `cfg.data.channels`.

    c_dim: number of classes of a class-conditional model (0: unconditional).
    """
    if cfg.model.name == "dcgan":
        from dgan.models import dcgan

        g = dcgan.Generator(cfg.model.z_dim, cfg.data.resolution, cfg.data.channels,
                            cfg.model.g_width, c_dim=c_dim)
        d = dcgan.Discriminator(cfg.data.resolution, cfg.data.channels, cfg.model.d_width,
                                c_dim=c_dim)
        return g, d
    if cfg.model.name == "stylegan2":
        import torch

        from dgan.models import stylegan2

        m = cfg.model
        last = m.channels_last and torch.cuda.is_available()
        g = stylegan2.Generator(z_dim=m.z_dim, c_dim=c_dim, w_dim=m.w_dim,
                                img_resolution=cfg.data.resolution,
                                img_channels=cfg.data.channels, channel_base=m.channel_base,
                                channel_max=m.channel_max, mapping_layers=m.mapping_layers,
                                channels_last=last)
        d = stylegan2.Discriminator(c_dim=c_dim, img_resolution=cfg.data.resolution,
                                    img_channels=cfg.data.channels, channel_base=m.channel_base,
                                    channel_max=m.channel_max, channels_last=last)
        return g, d
    raise ValueError(f"unknown model.name {cfg.model.name!r}")
