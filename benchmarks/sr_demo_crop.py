"""The README's enhancement picture: a crop of a held-out photograph (scikit-image's
"chelsea", never in builtin:photos) degraded as the run trains (sr.degradation, the
evaluation's fixed draws), then upscaled x scale by bicubic and by the run's G_ema at the
given checkpoints; one row LR (nearest) | bicubic | G_ema per checkpoint | HR, and the
PSNR / SSIM on Y of each against the HR crop.

    python benchmarks/sr_demo_crop.py --run runs/sr_x4_photos --ckpt 1200 1600 \
        --out docs/img/sr_photos.png
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dgan.data.builtin import photo_file
from dgan.enhance import load_enhancer
from dgan.images import to_uint8
from dgan.metrics.sr import bicubic_up, psnr_y, ssim_y
from dgan.tasks import build_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--ckpt", nargs="+", default=[None], help="steps (default: newest)")
    ap.add_argument("--photo", default="chelsea.png")
    ap.add_argument("--box", type=int, nargs=3, default=[150, 40, 128], metavar=("X", "Y", "SIDE"),
                    help="the HR crop: left, top, side (a multiple of the scale)")
    ap.add_argument("--out", default="sr_photos.png")
    args = ap.parse_args()

    nets = [load_enhancer(args.run, c, device="cpu") for c in args.ckpt]
    cfg, scale = nets[0].config, nets[0].scale
    x, y, side = args.box
    with Image.open(photo_file(args.photo)) as img:
        pixels = np.asarray(img.convert("RGB"))[y:y + side, x:x + side]
    hr = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    lr = build_task(cfg).degrade_eval(hr)
    row = {"LR (nearest)": F.interpolate(lr, scale_factor=scale, mode="nearest"),
           "bicubic": bicubic_up(lr, scale)}
    with torch.no_grad():
        for e in nets:
            row[f"dgan step {e.step}"] = e.net(lr).float().clamp(-1, 1)
    row["HR"] = hr
    print(f"{args.photo} [{y}:{y + side}, {x}:{x + side}], x{scale}, "
          f"sr.degradation={cfg.sr.degradation}")
    print(f"{'':16} {'psnr_y':>7} {'ssim_y':>7}")
    for name, im in row.items():
        if name.startswith("LR") or name == "HR":
            continue
        print(f"{name:16} {psnr_y(im, hr, scale).item():7.2f} {ssim_y(im, hr, scale).item():7.4f}")
    grid = torch.cat(list(row.values()), dim=3)
    Image.fromarray(to_uint8(grid)[0]).save(args.out)
    print(f"wrote {args.out}: {' | '.join(row)}")


if __name__ == "__main__":
    main()
