"""Distributed backends behind one interface (`Backend`): `ddp` and `deepspeed`."""

from __future__ import annotations

from omegaconf import DictConfig

from dgan.engine.backends.base import Backend, check_world_size, parameter_digest

__all__ = ["Backend", "build_backend", "parameter_digest"]


def build_backend(cfg: DictConfig) -> Backend:
    """The backend named by `backend.name`, with its process group up, for this process."""
    b, t = cfg.backend, cfg.train
    backend: Backend
    if b.name == "ddp":
        from dgan.engine.backends.ddp import DDPBackend

        backend = DDPBackend(t.precision, t.grad_accum)
    elif b.name == "deepspeed":
        from dgan.engine.backends.deepspeed import DeepSpeedBackend

        backend = DeepSpeedBackend(
            t.precision, t.grad_accum, zero_stage=b.zero_stage, micro_batch=t.batch_size,
            config_paths={"G": b.deepspeed_config_g, "D": b.deepspeed_config_d})
    else:
        raise ValueError(f"unknown backend.name {b.name!r}")
    check_world_size(backend.world_size, b.expect_world_size)
    return backend
