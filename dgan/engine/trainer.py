"""The training loop, the same for every task (dgan.tasks) and backend (dgan.engine.backends).

One iteration (`train.steps` of them): the stream's batch (the task's `data_keys`) plus the
inputs the task draws itself (latents, fake labels; seeded by (run.seed, rank, step,
phase), so a resumed run draws what the uninterrupted one would); then each phase due at
this step (`Phase(name, group, interval, fn)`, in the task's order) runs on every
micro-batch and steps its optimizer group; then every EMA the task declares is updated.
A step whose loss or gradient is not finite on any rank is skipped by every rank: no
optimizer update, no EMA update, buffers put back (dgan.engine.guard); the run stops after
train.max_bad_steps of them in a row, and weights that are not finite are never saved.
Each step consumes train.grad_accum micro-batches of train.batch_size per process; the
global batch is batch_size x processes x grad_accum. Checkpoints hold every network,
optimizer group and EMA under its name, and the task's own state under "task".
A task with a `second_source_key` (unpaired translation) also gets a second single-image
stream of data.path_b (seed run.seed + 1); each rank's checkpoint state holds both stream
positions ("data", "data_b") and the task's per-rank state ("task": CycleGAN's pools).
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

from dgan import __version__, checkpoint, runlock
from dgan.checkpoint import best as best_json
from dgan.checkpoint import hooks, init_from, rng
from dgan.config import metric_direction, to_yaml
from dgan.data.stream import DataStream
from dgan.engine import guard
from dgan.engine.backend import build_backend, parameter_digest
from dgan.engine.ema import make_ema, update_ema
from dgan.engine.preempt import REQUEUE_EXIT_CODE, PreemptionFlag, kill_at_step_hook
from dgan.logging import RunLogger, memory_peak, optimizer_lrs
from dgan.tasks import Batch, build_task, one_hot, task_class
from dgan.trackers import check_trackers, flatten

log = logging.getLogger(__name__)


class ResumeMismatch(ValueError):
    """The checkpoint to resume holds another model than the config describes."""


def class_count(cfg: DictConfig, source: Any) -> int:
    """Classes of a conditional model (from the shards' label names); 0 if unconditional."""
    labels = getattr(source, "labels", None)
    if not cfg.model.conditional or not labels:
        return 0
    return len(labels)


def configure_cuda(device: torch.device, tf32: bool) -> None:
    """On CUDA: TF32 tensor cores for the layers that stay fp32 (all of them under
    ``train.precision=fp32``; the mapping network and the image skip path under autocast),
    and cuDNN autotuning, since every step runs the same shapes. No effect elsewhere."""
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True


def linear_decay(optimizers: dict[str, torch.optim.Optimizer], start: int, steps: int
                 ) -> dict[str, Any]:
    """Per optimizer group: the learning rate constant until step `start`, then falling
    linearly to 0 at step `steps` ({} when start is 0)."""
    if not start:
        return {}

    def factor(step: int) -> float:
        return 1.0 - max(0, step - start) / (steps - start)

    return {g: torch.optim.lr_scheduler.LambdaLR(opt, factor) for g, opt in optimizers.items()}


class Trainer:
    def __init__(self, cfg: DictConfig, source: Any, source_b: Any = None,
                 lock_run_dir: bool = False) -> None:
        """`source_b`: data.path_b's source, for a task that reads a second shard set
        (`second_source_key`). `lock_run_dir`: rank 0 takes run.dir's lock (`dgan train`
        does; the caller releases `self.run_lock`), before anything below touches the
        directory."""
        check_trackers(cfg.log.trackers)  # a missing W&B / MLflow package: before any work
        self.cfg = cfg
        self.source = source
        self.second_key = task_class(cfg).second_source_key
        if self.second_key is not None and source_b is None:
            raise ValueError(f"task.name={task_class(cfg).name} reads a second shard set "
                             "(data.path_b): pass its source")
        self.run_dir = str(cfg.run.dir)
        self.backend = build_backend(cfg)
        self.run_lock = (runlock.lock_run_dir(self.run_dir, self.backend, cfg.run.lock_stale_after)
                         if lock_run_dir else None)
        configure_cuda(self.backend.device, cfg.train.tf32)
        self.c_dim = class_count(cfg, source) if task_class(cfg).takes_labels else 0
        self.class_names = list(source.labels) if self.c_dim else []  # saved for sampling
        self.task = build_task(cfg, self.c_dim)
        torch.manual_seed(cfg.run.seed)  # model initialisation: identical on every rank
        nets = self.task.build_networks()
        initial = init_from.initial_weights(cfg)  # None unless init.from starts this run
        if initial is not None:  # before the backend wraps them (DeepSpeed copies weights)
            initial.load(nets)
        self.optimizers = self.task.build_optimizers(nets)
        self.backend.prepare(nets, self.optimizers, self.task.groups())
        b = self.backend
        self.emas = {e: make_ema(b.nets[net]) for e, net in self.task.emas.items()}
        if initial is not None:
            initial.load(self.emas)
        self.initialised_from = initial.summary() if initial is not None else None
        self.task.bind(b, self.emas)
        self.guard = guard.NonFiniteGuard(cfg.train.max_bad_steps)
        # what a skipped step puts back
        self.buffers = guard.BufferSnapshot([*b.nets.values(), *self.task.stateful_modules()])
        self.stream = DataStream(
            source, batch_size=cfg.train.batch_size, resolution=cfg.data.resolution,
            channels=cfg.data.channels, seed=cfg.run.seed, rank=b.rank, world_size=b.world_size,
            workers=cfg.data.workers, shuffle_buffer=cfg.data.shuffle_buffer,
            xflip=cfg.data.xflip, device=b.device, max_member=cfg.data.max_member_mb << 20,
            keys=tuple(k for k in self.task.data_keys if k != "label"), crop=cfg.data.crop)
        # the second shard set (data.path_b): single images, its own seed and position
        self.stream_b: Optional[DataStream] = None
        if self.second_key is not None:
            self.task.second_source = source_b
            self.stream_b = DataStream(
                source_b, batch_size=cfg.train.batch_size, resolution=cfg.data.resolution,
                channels=cfg.data.channels, seed=cfg.run.seed + 1, rank=b.rank,
                world_size=b.world_size, workers=cfg.data.workers,
                shuffle_buffer=cfg.data.shuffle_buffer, xflip=cfg.data.xflip, device=b.device,
                max_member=cfg.data.max_member_mb << 20, crop=cfg.data.crop)
        self.step = 0
        self.images_seen = 0
        self.augment: dict[str, Any] = {}  # augmentation state (ADA p), filled by augmenters
        # name -> torch LR scheduler, saved when present; stepped once per training step
        self.lr_schedules: dict[str, Any] = linear_decay(self.optimizers, cfg.optim.lr_decay_from,
                                                         cfg.train.steps)
        # checkpoint.keep_best: the best.json record of the best evaluation so far (None: none
        # yet); saved in every checkpoint, so a resume continues from the exact value
        self.keep_best = str(cfg.checkpoint.keep_best)
        self.best: Optional[dict[str, Any]] = None
        self._best_missing_said = False
        c = cfg.checkpoint
        self.checkpointer = checkpoint.Checkpointer(
            self.run_dir, rank=b.rank, world_size=b.world_size, keep=c.keep,
            milestone=c.milestone, async_save=c.async_save)

    # -- state --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything shared by all ranks: nested dicts of tensors and plain values."""
        state: dict[str, Any] = {}
        optims = {}
        for group, (name,) in self.backend.groups.items():
            state[name], optims[f"opt_{group}"] = hooks.network_state(self.backend, group)
        state.update({e: get_model_state_dict(net) for e, net in self.emas.items()})
        state.update(optims)
        return {
            **state,
            "lr_schedules": {k: s.state_dict() for k, s in self.lr_schedules.items()},
            "backend": self.backend.state_dict(),
            "augment": dict(self.augment),
            "guard": self.guard.state_dict(),
            "task": self.task.state_dict(),
            "best": dict(self.best) if self.best is not None else None,
            "step": self.step,
            "images_seen": self.images_seen,
            "world_size": self.backend.world_size,
            "backend_name": self.backend.name,
            "c_dim": self.c_dim,
            "class_names": self.class_names,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }

    def _buffer_owners(self) -> dict[str, torch.nn.Module]:
        return {**self.backend.nets, **self.emas}

    def rank_state_dict(self) -> dict[str, Any]:
        """This rank's own state: RNG states, data-stream positions (data.path's under
        "data", data.path_b's under "data_b"), the networks' buffers (BatchNorm statistics are
        updated from each rank's own batch, so they differ) and the task's own (its pools)."""
        buffers = {name: dict(net.named_buffers()) for name, net in self._buffer_owners().items()}
        state = {"rank": self.backend.rank, "rng": rng.capture(),
                 "data": self.stream.state_dict(), "buffers": buffers}
        task_state = self.task.rank_state_dict()
        if task_state:  # tasks without per-rank state keep the rank file as it was
            state["task"] = task_state
        if self.stream_b is not None:
            state["data_b"] = self.stream_b.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any], rank_state: Optional[dict[str, Any]] = None,
                        rank0_state: Optional[dict[str, Any]] = None) -> None:
        """Load shared `state`, and this rank's `rank_state` (None after a world-size change:
        then the data stream follows its layout-change rule from `rank0_state`)."""
        diff = checkpoint.model_key_differences(state["config"],
                                                OmegaConf.to_container(self.cfg, resolve=True))
        saved_c_dim = int(state.get("c_dim", 0))
        if saved_c_dim != self.c_dim:  # from data.path's label names, not a config key
            diff.append(f"classes (c_dim): checkpoint {saved_c_dim} vs now {self.c_dim}")
        if diff:
            raise ResumeMismatch(
                "the checkpoint to resume holds another model than the config: " +
                "; ".join(diff) + ". Set these back to the checkpoint's values to continue "
                "it, or train the new model with resume=never and a new run.dir")
        hooks.load_backend_state(self.backend, state["backend"])  # first: it may refuse
        for group, (name,) in self.backend.groups.items():
            hooks.load_network_state(self.backend, group, state[name], state[f"opt_{group}"])
        for e, net in self.emas.items():
            set_model_state_dict(net, state[e])
        for k, s in self.lr_schedules.items():
            s.load_state_dict(state["lr_schedules"][k])
            if isinstance(s, torch.optim.lr_scheduler.LambdaLR):
                # optim.lr_decay_from: the lr is a function of the step under the current
                # config (a raised train.steps stretches the decay), not the saved lr
                for group, base, factor in zip(s.optimizer.param_groups, s.base_lrs,
                                               s.lr_lambdas):
                    group["lr"] = base * factor(s.last_epoch)
        self.augment = dict(state.get("augment", {}))
        self.guard.load_state_dict(state.get("guard", {}))
        # "recipe": StyleGAN2's state in checkpoints written before tasks existed
        self.task.load_state_dict(state.get("task", state.get("recipe", {})))
        self.step = int(state["step"])
        self.images_seen = int(state["images_seen"])
        saved_best = state.get("best")
        self.best = (dict(saved_best) if self.keep_best and isinstance(saved_best, dict)
                     and saved_best.get("metric") == self.keep_best else None)
        if rank_state is not None:
            rng.restore(rank_state["rng"])
        own = rank_state or rank0_state
        if own is not None:
            self.stream.load_state_dict(own["data"])
            if self.stream_b is not None:
                if "data_b" not in own:
                    raise ResumeMismatch("the checkpoint to resume holds no position of a "
                                         "second data stream (data.path_b); resume it with "
                                         "the task it was written by")
                self.stream_b.load_state_dict(own["data_b"])
            self.task.load_rank_state_dict(own.get("task") or {})
            with torch.no_grad():
                for name, net in self._buffer_owners().items():
                    for key, buf in net.named_buffers():
                        buf.copy_(own["buffers"][name][key])

    def _check_resume(self, meta: dict[str, Any]) -> None:
        """The backend's refusals (another backend, ZeRO stage or world size) as ResumeMismatch,
        which the CLI prints as one line; a refused checkpoint stays InvalidCheckpoint."""
        try:
            hooks.check_resume(self.backend, meta)
        except checkpoint.InvalidCheckpoint:
            raise
        except ValueError as e:
            raise ResumeMismatch(str(e)) from None

    def resume(self) -> Optional[str]:
        """Load the checkpoint `resume` points at (auto | never | PATH); its path, or None."""
        found = self.checkpointer.load(str(self.cfg.resume), check=self._check_resume)
        if found is None:
            return None
        path, meta, (state, own, first) = found
        # native first: DeepSpeed's engine load also sets the module from rank 0's copy,
        # and load_state_dict must have the last word on each rank's own buffers
        hooks.load_native(self.backend, path / checkpoint.NATIVE, meta)
        self.load_state_dict(state, own, first)
        self._resume_best(path)
        saved_world = int(meta["world_size"])
        if saved_world != self.backend.world_size:
            log.warning("checkpoint %s was written by %d process(es), resuming on %d: weights and "
                        "optimizer state are resharded, images seen continue at %d, and the data "
                        "stream starts a new shuffled order (docs/checkpointing.md)",
                        path, saved_world, self.backend.world_size, self.images_seen)
        return str(path)

    def _resume_best(self, path: Any) -> None:
        """After loading a checkpoint: with keep_best and no record in it (one written before
        keep_best was set), adopt <run.dir>/best.json when it is of the same metric and not
        newer than the resumed step; then make best.json agree with the record (rank 0)."""
        if not self.keep_best or self.best is not None and not self.backend.is_main:
            return
        on_disk: Optional[dict[str, Any]] = None
        if self.backend.is_main:
            try:
                on_disk = best_json.read_best(self.run_dir)
            except best_json.BestError:
                pass
        if self.best is None:  # the same on every rank (from the checkpoint's shared state)
            if (on_disk is not None and on_disk["metric"] == self.keep_best
                    and int(on_disk["step"]) <= self.step):
                self.best = dict(on_disk)
            group = self.checkpointer.group
            if group is not None:  # rank 0 read the file: it tells the others
                box = [self.best]
                torch.distributed.broadcast_object_list(box, src=0, group=group)
                self.best = box[0]
        if (self.backend.is_main and self.best is not None and on_disk != self.best
                and (checkpoint.checkpoint_dir(self.run_dir) / self.best["checkpoint"]).is_dir()):
            best_json.write_best(self.run_dir, self.best)

    def _update_best(self, results: dict[str, float], logger: RunLogger) -> bool:
        """checkpoint.keep_best: whether this step's evaluation `results` (the same on every
        rank) beat the best so far; if so the record names this step's checkpoint."""
        metric = self.keep_best
        if not metric:
            return False
        if metric not in results:
            if not self._best_missing_said:
                self._best_missing_said = True
                logger.message(f"dgan: step {self.step}: checkpoint.keep_best={metric}: the "
                               f"evaluation gave no {metric} (it gave "
                               f"{', '.join(sorted(results)) or 'nothing'}); no best kept")
            return False
        value = float(results[metric])
        if not best_json.is_better(value, self.best, metric_direction(metric)):
            return False
        was = f" (was {self.best['value']:.6g} at step {self.best['step']})" if self.best else ""
        self.best = best_json.make_record(metric, value, self.step)
        logger.message(f"dgan: step {self.step}: new best {metric} {value:.6g}{was}; keeping "
                       f"{self.best['checkpoint']} ({best_json.BEST})")
        return True

    # -- one iteration ------------------------------------------------------------------
    def next_batch(self) -> Batch:
        """This rank's batch of one step from the stream (grad_accum micro-batches,
        concatenated): "image" [A * B, C, R, R] in [-1, 1] (a multi-image task: one such
        tensor per image key of its `data_keys`, e.g. "a" and "b"; a task with a
        `second_source_key`: data.path_b's images under it too) and "label" [A * B, c_dim]
        one-hot (None when unconditional)."""
        batches = [next(self.stream) for _ in range(self.cfg.train.grad_accum)]
        if isinstance(batches[0], dict):  # a multi-image task's keys ("a", "b"), see DataStream
            images = {k: torch.cat([x[k] for x in batches]) for k in batches[0] if k != "label"}
            labels = [x["label"] for x in batches]
        else:
            images = {"image": torch.cat([x for x, _ in batches])}
            labels = [y for _, y in batches]
        if self.stream_b is not None:  # an unpaired task's second shard set (data.path_b)
            assert self.second_key is not None
            images[self.second_key] = torch.cat(
                [next(self.stream_b)[0] for _ in range(self.cfg.train.grad_accum)])
        if not self.c_dim:
            return {**images, "label": None}
        device = next(iter(images.values())).device
        return {**images, "label": one_hot(torch.cat(labels), self.c_dim).to(device)}

    def train_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Every phase of the task due at this step, on this rank's share of the global batch.

        `batch`: the stream's tensors of A = train.grad_accum micro-batches of B =
        train.batch_size each, concatenated; the task adds what it draws itself (inputs
        already in `batch` are used as given: tests feed fixed latents this way). Every
        tensor is split into A micro-batches. Returns metrics averaged over micro-batches.
        """
        b, task = self.backend, self.task
        b.skipped.clear()
        task.draw(self.step, batch)
        task.begin_step(self.step)
        accum = self.cfg.train.grad_accum
        parts = {k: v.chunk(accum) if v is not None else [None] * accum for k, v in batch.items()}
        micro = [{k: v[i] for k, v in parts.items()} for i in range(accum)]
        stats: dict[str, torch.Tensor] = {}
        for phase in task.phases():
            if not phase.due(self.step):
                continue
            with b.phase(phase.group):
                for i, mb in enumerate(micro):
                    with b.micro_batch(last=i == accum - 1):
                        loss, phase_stats = phase.fn(mb)
                        b.backward(loss, phase.group)
                    for k, v in phase_stats.items():
                        stats[k] = stats.get(k, 0) + v / accum
                b.step(phase.group)
        if not b.skipped:  # a phase with a non-finite gradient skips the EMA updates too
            global_batch = self.cfg.train.batch_size * b.world_size * accum
            beta = task.ema_beta(self.step, global_batch)
            for e, net in task.emas.items():
                update_ema(self.emas[e], b.nets[net], beta)
        return task.end_step(self.step, stats, bool(b.skipped))

    def evaluate(self) -> dict[str, float]:
        """The task's configured metrics (`eval.metrics`, `eval.n` samples), all ranks."""
        return self.task.evaluate(self.source)

    def sample_grid(self) -> torch.Tensor:
        return self.task.sample_grid()

    # -- the run ------------------------------------------------------------------------
    def save(self, blocking: bool = True, new_best: bool = False) -> None:
        """Checkpoint the current step on every rank (async when not `blocking` and enabled);
        NonFiniteError instead when any weight or buffer is not finite (on any rank).
        `new_best`: this step is the best so far (keep_best): best.json names it once saved."""
        cfg, b = self.cfg, self.backend
        nets = self._buffer_owners()
        tensors = [t for net in nets.values() for t in (*net.parameters(), *net.buffers())]
        if not guard.all_finite(tensors, b.all_reduce, b.device):
            raise guard.NonFiniteError(f"refusing to save step {self.step}: "
                                 f"{', '.join(nets)} hold non-finite values (some of them); the newest checkpoint in "
                                 f"{checkpoint.checkpoint_dir(self.run_dir)} stays the latest")
        meta = {"backend": self.backend.name, "precision": cfg.train.precision,
                "images_seen": self.images_seen, "config_hash": checkpoint.config_hash(
                    OmegaConf.to_container(cfg, resolve=True)),
                "versions": {"dgan": __version__, "torch": torch.__version__,
                             "python": platform.python_version()}}
        self.checkpointer.save(self.step, self.state_dict(), self.rank_state_dict(), meta,
                               blocking=blocking, write_native=hooks.native_writer(self.backend),
                               best=dict(self.best) if new_best and self.best else None)

    def fit(self, preemption: Optional[PreemptionFlag] = None) -> int:
        """Train to `train.steps`; 0 when done, REQUEUE_EXIT_CODE when preempted (saved).

        `preemption`: an installed flag owned by the caller (the CLI installs it before
        anything else and keeps it until the process exits); by default fit installs its
        own and restores the previous handlers when it returns.
        """
        cfg, b = self.cfg, self.backend
        os.makedirs(self.run_dir, exist_ok=True)
        resumed = self.resume()
        global_batch = cfg.train.batch_size * b.world_size * cfg.train.grad_accum
        if b.is_main:
            with open(os.path.join(self.run_dir, "config.yaml"), "w") as f:
                f.write(to_yaml(cfg))
        logger = RunLogger(self.run_dir, enabled=b.is_main, total_steps=cfg.train.steps,
                           start_step=self.step, progress=cfg.log.progress,
                           trackers=list(cfg.log.trackers), project=cfg.log.project,
                           run_name=cfg.run.name, resume=resumed is not None)
        logger.config(self.step, to_yaml(cfg),
                      flatten(OmegaConf.to_container(cfg, resolve=True)))
        start = (f"resumed from {resumed} at step {self.step}" if resumed else
                 self.initialised_from if self.initialised_from else
                 "fresh start (resume=never)" if cfg.resume == "never" else
                 "fresh start (no valid checkpoint)")
        logger.message(f"dgan: run {self.run_dir}: {start}; backend {b.name}, "
                       f"{b.world_size} process(es) on {b.device}, global batch "
                       f"{global_batch} = {cfg.train.batch_size} per process x {b.world_size} x "
                       f"{cfg.train.grad_accum} accumulated, precision {cfg.train.precision}")
        if self.step >= cfg.train.steps:
            logger.message(f"dgan: already at step {self.step} of train.steps={cfg.train.steps}; "
                           "raise train.steps to train longer")
            logger.close()
            self.checkpointer.close()
            return 0
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}  # per key: regularisation stats come every few steps
        last_step, last_time = self.step, time.perf_counter()
        own_flag = preemption is None
        if preemption is None:
            preemption = PreemptionFlag().install()
        outcome = "failed"  # what the trackers record as the run's end
        try:
            while self.step < cfg.train.steps:
                kill_at_step_hook(self.step, b.rank, self.checkpointer.wait)
                batch = self.next_batch()
                b.inject_nonfinite = guard.nonfinite_hook(self.step, b.rank)
                self.buffers.take()
                metrics = self.train_step(batch)
                self.step += 1
                for schedule in self.lr_schedules.values():
                    schedule.step()
                if b.skipped:  # the same on every rank: see dgan.engine.guard
                    self.buffers.restore()
                    if self.guard.in_a_row == 0:
                        logger.message(f"dgan: step {self.step}: non-finite loss or gradient; "
                                       f"skipped the update of {'/'.join(b.skipped)} and the EMAs "
                                       f"(train.max_bad_steps={cfg.train.max_bad_steps})")
                self.guard.update(self.step, b.skipped)
                self.images_seen += global_batch
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0) + v
                    counts[k] = counts.get(k, 0) + 1
                logger.progress(1)
                done = self.step == cfg.train.steps
                if self.step % cfg.log.every == 0 or done:
                    now = time.perf_counter()
                    rate = (self.step - last_step) * global_batch / (now - last_time)
                    values = {k: b.all_reduce(torch.as_tensor(v / counts[k], device=b.device)).item()
                              for k, v in sums.items()}
                    values.update({"guard/skipped_steps": self.guard.skipped_steps,
                                   "perf/img_per_s": rate, "perf/sec_per_kimg": 1000 / rate,
                                   "progress/global_batch": global_batch,
                                   "progress/images_seen": self.images_seen,
                                   "progress/kimg": self.images_seen / 1000,
                                   **optimizer_lrs(self.optimizers),
                                   **memory_peak(b.device)})
                    logger.scalars(self.step, values)
                    logger.grid(self.step, self.sample_grid(),
                                classes=self.source.labels if self.c_dim else None)
                    logger.status(self.step, values)
                    sums, counts, last_step, last_time = {}, {}, self.step, time.perf_counter()
                new_best = False
                if cfg.eval.every and (self.step % cfg.eval.every == 0 or done):
                    results = self.evaluate()
                    logger.scalars(self.step, {f"metrics/{k}": v for k, v in results.items()})
                    if results:  # {} when every metric was left out (said once)
                        logger.message(f"dgan: step {self.step}: " + ", ".join(
                            f"{k} {v:.4g}" for k, v in results.items() if "/" not in k))
                    new_best = self._update_best(results, logger)
                if not done and preemption.agreed(b.all_reduce, b.device):
                    # every rank leaves here at the same step
                    self.save(blocking=True, new_best=new_best)
                    got = preemption.signal_name
                    seen = f" ({got} on this rank)" if preemption.requested else ""
                    logger.message(f"dgan: preempted{seen}: saved step {self.step}, exiting with "
                                   f"{REQUEUE_EXIT_CODE} (requeue me; the same command resumes)")
                    if preemption.requested and not b.is_main:
                        print(f"dgan: rank {b.rank}: {preemption.signal_name} at step {self.step}",
                              file=sys.stderr, flush=True)
                    outcome = "preempted"
                    return REQUEUE_EXIT_CODE
                # a new best (keep_best) is saved at its own step, also between checkpoint.every
                if self.step % cfg.checkpoint.every == 0 or done or new_best:
                    self.save(blocking=done or not cfg.checkpoint.async_save, new_best=new_best)
            outcome = "finished"
        finally:
            if own_flag:
                preemption.uninstall()
            self.stream.close()
            if self.stream_b is not None:
                self.stream_b.close()
            logger.close(outcome)
            self.checkpointer.close()
        logger.message(f"dgan: finished {self.step} steps ({self.images_seen} images); "
                       f"checkpoints in {checkpoint.checkpoint_dir(self.run_dir)}")
        log.info("rank %d/%d parameter digest %s", b.rank, b.world_size,
                 " ".join(f"{n}={parameter_digest(net)}" for n, net in b.nets.items()))
        return 0

    def close(self, wait: bool = True) -> None:
        """Release the process group (see Backend.close); the trainer is unusable after."""
        self.backend.close(wait)
