"""The CycleGAN demo's README grid (docs/img/cyclegan_mnist.png) from HELD-OUT inputs, through
the CLI, with the held-out digit_class of both directions.

The demo (configs/cyclegan_mnist.yaml) trains on A = bold versions of half 1's digits
(builtin:mnist_bold_half1) and B = half 2's digits (builtin:mnist_half2). Inputs it never
saw: for G_AB, the bold versions of half 2's digits (A never held them); for G_BA, half 1's
plain digits (B never held them). This script writes `--per-class` of each class of both
as PNG folders, runs `dgan translate` on them (AtoB and BtoA), prints the share of
translations the built-in digit classifier gives the source's label, and tiles the first
`--grid-per-class` of each class as a | G_AB(a) | b | G_BA(b) strips (each in a grey frame,
6 pixels apart), 2x upscaled.

    python benchmarks/cyclegan_demo_grid.py --run runs/cyclegan_mnist --out docs/img/cyclegan_mnist.png
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _write(images: np.ndarray, labels: np.ndarray, folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for i, (img, label) in enumerate(zip(images, labels)):
        path = folder / f"{label}_{i:04d}.png"
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths


def _read(paths: list[Path], folder: Path, root: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(folder / p.relative_to(root)).convert("L"))
                     for p in paths])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="the demo's run directory")
    ap.add_argument("--out", help="grid PNG (default: no grid)")
    ap.add_argument("--per-class", type=int, default=50, help="held-out inputs per class and way")
    ap.add_argument("--grid-per-class", type=int, default=2)
    ap.add_argument("--cols", type=int, default=4, help="strips per grid row")
    args = ap.parse_args(argv)

    from dgan.data.builtin import bold, fit_resolution, halves, load_mnist
    from dgan.images import make_grid, save_png
    from dgan.metrics.digits import DigitClassifier

    images, labels = load_mnist()
    images = fit_resolution(images, 32)
    first, second = halves(labels)

    def pick(idx: np.ndarray) -> np.ndarray:  # the first per_class of each class, by class
        return np.concatenate([idx[labels[idx] == d][:args.per_class] for d in range(10)])

    a_idx, b_idx = pick(second), pick(first)  # A: half 2 made bold; B: half 1's digits
    a_in, b_in = bold(images[a_idx]), images[b_idx]
    classifier = DigitClassifier.load_or_train(verbose=False)

    def kept(x: np.ndarray, y: np.ndarray) -> float:
        t = torch.from_numpy(x).float().div(127.5).sub(1)[:, None]
        return float((classifier.predict(t)[:, 0].numpy() == y).mean())

    with tempfile.TemporaryDirectory(prefix="dgan-cg-grid-") as tmp:
        tmp = Path(tmp)
        a_paths = _write(a_in, labels[a_idx], tmp / "a")
        b_paths = _write(b_in, labels[b_idx], tmp / "b")
        for direction, src, dst in (("AtoB", "a", "fake_b"), ("BtoA", "b", "fake_a")):
            subprocess.run([sys.executable, "-m", "dgan", "translate", "--run", args.run,
                            "--direction", direction, str(tmp / src), str(tmp / dst)], check=True)
        fake_b = _read(a_paths, tmp / "fake_b", tmp / "a")
        fake_a = _read(b_paths, tmp / "fake_a", tmp / "b")

    n = len(a_idx)
    print(f"held out, {n} per way ({args.per_class} per class):")
    print(f"  inputs  bold (half 2) digit_class {kept(a_in, labels[a_idx]):.3f}   "
          f"digits (half 1) {kept(b_in, labels[b_idx]):.3f}")
    print(f"  G_AB(a) digit_class_ab {kept(fake_b, labels[a_idx]):.3f}   "
          f"G_BA(b) digit_class_ba {kept(fake_a, labels[b_idx]):.3f}")
    if args.out:
        g = args.grid_per_class
        rows = [i for d in range(10) for i in range(d * args.per_class, d * args.per_class + g)]
        strips = np.concatenate([a_in[rows], fake_b[rows], b_in[rows], fake_a[rows]], axis=2)
        strips = np.pad(strips, ((0, 0), (1, 1), (1, 1)), constant_values=96)  # a grey frame
        t = torch.from_numpy(strips).float().div(127.5).sub(1)[:, None]
        grid = make_grid(t, cols=args.cols, pad=6).repeat(2, axis=0).repeat(2, axis=1)
        save_png(grid, args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
