"""Distributed backends behind one interface (`Backend`): `ddp` and `deepspeed`."""

from __future__ import annotations

import os

from omegaconf import DictConfig

from dgan.engine.backends.base import Backend, check_world_size, parameter_digest

__all__ = ["Backend", "build_backend", "parameter_digest"]


def build_backend(cfg: DictConfig) -> Backend:
    """The backend named by `backend.name`, with its process group up, for this process."""
    b, t = cfg.backend, cfg.train
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        raise ValueError(
            "this process was started by an accelerate config with distributed_type "
            "DEEPSPEED, which makes accelerate own one DeepSpeed engine; dgan runs two "
            "itself. Launch with a MULTI_GPU config (launch/8gpu-zero2.yaml) and "
            "backend.name=deepspeed")
    backend: Backend
    if b.name == "ddp":
        from dgan.engine.backends.ddp import DDPBackend

        backend = DDPBackend(t.precision, t.grad_accum)
    elif b.name == "deepspeed":
        from dgan.engine.backends.deepspeed import DeepSpeedBackend

        backend = DeepSpeedBackend(
            t.precision, t.grad_accum, zero_stage=b.zero_stage, micro_batch=t.batch_size,
            config_paths={"G": b.deepspeed_config_g, "D": b.deepspeed_config_d},
            trust_files=b.trust_deepspeed_files)
    else:
        raise ValueError(f"unknown backend.name {b.name!r}")
    try:
        check_world_size(backend.world_size, b.expect_world_size)
    except ValueError:
        backend.close(wait=False)  # the process group is up: leave without an abort
        raise
    return backend
