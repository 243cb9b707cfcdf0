"""Run logging on the main process: TensorBoard, a JSONL file, progress on the console, and
the optional W&B / MLflow trackers (`log.trackers`, dgan.trackers).

Progress (`log.progress`): a tqdm bar on a terminal; one line per `log.every` steps where
stderr is not a terminal (SLURM output files, pipes), since a bar there is a file of
carriage-return updates that `tail -f` and log viewers show as one ever-growing line.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import Any, Optional, Sequence, TextIO

import torch

from dgan.images import make_grid, save_png

PROGRESS_MODES = ("auto", "bar", "lines", "off")


def progress_mode(setting: str, stream: Optional[TextIO] = None) -> str:
    """`log.progress` resolved: auto is a bar when `stream` (default stderr, where tqdm
    writes) is a terminal, else lines; bar, lines and off as given."""
    if setting != "auto":
        return setting
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "lines"


def optimizer_lrs(optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
    """``lr/<name>``: the learning rate of each optimizer's first parameter group."""
    return {f"lr/{name}": float(opt.param_groups[0]["lr"]) for name, opt in optimizers.items()}


def memory_peak(device: torch.device) -> dict[str, float]:
    """``perf/gpu_mem_peak_gib``: this process's peak CUDA memory allocated by tensors since
    the previous call (the peak is reset), in GiB; empty on other devices."""
    if device.type != "cuda":
        return {}
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return {"perf/gpu_mem_peak_gib": peak}


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    text = f"{rest // 3600}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}d {text}" if days else text


def format_line(step: int, total_steps: int, values: dict[str, float]) -> str:
    """One progress line from a log interval's scalars (see Trainer.fit for the keys); the
    ETA assumes the interval's speed for the steps left."""
    kimg = values["progress/kimg"]
    sec_per_kimg = values["perf/sec_per_kimg"]
    left_kimg = (total_steps - step) * values["progress/global_batch"] / 1000
    parts = [f"step {step}/{total_steps}", f"kimg {kimg:.1f}" if kimg >= 10 else f"kimg {kimg:.3f}",
             f"img/s {values['perf/img_per_s']:.1f}", f"sec/kimg {sec_per_kimg:.3g}"]
    parts += [f"{k} {v:.4g}" for k, v in values.items()
              if k.startswith(("loss/", "lr/")) or k == "augment/p"]
    if "perf/gpu_mem_peak_gib" in values:
        parts.append(f"gpumem {values['perf/gpu_mem_peak_gib']:.2f}GiB")
    if values.get("guard/skipped_steps"):
        parts.append(f"skipped {int(values['guard/skipped_steps'])}")
    parts.append(f"eta {_duration(left_kimg * sec_per_kimg)}")
    return "dgan: " + "  ".join(parts)


class RunLogger:
    """Scalars and sample grids for one run. Does nothing on ranks other than the main one.

    `trackers`: where they go besides log.jsonl and samples/ (`log.trackers`): tensorboard
    (dgan's own writer, run_dir/tb), wandb, mlflow (dgan.trackers; `project` is their
    project / experiment, `run_name` the run's name, and `resume` continues the runs whose
    ids run_dir/trackers.json holds)."""

    def __init__(self, run_dir: str, *, enabled: bool, total_steps: int, start_step: int,
                 progress: str = "auto", trackers: Sequence[str] = ("tensorboard",),
                 project: str = "dgan", run_name: Optional[str] = None,
                 resume: bool = False) -> None:
        self.enabled = enabled
        self.run_dir = run_dir
        self.total_steps = total_steps
        self.bar = None
        self.lines = False
        self.tb = None
        self.sinks: list[Any] = []
        self.closed = False
        if not enabled:
            return
        if "tensorboard" in trackers:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(run_dir, "tb"))
        self.jsonl = open(os.path.join(run_dir, "log.jsonl"), "a", buffering=1)
        os.makedirs(os.path.join(run_dir, "samples"), exist_ok=True)
        mode = progress_mode(progress)
        self.lines = mode == "lines"
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                            desc="train")
        if any(t != "tensorboard" for t in trackers):
            from dgan.trackers import open_sinks

            try:
                self.sinks = open_sinks(trackers, run_dir, project=project, resume=resume,
                                        run_name=run_name or os.path.basename(
                                            os.path.abspath(run_dir)), say=self.message)
            except BaseException:
                self.close("failed")
                raise

    def config(self, step: int, text: str, params: Optional[dict[str, Any]] = None) -> None:
        """The resolved config, once per start: YAML `text` as a TensorBoard text summary (tag
        `config`), and `params` (dotted keys, dgan.trackers.flatten) as the other trackers'
        hyperparameters."""
        if not self.enabled:
            return
        if self.tb is not None:
            # indented: TensorBoard renders text as Markdown, and a code block keeps the YAML
            self.tb.add_text("config", "".join("    " + line for line in text.splitlines(True)),
                             step)
            self.tb.flush()
        for sink in self.sinks:
            sink.config(step, text, params or {})

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(key, value, step)
            self.tb.flush()
        record: dict[str, Any] = {"step": step, "time": round(time.time(), 3)}
        record.update({k: round(float(v), 6) for k, v in values.items()})
        self.jsonl.write(json.dumps(record) + "\n")
        if values:
            for sink in self.sinks:
                sink.scalars(step, values)

    def grid(self, step: int, images: torch.Tensor, tag: str = "samples/G_ema",
             classes: Optional[list[str]] = None) -> Optional[str]:
        """Log an image grid to the trackers and write samples/grid-<step>.png; returns its path.

        `classes`: the label names of a conditional model whose image i is of class
        i % len(classes); each class with images also gets its own grid, tagged
        `<tag>_by_class/<index>_<name>` (index zero-padded so that TensorBoard sorts them)."""
        if not self.enabled:
            return None
        grid = make_grid(images)
        grids = {tag: grid}
        width = len(str(len(classes) - 1)) if classes else 0
        for k, name in enumerate((classes or [])[:len(images)]):
            safe = re.sub(r"[^\w.-]+", "_", str(name))
            grids[f"{tag}_by_class/{k:0{width}d}_{safe}"] = make_grid(images[k::len(classes)])
        if self.tb is not None:
            for key, value in grids.items():
                self.tb.add_image(key, value, step, dataformats="HWC")
            self.tb.flush()
        for sink in self.sinks:
            sink.images(step, grids)
        path = os.path.join(self.run_dir, "samples", f"grid-{step:08d}.png")
        save_png(grid, path)
        return path

    def progress(self, steps: int) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def status(self, step: int, values: dict[str, float]) -> None:
        """After a log interval: speed and losses in the bar's postfix, or one line
        (`format_line`) on stdout in lines mode."""
        if self.bar is not None:
            shown = {"img/s": values["perf/img_per_s"], "D": values["loss/D"],
                     "G": values["loss/G"]}
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=False)
        elif self.lines:
            print(format_line(step, self.total_steps, values), flush=True)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self, outcome: str = "finished") -> None:
        """Close the writers and finish the trackers' runs; `outcome` (finished, preempted,
        failed) is what W&B and MLflow record as the run's end. Safe to call twice."""
        if not self.enabled or self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        self.jsonl.close()
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            sink.close(outcome)
