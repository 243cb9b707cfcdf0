"""Run logging on the main process: TensorBoard, a JSONL file, and a tqdm progress bar."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Optional

import torch

from dgan.images import make_grid, save_png


class RunLogger:
    """Scalars and sample grids for one run. Does nothing on ranks other than the main one."""

    def __init__(self, run_dir: str, *, enabled: bool, total_steps: int, start_step: int,
                 progress: bool = True) -> None:
        self.enabled = enabled
        self.run_dir = run_dir
        self.bar = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(os.path.join(run_dir, "tb"))
        self.jsonl = open(os.path.join(run_dir, "log.jsonl"), "a", buffering=1)
        os.makedirs(os.path.join(run_dir, "samples"), exist_ok=True)
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                            desc="train")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        for key, value in values.items():
            self.tb.add_scalar(key, value, step)
        record: dict[str, Any] = {"step": step, "time": round(time.time(), 3)}
        record.update({k: round(float(v), 6) for k, v in values.items()})
        self.jsonl.write(json.dumps(record) + "\n")
        self.tb.flush()

    def grid(self, step: int, images: torch.Tensor, tag: str = "samples/G_ema") -> Optional[str]:
        """Log an image grid to TensorBoard and write samples/grid-<step>.png; returns its path."""
        if not self.enabled:
            return None
        grid = make_grid(images)
        self.tb.add_image(tag, grid, step, dataformats="HWC")
        self.tb.flush()
        path = os.path.join(self.run_dir, "samples", f"grid-{step:08d}.png")
        save_png(grid, path)
        return path

    def progress(self, steps: int) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def postfix(self, values: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in values.items()}, refresh=False)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        self.tb.close()
        self.jsonl.close()
