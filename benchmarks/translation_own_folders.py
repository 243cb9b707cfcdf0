"""A user's own paired and unpaired folders, end to end through the CLI: do the translation
demos' configs learn a transformation that neither the tests nor the demos use?

The data: dgan's bundled 5,000 MNIST digits (dgan/data/mnist5k.npz), padded to 32x32, and
their *blurred* version (a Gaussian blur, sigma 1.5: the digit stays readable to a person,
the built-in digit classifier knows only ~70% of them). 500 digits (50 per class) are held
out; of the other 4,500:
  pix2pix  pairs blurred -> sharp of all 4,500 (`dgan data make --paired DIR_A DIR_B OUT`);
  CycleGAN domain A = the blurred versions of one half, domain B = the sharp digits of the
           other half (two `dgan data make`, disjoint halves: no digit is in both).
Folders hold one subfolder per class (`--labels subdirs`), so the in-training evaluation
can log digit_class too (eval.digit_metrics=true: the user says they are digits).

Then `dgan train configs/pix2pix_mnist.yaml` / `configs/cyclegan_mnist.yaml` with
data.path (and data.path_b) on those shards, `dgan translate` of the 500 held-out blurred
digits (CycleGAN: AtoB), and, on the translations: digit_class (the share the digit
classifier gives the source's label), PSNR against the sharp targets, and the same two
numbers for the identity mapping (the blurred inputs themselves).

    python benchmarks/translation_own_folders.py --work /tmp/own [--p2p-steps N] [--cyc-steps N]

Prints a table (and writes WORK/results.json). Training runs one at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dgan.data.builtin import fit_resolution, load_mnist  # noqa: E402
from dgan.metrics.digits import DigitClassifier  # noqa: E402
from dgan.metrics.quality import psnr  # noqa: E402

HELD_PER_CLASS = 50
SPLIT_SEED = 11
BLUR_SIGMA = 1.5


def blur(images: np.ndarray, sigma: float = BLUR_SIGMA) -> np.ndarray:
    """(N, H, W) uint8 -> the same digits under a Gaussian blur (separable, 9 taps, zero
    (background) padding), uint8."""
    t = torch.arange(9, dtype=torch.float64) - 4
    k = torch.exp(-t.square() / (2 * sigma * sigma))
    k = (k / k.sum()).float()
    x = torch.from_numpy(images).float()[:, None]
    x = F.conv2d(F.pad(x, (4, 4, 0, 0)), k.view(1, 1, 1, 9))
    x = F.conv2d(F.pad(x, (0, 0, 4, 4)), k.view(1, 1, 9, 1))
    return x[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(held out, train half 1, train half 2): per class 50 held out, the rest halved."""
    rng = np.random.default_rng(SPLIT_SEED)
    held, one, two = [], [], []
    for d in range(10):
        idx = rng.permutation(np.flatnonzero(labels == d))
        held.append(idx[:HELD_PER_CLASS])
        rest = idx[HELD_PER_CLASS:]
        one.append(rest[:len(rest) // 2])
        two.append(rest[len(rest) // 2:])
    return tuple(np.sort(np.concatenate(p)) for p in (held, one, two))  # type: ignore[return-value]


def write_folder(folder: Path, images: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> None:
    for i in idx:
        sub = folder / str(int(labels[i]))
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(sub / f"{i:04d}.png")


def dgan(*args: str, log: Path) -> float:
    """Run `python -m dgan ARGS` (nice 5), output to `log`; wall seconds. Fails loudly."""
    start = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ dgan {' '.join(args)}\n")
        f.flush()
        code = subprocess.call(["nice", "-n", "5", sys.executable, "-m", "dgan", *args],
                               stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    if code != 0:
        raise SystemExit(f"dgan {' '.join(args)} exited {code}; see {log}")
    return time.perf_counter() - start


def load(folder: Path, names: list[str]) -> torch.Tensor:
    arrays = [np.asarray(Image.open(folder / n).convert("L")) for n in names]
    return torch.from_numpy(np.stack(arrays)).float()[:, None] / 127.5 - 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="working folder (folders, shards, runs)")
    p.add_argument("--p2p-steps", type=int, help="train.steps of pix2pix (default: config)")
    p.add_argument("--cyc-steps", type=int, help="train.steps of CycleGAN (default: config)")
    p.add_argument("--only", choices=["pix2pix", "cyclegan"], help="one task only")
    args = p.parse_args()
    work = Path(args.work).resolve()
    log = work / "log.txt"
    images, labels = load_mnist()
    sharp = fit_resolution(images, 32)
    soft = blur(sharp)
    held, one, two = split(labels)
    every = np.sort(np.concatenate([one, two]))
    if not (work / "folders.done").exists():
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        write_folder(work / "p2p" / "A", soft, labels, every)  # pairs by relative path
        write_folder(work / "p2p" / "B", sharp, labels, every)
        write_folder(work / "cyc" / "A", soft, labels, one)  # disjoint halves
        write_folder(work / "cyc" / "B", sharp, labels, two)
        write_folder(work / "held" / "in", soft, labels, held)
        write_folder(work / "held" / "target", sharp, labels, held)
        make = ["--resolution", "32", "--channels", "1", "--format", "png", "--labels",
                "subdirs"]
        dgan("data", "make", "--paired", str(work / "p2p" / "A"), str(work / "p2p" / "B"),
             str(work / "shards" / "p2p"), *make, log=log)
        for d in ("A", "B"):
            dgan("data", "make", str(work / "cyc" / d), str(work / "shards" / f"cyc_{d}"),
                 *make, log=log)
        (work / "folders.done").write_text("")
    names = sorted(str(Path(str(int(labels[i]))) / f"{i:04d}.png") for i in held)
    truth = torch.tensor([int(Path(n).parts[0]) for n in names])
    x, y = load(work / "held" / "in", names), load(work / "held" / "target", names)
    judge = DigitClassifier.load_or_train(verbose=False)

    def digit_class(imgs: torch.Tensor) -> float:
        return float((judge.predict(imgs)[:, 0] == truth).float().mean())

    rows = [("identity (the blurred inputs)", None, None, digit_class(x),
             float(psnr(x, y).mean()))]
    common = ["log.progress=off", "eval.digit_metrics=true"]
    jobs = [("pix2pix", "configs/pix2pix_mnist.yaml", args.p2p_steps,
             [f"data.path={work / 'shards' / 'p2p'}"], []),
            ("cyclegan", "configs/cyclegan_mnist.yaml", args.cyc_steps,
             [f"data.path={work / 'shards' / 'cyc_A'}",
              f"data.path_b={work / 'shards' / 'cyc_B'}"], ["--direction", "AtoB"])]
    for task, config, steps, data, direction in jobs:
        if args.only and task != args.only:
            continue
        run = work / "runs" / task
        shutil.rmtree(run, ignore_errors=True)
        over = [f"run.dir={run}", *data, *common] + ([f"train.steps={steps}"] if steps else [])
        if steps:  # the config's decay starts at half its steps: keep that proportion
            over.append(f"optim.lr_decay_from={steps // 2}")
            over.append(f"eval.every={steps}")
            over.append(f"checkpoint.every={steps}")
        wall = dgan("train", config, *over, log=log)
        out = work / "out" / task
        shutil.rmtree(out, ignore_errors=True)
        dgan("translate", "--run", str(run), *direction, str(work / "held" / "in"), str(out),
             log=log)
        fake = load(out, names)
        ran = steps or int(OmegaConf.load(ROOT / config).train.steps)
        rows.append((f"{task} ({config}, {ran} steps)", ran, wall, digit_class(fake),
                     float(psnr(fake, y).mean())))
    print(f"held-out: {len(names)} blurred digits (sigma {BLUR_SIGMA}), 50 per class; "
          f"torch {torch.__version__}, {os.cpu_count()} CPU(s)")
    print(f"{'translator':<52} {'train wall s':>12} {'digit_class':>11} {'PSNR dB':>8}")
    for name, _, wall, dc, ps in rows:
        w = f"{wall:.0f}" if wall is not None else "-"
        print(f"{name:<52} {w:>12} {dc:>11.3f} {ps:>8.2f}")
    (work / "results.json").write_text(json.dumps(
        [{"translator": r[0], "steps": r[1], "train_wall_s": r[2], "digit_class": r[3],
          "psnr": r[4]} for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
