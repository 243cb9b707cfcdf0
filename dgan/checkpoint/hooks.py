"""How the trainer gets a network's weights and optimizer state from a backend, and back.

The default (DDP, plain modules) goes through `torch.distributed.checkpoint.state_dict`
(`get_state_dict` / `set_state_dict`): parameter-name keyed state that DCP can reshard. A
backend that owns its state differently (DeepSpeed engines with ZeRO-partitioned
optimizers) plugs in by defining these methods, which are used instead when present:

    backend.checkpoint_state(name) -> (model_state, optim_state)
        nested dicts of tensors and plain values for optimizer group `name` (its one
        network, backend.nets[backend.groups[name][0]]), identical on
        every rank or DTensor/ShardedTensor shards that DCP can reshard
    backend.load_checkpoint_state(name, model_state, optim_state) -> None
    backend.check_resume(meta) -> None
        raise ValueError with what to do when the checkpoint (its meta.json: world_size,
        backend, ...) cannot be loaded by this backend, e.g. a ZeRO checkpoint written
        by another world size
    backend.save_native_checkpoint(directory) -> None
    backend.load_native_checkpoint(directory, meta) -> None
        state only the backend's own format can hold (DeepSpeed: each engine's
        `save_checkpoint(directory / "G", tag=...)`, every rank writing its ZeRO
        partition). Called on every rank; `directory` is `<checkpoint>/native/`, inside
        the atomic commit and the size-checked file list. Such a backend returns the
        full weights from `checkpoint_state` (so sampling and export work without it)
        and may return an empty optimizer state there.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict


def _hook(backend: Any, method: str) -> Optional[Callable[..., Any]]:
    """The backend's own `method`, else dgan's implementation for its kind, else None."""
    own = getattr(backend, method, None)
    if own is not None:
        return own
    if getattr(backend, "name", None) == "deepspeed":
        from dgan.checkpoint import deepspeed

        return functools.partial(getattr(deepspeed, method), backend)
    return None


def network_state(backend: Any, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    hook = _hook(backend, "checkpoint_state")
    if hook is not None:
        return hook(name)
    return get_state_dict(_network(backend, name), backend.opt[name])


def load_network_state(backend: Any, name: str, model_state: dict[str, Any],
                       optim_state: dict[str, Any]) -> None:
    hook = _hook(backend, "load_checkpoint_state")
    if hook is not None:
        hook(name, model_state, optim_state)
        return
    net = _network(backend, name)
    _upgrade_scalar_params(net, optim_state)
    set_state_dict(net, backend.opt[name], model_state_dict=model_state,
                   optim_state_dict=optim_state)


def _network(backend: Any, group: str) -> Any:
    """The one network of optimizer group `group` (see Backend.prepare)."""
    (name,) = backend.groups[group]
    return backend.nets[name]


def _upgrade_scalar_params(net: Any, optim_state: dict[str, Any]) -> None:
    """Optimizer state saved while a one-element parameter was 0-dim (StyleGAN2's noise
    strengths; the module's own load hook reshapes the weight) gets the parameter's shape,
    so that a run checkpointed before that change resumes."""
    state = optim_state.get("state", {})
    for fqn, p in net.named_parameters():
        per_param = state.get(fqn)
        if p.shape != (1,) or not isinstance(per_param, dict):
            continue
        for key, v in per_param.items():
            if key != "step" and isinstance(v, torch.Tensor) and v.ndim == 0:
                per_param[key] = v.reshape(1)


def check_resume(backend: Any, meta: dict[str, Any]) -> None:
    hook = _hook(backend, "check_resume")
    if hook is not None:
        hook(meta)
        return
    saved = meta.get("backend", backend.name)
    if saved != backend.name:
        raise ValueError(f"checkpoint written by backend {saved!r}, this run uses "
                         f"{backend.name!r}; resume with backend.name={saved}")


def native_writer(backend: Any) -> Optional[Callable[[Path], None]]:
    """The backend's `save_native_checkpoint`, or None when it keeps no native state."""
    return _hook(backend, "save_native_checkpoint")


def load_native(backend: Any, directory: Path, meta: dict[str, Any]) -> None:
    hook = _hook(backend, "load_native_checkpoint")
    if hook is None:
        return
    if not directory.is_dir():
        raise ValueError(f"{directory.parent} has no {directory.name}/ state for backend "
                         f"{backend.name!r}; it was written without it")
    hook(directory, meta)


def load_backend_state(backend: Any, state: dict[str, Any]) -> None:
    """`backend.load_state_dict`, except for DeepSpeed, whose refusal of partitioned
    single-file checkpoints predates native engine checkpoints (`check_resume` decides)."""
    if _hook(backend, "load_native_checkpoint") is None:
        backend.load_state_dict(state)
