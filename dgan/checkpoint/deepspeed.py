"""DeepSpeed engines in dgan checkpoints (the hooks of hooks.py for backend.name=deepspeed).

The weights of G and D go into the DCP part like under DDP (ZeRO 0-2 keep full weights on
every rank), so sampling, export and a resume on DDP need nothing DeepSpeed-specific. The
optimizer state lives in the engines (partitioned across ranks from ZeRO-1 on) and is
saved by each engine's own `save_checkpoint` into `<checkpoint>/native/{G,D}/engine/`:
every rank writes its partition, inside dgan's atomic commit and size-checked file list.

Limits: DeepSpeed reads its files with `torch.load(weights_only=False)`, which runs any code
a crafted file holds, so `check_resume` refuses a checkpoint with such files unless
`backend.trust_deepspeed_files=true` says that it comes from a trusted run (this run's own
checkpoints, in a run.dir only the user writes to). A ZeRO-1/2 checkpoint resumes on the
world size that wrote it; on another one `check_resume` refuses and says how to convert it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dgan.checkpoint.layout import InvalidCheckpoint

TAG = "engine"
NATIVE_PREFIX = "native/"
UNTRUSTED = (
    "it holds DeepSpeed's own engine files (native/), which DeepSpeed loads with "
    "torch.load(weights_only=False): a crafted file runs code on this machine. If the "
    "checkpoint was written by a run you trust (this run's own, in a run.dir only you write "
    "to), set backend.trust_deepspeed_files=true; otherwise start a new run.dir")


def checkpoint_state(backend: Any, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(full weights of network `name`, {}): its optimizer state is in the native part."""
    return backend.engines[name].module.state_dict(), {}


def load_checkpoint_state(backend: Any, name: str, model_state: dict[str, Any],
                          optim_state: dict[str, Any]) -> None:
    backend.engines[name].module.load_state_dict(model_state)


def save_native_checkpoint(backend: Any, directory: Path) -> None:
    """Every rank: each engine writes its module and its optimizer partition."""
    for name, engine in backend.engines.items():
        engine.save_checkpoint(str(directory / name), tag=TAG, save_latest=False)


def load_native_checkpoint(backend: Any, directory: Path, meta: dict[str, Any]) -> None:
    for name, engine in backend.engines.items():
        path, _ = engine.load_checkpoint(str(directory / name), tag=TAG,
                                         load_module_strict=True, load_optimizer_states=True,
                                         load_lr_scheduler_states=False)
        if path is None:
            raise ValueError(f"DeepSpeed found no engine checkpoint of {name} in {directory}")


def check_resume(backend: Any, meta: dict[str, Any]) -> None:
    """Refuse what the engines cannot load, saying what to do instead."""
    saved_backend = meta.get("backend")
    if saved_backend != backend.name:
        raise ValueError(
            f"the checkpoint was written by backend {saved_backend!r}: its optimizer state "
            f"is not in DeepSpeed's format; resume with backend.name={saved_backend}")
    saved_stage = int(meta["state"]["backend"].get("zero_stage", 0))
    if saved_stage != backend.zero_stage:
        raise ValueError(f"the checkpoint was written with backend.zero_stage={saved_stage}; "
                         f"resume with backend.zero_stage={saved_stage}")
    world = int(meta["world_size"])
    if world != backend.world_size and saved_stage >= 1:
        raise ValueError(
            f"the checkpoint's ZeRO-{saved_stage} optimizer state is partitioned over {world} "
            f"process(es) and this run has {backend.world_size}: resume on {world} "
            "process(es). Another world size needs DeepSpeed's universal checkpoint format "
            "(`python -m deepspeed.checkpoint.ds_to_universal --inject_missing_state "
            "--input_folder CKPT/native/G/engine --output_folder OUT`, and D), which dgan "
            "does not load yet; or train with backend.zero_stage=0 or backend.name=ddp, "
            "whose checkpoints reshard.")
    if not getattr(backend, "trust_files", False) and any(
            name.startswith(NATIVE_PREFIX) for name in meta.get("files", {})):
        raise InvalidCheckpoint(UNTRUSTED)
