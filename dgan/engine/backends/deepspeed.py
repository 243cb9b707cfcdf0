"""`deepspeed`: one DeepSpeed engine per optimizer group (G, D), ZeRO stage 0, 1 or 2.

Each engine is made by `deepspeed.initialize` with its own config: the JSON file named for
its group (`backend.deepspeed_config_g` / `_d` for groups G / D, see launch/) when given,
else one generated from the YAML config. The keys that must agree with the trainer (micro-batch size, accumulation
steps, ZeRO stage; no fp16/bf16 sections) are set or checked here. The process group is initialised
from the launcher's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), so
`accelerate launch`, `torchrun`, `deepspeed` and `srun` all work: NCCL on GPUs, gloo on CPUs.

GAN semantics: the trained network runs through its engine; the frozen one runs as
`engine.module` (calling the frozen engine would register a forward that its
ZeRO bookkeeping expects a backward for). Accumulation is DeepSpeed's own: the engine
divides each micro-batch loss by `gradient_accumulation_steps` and reduces gradients at
the boundary; `engine.step()` is called after every micro-batch because it advances the
engine's micro-step counter, and only the boundary call steps the optimizer.

ZeRO-3 partitions D's parameters, so `engine.module` would run G's step on empty
shards; it is refused rather than allowed to train something else than it says.
Precision: fp32 and bf16 keep fp32 weights and use autocast (bf16 needs no loss
scaling). fp16 is refused (in the config): DeepSpeed's fp16 mode casts the networks to
half precision, which G's BatchNorm under autocast does not accept, and its loss scaler
works only with that mode.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dgan.engine import guard
from dgan.engine.backends.base import Backend

log = logging.getLogger(__name__)
REFUSE_ZERO3 = (
    "backend.zero_stage=3 is not supported: ZeRO-3 partitions D's parameters, and G's step "
    "calls D outside its engine, where the partitions are not gathered. Use "
    "backend.zero_stage=2 (optimizer state and gradients sharded), or backend.name=ddp.")


def init_process_group() -> tuple[int, int, int, torch.device]:
    """(rank, local_rank, world_size, device) from the launcher's environment, with the
    default process group initialised (a one-rank group when there is no launcher)."""
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        if world_size > 1:
            dist.init_process_group(backend, init_method="env://", rank=rank,
                                    world_size=world_size)
        else:
            # DeepSpeed needs a process group and LOCAL_RANK even for one process; without
            # launcher variables it would try MPI discovery instead.
            os.environ.setdefault("LOCAL_RANK", "0")
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return rank, local_rank, world_size, device


def _skip_cpu_shm_kernel() -> None:
    """Keep DeepSpeed from JIT-compiling its shared-memory all-reduce on CPU.

    On first use it compiles a C++ extension (minutes on a busy CPU) under a file lock in
    ~/.cache/torch_extensions; a run killed while compiling leaves the lock behind and every
    later run waits on it forever. gloo does the CPU collectives instead.
    """
    import deepspeed.ops
    from deepspeed.ops.op_builder.cpu.comm import ShareMemCommBuilder

    deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False


def engine_config(path: str | None, *, zero_stage: int, micro_batch: int, grad_accum: int,
                  world_size: int) -> dict[str, Any]:
    """The DeepSpeed config of one engine: the JSON at `path` (or an empty one), with the
    trainer's batch, accumulation and ZeRO stage filled in or checked."""
    config: dict[str, Any] = {}
    if path:
        with open(path) as f:
            config = json.load(f)
    zero = config.setdefault("zero_optimization", {})
    stage = int(zero.setdefault("stage", zero_stage))
    if stage != zero_stage:
        raise ValueError(f"{path} sets zero_optimization.stage={stage} but backend.zero_stage="
                         f"{zero_stage}; make them agree")
    if stage >= 3:
        raise ValueError(REFUSE_ZERO3)
    for key, value in (("train_micro_batch_size_per_gpu", micro_batch),
                       ("gradient_accumulation_steps", grad_accum),
                       ("train_batch_size", micro_batch * grad_accum * world_size)):
        if config.get(key, value) not in (value, "auto"):
            raise ValueError(f"{path} sets {key}={config[key]} but the trainer uses {value} "
                             "(train.batch_size per process x train.grad_accum x processes); "
                             "remove the key or use \"auto\"")
        config[key] = value
    if stage >= 1 and zero.get("compute_grad_norm") is False:
        raise ValueError(f"{path} sets zero_optimization.compute_grad_norm=false, which turns "
                         "off ZeRO's test for non-finite gradients that dgan relies on to skip "
                         "bad steps; remove the key")
    for section in ("fp16", "bf16"):
        if config.get(section, {}).get("enabled", False):
            raise ValueError(f"{path} enables {section}: dgan keeps fp32 weights and autocasts "
                             "as train.precision says; drop the section")
    # The optimizer is dgan's torch.optim.Adam: DeepSpeed's fused Adam kernels do not build
    # on every machine (none on CPU) and the ddp backend uses the same optimizer.
    config["zero_allow_untested_optimizer"] = True
    # DeepSpeed clips gradients to norm 1.0 unless told otherwise; the ddp backend does not
    # clip, and the two must train the same model.
    config.setdefault("gradient_clipping", 0.0)
    config.setdefault("steps_per_print", 2**31 - 1)
    config.setdefault("wall_clock_breakdown", False)
    return config


class DeepSpeedBackend(Backend):
    name = "deepspeed"

    def __init__(self, precision: str = "fp32", grad_accum: int = 1, *, zero_stage: int = 0,
                 micro_batch: int = 1, config_paths: dict[str, str | None] | None = None,
                 trust_files: bool = False) -> None:
        super().__init__(precision, grad_accum)
        if zero_stage >= 3:
            raise ValueError(REFUSE_ZERO3)
        if precision == "fp16":
            raise ValueError("train.precision=fp16 is not supported with backend.name=deepspeed;"
                             " use bf16, or backend.name=ddp for fp16")
        self.rank, self.local_rank, self.world_size, self.device = init_process_group()
        if self.device.type == "cpu":
            _skip_cpu_shm_kernel()
        paths = config_paths or {}
        self.zero_stage = zero_stage
        self.trust_files = trust_files  # backend.trust_deepspeed_files: load native/ on resume
        self.micro_batch_size = micro_batch
        # group -> engine config; the named JSON files are checked now, before any work
        self.configs = {g: self._engine_config(path) for g, path in paths.items()}
        self.current: str | None = None

    def _wrap(self, nets: dict[str, nn.Module]) -> None:
        import deepspeed

        self.engines = {}
        for group, (name,) in self.groups.items():
            config = self.configs.setdefault(group, self._engine_config(None))
            engine, *_ = deepspeed.initialize(model=nets[name], optimizer=self.opt[group],
                                              config=config)
            self.engines[group] = engine
            self.wrapped[name] = engine
            self.nets[name] = engine.module

    def _engine_config(self, path: str | None) -> dict[str, Any]:
        return engine_config(path, zero_stage=self.zero_stage, micro_batch=self.micro_batch_size,
                             grad_accum=self.grad_accum, world_size=self.world_size)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.current = name
        try:
            with super().phase(name):
                yield
        finally:
            self.current = None

    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager:
        engine = self.engines[str(self.current)]
        if engine.is_gradient_accumulation_boundary() != last:
            raise RuntimeError(f"DeepSpeed's accumulation counter of {self.current} disagrees "
                               f"with the trainer (last micro-batch: {last}); every micro-batch "
                               "must call backward exactly once")
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, name: str) -> None:
        engine = self.engines[name]
        engine.backward(self.guarded_loss(loss, name))
        if not engine.is_gradient_accumulation_boundary():
            engine.step()  # counts the micro-batch; the optimizer steps at the boundary only

    def step(self, name: str) -> bool:
        engine = self.engines[name]
        if not engine.is_gradient_accumulation_boundary():
            raise RuntimeError(f"step({name!r}) before the last micro-batch's backward")
        if self.zero_stage >= 1:
            # The ZeRO optimizer tests the global norm of its partitioned gradients and
            # skips a non-finite one itself (compute_grad_norm, see engine_config).
            engine.step()
            return self._applied(name, engine.was_step_applied())
        # Stage 0: the gradients in the module are all-reduced. A skipped step still goes
        # through engine.step() so that the engine zeroes them and counts the step; only
        # the torch optimizer's update is left out.
        applied = guard.grads_finite(engine.module.parameters())
        if applied:
            engine.step()
        else:
            optimizer = engine.optimizer
            optimizer.step = lambda *args, **kwargs: None  # type: ignore[method-assign]
            try:
                engine.step()
            finally:
                del optimizer.step  # the class's own step again
        return self._applied(name, applied)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["zero_stage"] = self.zero_stage
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Refuse what cannot be resumed exactly with single-file checkpoints.

        Under ZeRO-1/2 the optimizer owns fp32 partitions of the weights and the Adam
        state; loading the module's weights would not reach them (the next step would
        write the old weights back), and the file holds rank 0's partition only.
        """
        saved = int(state.get("zero_stage", 0)) if state.get("name") == self.name else 0
        if max(saved, self.zero_stage) >= 1:
            raise ValueError(
                f"cannot resume under DeepSpeed ZeRO-{max(saved, self.zero_stage)}: its optimizer "
                "holds partitioned fp32 weights and Adam state that a single-file checkpoint "
                "does not restore, so the run would silently diverge. Resume with "
                "backend.zero_stage=0 (a stage-0 or ddp checkpoint), or start a new run.dir.")
