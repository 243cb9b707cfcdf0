"""Console progress for terminals and for clusters, and the extra run scalars (#19)."""

import io
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from dgan.logging import format_line, memory_peak, optimizer_lrs, progress_mode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["train.steps=4", "train.batch_size=4", "data.workers=0", "log.every=2", "log.grid=4",
        "checkpoint.every=4", "model.g_width=8", "model.d_width=8", "optim.lr_g=0.0003",
        "optim.lr_d=0.0005"]


def train_piped(run_dir, *extra):
    """`dgan train` with stdout and stderr both pipes, as under SLURM."""
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "dgan", "train", f"run.dir={run_dir}", *TINY,
                          *extra], capture_output=True, env=env, timeout=300)
    # bytes decoded by hand: text=True would turn the bar's carriage returns into newlines
    out.stdout, out.stderr = out.stdout.decode(), out.stderr.decode()
    assert out.returncode == 0, out.stderr
    return out


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_auto_progress_is_a_bar_on_a_terminal_and_lines_elsewhere():
    assert progress_mode("auto", Tty()) == "bar"
    assert progress_mode("auto", io.StringIO()) == "lines"
    assert progress_mode("lines", Tty()) == "lines"
    assert progress_mode("off", Tty()) == "off"


def test_piped_run_logs_one_line_per_interval_and_the_new_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    out = train_piped(run)  # log.progress left at auto
    assert "\r" not in out.stdout + out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("dgan: step ")]
    assert [line.split()[2] for line in lines] == ["2/4", "4/4"], out.stdout
    pattern = (r"dgan: step 2/4  kimg 0\.008  img/s [\d.]+  sec/kimg [\d.e+-]+  "
               r"loss/D [\d.e+-]+  loss/r1 [\d.e+-]+  loss/G [\d.e+-]+  lr/G 0\.0003  "
               r"lr/D 0\.0005  eta \d+:\d\d:\d\d$")
    assert re.match(pattern, lines[0]), lines[0]
    assert lines[1].endswith("eta 0:00:00")
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    last = records[-1]
    assert last["lr/G"] == pytest.approx(3e-4) and last["lr/D"] == pytest.approx(5e-4)
    assert last["perf/sec_per_kimg"] == pytest.approx(1000 / last["perf/img_per_s"], rel=1e-4)
    assert "perf/gpu_mem_peak_gib" not in last  # CPU run
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    assert {"lr/G", "lr/D", "perf/sec_per_kimg"} <= set(acc.Tags()["scalars"])
    # the demo data is class-conditional MNIST: one grid per class of the 4 grid images
    assert {f"samples/G_ema_by_class/{k}_{k}" for k in range(4)} < set(acc.Tags()["images"])
    texts = acc.Tensors("config/text_summary")
    assert len(texts) == 1 and texts[0].step == 0
    text = texts[0].tensor_proto.string_val[0].decode()
    assert "    train:\n" in text and "      batch_size: 4\n" in text


def test_bar_and_off_modes(tmp_path):
    bar = train_piped(tmp_path / "bar", "log.progress=bar")
    assert "\r" in bar.stderr and "dgan: step " not in bar.stdout
    off = train_piped(tmp_path / "off", "log.progress=false")
    assert "\r" not in off.stderr and "dgan: step " not in off.stdout
    assert "dgan: finished 4 steps" in off.stdout


def test_line_shows_gpu_memory_skipped_steps_and_ada_when_present():
    values = {"progress/kimg": 1234.56, "progress/global_batch": 64, "perf/img_per_s": 640.0,
              "perf/sec_per_kimg": 1.5625, "loss/G": 2.0, "loss/D": 0.5, "augment/p": 0.125,
              "lr/G": 0.0025, "lr/D": 0.0023, "perf/gpu_mem_peak_gib": 3.25,
              "guard/skipped_steps": 2.0, "D/real": 0.6}
    line = format_line(1000, 101000, values)
    assert line == ("dgan: step 1000/101000  kimg 1234.6  img/s 640.0  sec/kimg 1.56  "
                    "loss/G 2  loss/D 0.5  augment/p 0.125  lr/G 0.0025  lr/D 0.0023  "
                    "gpumem 3.25GiB  skipped 2  eta 2:46:40")
    assert format_line(0, 2_000_000, values).endswith("eta 2d 7:33:20")


def test_lrs_and_memory_helpers():
    w = torch.nn.Parameter(torch.zeros(1))
    opts = {"G": torch.optim.Adam([w], lr=0.01), "D": torch.optim.SGD([w], lr=0.5)}
    assert optimizer_lrs(opts) == {"lr/G": 0.01, "lr/D": 0.5}
    assert memory_peak(torch.device("cpu")) == {}


def test_conditional_grid_gets_one_tagged_grid_per_class(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dgan.logging import RunLogger

    logger = RunLogger(str(tmp_path), enabled=True, total_steps=1, start_step=0, progress="off")
    classes = [f"c{k}" for k in range(10)] + ["a cat/dog"]
    images = torch.zeros(12, 1, 4, 4)
    logger.grid(3, images, classes=classes)
    logger.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = acc.Tags()["images"]
    assert sorted(tags) == ["samples/G_ema", *(f"samples/G_ema_by_class/{k:02d}_c{k}"
                                               for k in range(10)),
                            "samples/G_ema_by_class/10_a_cat_dog"]
    # class 0 holds images 0 and 11: a 2x1 grid of 4x4 tiles with 2 px padding
    zero = acc.Images("samples/G_ema_by_class/00_c0")[0]
    assert (zero.height, zero.width, zero.step) == (8, 14, 3)
    assert acc.Images("samples/G_ema_by_class/05_c5")[0].width == 8  # image 5 only


def test_memory_peak_reads_and_resets_the_cuda_peak(monkeypatch):
    # no GPU here: stand in for the two CUDA calls to check the reading and the reset
    calls = []
    monkeypatch.setattr(torch.cuda, "max_memory_allocated",
                        lambda d: calls.append("read") or 3 << 29)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d: calls.append("reset"))
    assert memory_peak(torch.device("cuda", 0)) == {"perf/gpu_mem_peak_gib": 1.5}
    assert calls == ["read", "reset"]
