"""Use a trained enhancer: load G of a super-resolution run, upscale files (`dgan enhance`).

    E = dgan.load_enhancer("runs/sr_x4")           # a run, a checkpoint or an export
    y = E(x)                                        # [1, C, H, W] in [-1, 1] -> [1, C, 4H, 4W]
    y = tiled_apply(E.net, x, 4, tile=512, pad=16)  # the same, any net

Images of any size go through G in tiles (`tiled_apply`): the input is cut into tiles of
`tile` x `tile` pixels that overlap by `overlap` pixels; each is run with `pad` pixels of
context around it (real image pixels, clipped only at the image border, where G pads as it
does on the whole image), the context is cropped off G's output, and the overlaps are
cross-faded with raised-cosine weights that sum to 1. When G's receptive field radius is at
most `pad` every output pixel is the untiled G's, up to float rounding; when it is larger
(a deep RRDB net's theoretical one is hundreds of pixels, its effective one far smaller)
the few pixels next to a tile's inner edge that miss context get almost no weight, so no
seam shows. See docs/enhancement.md, "Inference: dgan enhance".

The output is accumulated in float32 only for the rows of tiles in flight (`tiled_rows`
yields finished rows); `enhance_files` turns them into uint8 at once: a 4000x3000 photo at
x4 (a 16000x12000 output) through a cheap stand-in G peaks at 1.7 GB for the whole process
on the CPU (see docs/enhancement.md).

Contract with the SR task (task.name sr): the run's config has `sr.scale` (int);
`build_task(cfg).build_networks()["G"]` builds G, which maps [N, C, H, W] in [-1, 1] to
[N, C, scale H, scale W] in [-1, 1]; checkpoints hold its EMA weights as "G_ema" (preferred)
and the trained ones as "G".
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import nn

from dgan.config import config_from_yaml_text
from dgan.translate import TranslateError, _images, _write

ENHANCEMENT_TASKS = ("sr",)
PRECISIONS = ("fp32", "bf16", "fp16")
DEFAULT_TILE = 512
# context around each tile: at least G's receptive field radius keeps tiled == untiled
# exactly; 16 costs (512 + 32)^2 / 512^2 - 1 = 13% more work at tile 512 and covers the
# effective receptive field of ESRGAN-class nets (see docs/enhancement.md)
DEFAULT_PAD = 16
# tiles of the same shape through G at once: on CUDA (on the CPU batching saves no time and
# multiplies G's memory)
DEFAULT_BATCH_CUDA = 4


class EnhanceError(ValueError):
    """A bad input or option of `dgan enhance`: one line naming it."""


# -- tiling -------------------------------------------------------------------------------

def _spans(length: int, tile: int, overlap: int, blend: bool) -> list[tuple[int, int]]:
    """[start, end) of the tiles' cores along one axis of `length` pixels. Blending: tiles of
    `tile` pixels, at least `overlap` of them shared by neighbours, spread evenly from 0 to
    `length` (the last one ends at the border); hard cuts: abutting tiles, the last smaller."""
    if tile <= 0 or length <= tile:
        return [(0, length)]
    if not blend:
        return [(a, min(a + tile, length)) for a in range(0, length, tile)]
    n = 1 + math.ceil((length - tile) / (tile - overlap))
    starts = [(i * (length - tile) + (n - 1) // 2) // (n - 1) for i in range(n)]
    return [(a, a + tile) for a in starts]


def _window(a: int, b: int, length: int, pad: int) -> tuple[int, int]:
    """The input G sees for core [a, b): `pad` more pixels each side, shifted inwards at the
    image border (more real context, and every window of an axis gets the same size)."""
    size = min(length, b - a + 2 * pad)
    start = min(max(a - pad, 0), length - size)
    return start, start + size


def _ramp(n: int) -> torch.Tensor:
    """n rising raised-cosine weights in (0, 1); ramp + its reverse == 1."""
    t = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return torch.sin(t * (math.pi / 2)) ** 2


def _weights(spans: list[tuple[int, int]], scale: int) -> list[torch.Tensor]:
    """Per tile, the float32 weight of each of its output pixels along the axis: ramps over
    the parts shared with its neighbours, 1 elsewhere, normalised so that every output
    pixel's weights sum to 1."""
    raw = []
    for i, (a, b) in enumerate(spans):
        w = torch.ones((b - a) * scale, dtype=torch.float64)
        left = spans[i - 1][1] - a if i > 0 else 0
        right = b - spans[i + 1][0] if i + 1 < len(spans) else 0
        if left > 0:
            w[:left * scale] = torch.minimum(w[:left * scale], _ramp(left * scale))
        if right > 0:
            w[-right * scale:] = torch.minimum(w[-right * scale:],
                                               _ramp(right * scale).flip(0))
        raw.append(w)
    total = torch.zeros(spans[-1][1] * scale, dtype=torch.float64)
    for (a, _), w in zip(spans, raw):
        total[a * scale:a * scale + len(w)] += w
    return [(w / total[a * scale:a * scale + len(w)]).float() for (a, _), w in zip(spans, raw)]


def _autocast(precision: str, device: torch.device) -> Any:
    if precision not in PRECISIONS:
        raise EnhanceError(f"--precision {precision}: expected one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise EnhanceError(f"--precision fp16: needs a CUDA device, G is on {device.type} "
                           "(fp16 there is slow or unsupported); use bf16 or fp32")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _device(net: nn.Module) -> torch.device:
    p = next(net.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _check(x: torch.Tensor, scale: int, tile: int, pad: int, overlap: int, batch: int) -> None:
    if x.dim() != 4 or x.shape[0] != 1:
        raise EnhanceError(f"input of shape {list(x.shape)}: expected [1, C, H, W]")
    for name, value, low in (("scale", scale, 1), ("tile", tile, 0), ("pad", pad, 0),
                             ("overlap", overlap, 0), ("batch", batch, 1)):
        if not isinstance(value, int) or value < low:
            raise EnhanceError(f"{name} {value!r}: expected an integer >= {low}")
    if tile and overlap >= tile:
        raise EnhanceError(f"overlap {overlap}: expected less than the tile ({tile})")


@torch.no_grad()
def tiled_rows(net: nn.Module, x: torch.Tensor, scale: int, tile: int = DEFAULT_TILE,
               pad: int = DEFAULT_PAD, blend: bool = True, *, overlap: Optional[int] = None,
               batch: Optional[int] = None, precision: str = "fp32"
               ) -> Iterator[torch.Tensor]:
    """G's output on `x` ([1, C, H, W], on the CPU) in tiles (see tiled_apply), as finished
    float32 CPU row bands [C_out, rows, W * scale], top to bottom. Each band is a view that
    is only valid until the next one is asked for: copy or convert it first."""
    overlap = min(pad, tile // 2) if overlap is None else overlap
    if not blend:  # hard cuts: no context, no overlap (only to show that blending matters)
        pad = overlap = 0
    device = _device(net)
    batch = batch or (DEFAULT_BATCH_CUDA if device.type == "cuda" else 1)
    _check(x, scale, tile, pad, overlap, batch)
    cast = _autocast(precision, device)
    _, _, h, w = x.shape
    rows, cols = _spans(h, tile, overlap, blend), _spans(w, tile, overlap, blend)
    row_w, col_w = _weights(rows, scale), _weights(cols, scale)
    # one float32 buffer for the output rows in flight, [top, top + tile * scale): row i of
    # tiles writes rows [ra, rb) of the output (times scale), and the rows above ra are final
    rows_in_flight = max(rb - ra for ra, rb in rows) * scale
    acc: Optional[torch.Tensor] = None
    top = 0
    for i, (ra, rb) in enumerate(rows):
        wa, wb = _window(ra, rb, h, pad)
        tiles = [(j, ca, cb, *_window(ca, cb, w, pad)) for j, (ca, cb) in enumerate(cols)]
        groups: dict[int, list[tuple[int, int, int, int, int]]] = {}
        for t in tiles:  # same window width: one batch (all of them, unless hard cuts)
            groups.setdefault(t[4] - t[3], []).append(t)
        for group in groups.values():
            for k in range(0, len(group), batch):
                chunk = group[k:k + batch]
                inp = torch.cat([x[..., wa:wb, xa:xb] for _, _, _, xa, xb in chunk])
                with cast:
                    out = net(inp.to(device, torch.float32))
                want = ((wb - wa) * scale, (chunk[0][4] - chunk[0][3]) * scale)
                if out.dim() != 4 or tuple(out.shape[-2:]) != want:
                    raise EnhanceError(
                        f"G maps {wb - wa}x{chunk[0][4] - chunk[0][3]} pixels to "
                        f"{'x'.join(map(str, out.shape[-2:]))}, not {want[0]}x{want[1]} "
                        f"(scale {scale})")
                out = out.float().cpu()
                if acc is None:
                    acc = torch.zeros(out.shape[1], rows_in_flight, w * scale)
                for y, (j, ca, cb, xa, _) in zip(out, chunk):
                    core = y[:, (ra - wa) * scale:(rb - wa) * scale,
                             (ca - xa) * scale:(cb - xa) * scale]
                    weight = row_w[i][:, None] * col_w[j][None, :]
                    acc[:, ra * scale - top:rb * scale - top, ca * scale:cb * scale].addcmul_(
                        core, weight)
                del out, inp
        assert acc is not None
        done = (rows[i + 1][0] if i + 1 < len(rows) else h) * scale  # final above this
        yield acc[:, :done - top]
        carry = rb * scale - done  # rows this row of tiles wrote below `done`
        if carry > 0:
            acc[:, :carry] = acc[:, done - top:done - top + carry].clone()
        acc[:, max(carry, 0):].zero_()
        top = done


def tiled_apply(net: nn.Module, x: torch.Tensor, scale: int, tile: int = DEFAULT_TILE,
                pad: int = DEFAULT_PAD, blend: bool = True, *, overlap: Optional[int] = None,
                batch: Optional[int] = None, precision: str = "fp32",
                out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`net(x)` of a [1, C, H, W] CPU image computed in tiles: [1, C_out, H * scale,
    W * scale] (`out_dtype`, on the CPU).

    tile: core size in input pixels (0, or at least the image: one pass); pad: context
    pixels around each tile (tiled == untiled up to rounding when `net`'s receptive field
    radius is <= pad); overlap: input pixels neighbouring tiles share at least, cross-faded
    (default min(pad, tile // 2)); blend=False: abutting tiles without context or
    cross-fade (hard seams, for comparison only); batch: tiles per call of `net`
    (default 4 on CUDA, 1 on the CPU);
    precision: fp32, bf16 (autocast, CUDA or CPU) or fp16 (autocast, CUDA only: EnhanceError
    on the CPU). `net` runs as it is (put it in eval mode first).
    """
    _, _, h, w = x.shape
    y: Optional[torch.Tensor] = None
    row = 0
    for band in tiled_rows(net, x, scale, tile, pad, blend, overlap=overlap, batch=batch,
                           precision=precision):
        if y is None:
            y = torch.empty(1, band.shape[0], h * scale, w * scale, dtype=out_dtype)
        y[0, :, row:row + band.shape[1]] = band
        row += band.shape[1]
    assert y is not None and row == h * scale
    return y


def tiled_uint8(net: nn.Module, x: torch.Tensor, scale: int, **kw: Any) -> np.ndarray:
    """tiled_rows(net, x, scale, **kw) as one uint8 [H * scale, W * scale, C_out] array, each
    band converted as it is finished (the float32 output never exists whole)."""
    _, _, h, w = x.shape
    y: Optional[np.ndarray] = None
    row = 0
    for band in tiled_rows(net, x, scale, **kw):
        if y is None:
            y = np.empty((h * scale, w * scale, band.shape[0]), np.uint8)
        for r in range(0, band.shape[1], 64):  # a few rows at a time: small temporaries
            part = band[:, r:r + 64].clamp(-1, 1).add_(1).mul_(127.5).round_()
            y[row + r:row + r + part.shape[1]] = part.to(torch.uint8).permute(1, 2, 0).numpy()
        row += band.shape[1]
    assert y is not None and row == h * scale
    return y


# -- a trained enhancer -------------------------------------------------------------------

class TrainedEnhancer(nn.Module):
    """G of a super-resolution run in eval mode, with its config, step and scale."""

    def __init__(self, net: nn.Module, config: DictConfig, step: int, source: Path,
                 scale: int) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.config, self.step, self.source, self.scale = config, step, source, scale

    @property
    def channels(self) -> int:
        return int(self.config.data.channels)

    def forward(self, x: torch.Tensor, tile: int = DEFAULT_TILE, pad: int = DEFAULT_PAD,
                precision: str = "fp32", **kw: Any) -> torch.Tensor:
        """[1, C, H, W] in [-1, 1] (CPU) -> [1, C, scale H, scale W] in [-1, 1], any H and W,
        in tiles (tiled_apply's options)."""
        return tiled_apply(self.net, x, self.scale, tile, pad, precision=precision, **kw)


def load_enhancer(path: str | os.PathLike, ckpt: Optional[str | int] = None,
                  device: Optional[str | torch.device] = None) -> TrainedEnhancer:
    """G of `path`: a super-resolution run (task.name sr; its newest valid checkpoint, or
    `ckpt`: a step, "best" or a checkpoint directory), a checkpoint directory, or a
    `dgan ckpt export` folder of one; G_ema's weights when the checkpoint has them, else
    G's. On `device` (default: CUDA when there is one). Raises FileNotFoundError,
    InvalidCheckpoint, EnhanceError, ConfigError."""
    from dgan.export import EXPORT_WEIGHTS, TRANSLATOR_WEIGHTS
    from dgan.sample import SampleError, _state_of
    from dgan.tasks import build_task, task_name

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such run, checkpoint or export directory")
    exported = [path / n for n in (EXPORT_WEIGHTS, TRANSLATOR_WEIGHTS) if (path / n).is_file()]
    if exported:
        from safetensors import safe_open
        from safetensors.torch import load_file

        if ckpt is not None:
            raise EnhanceError(f"--ckpt {ckpt}: {path} is an export, which holds one checkpoint")
        if not (path / "config.yaml").is_file():
            raise EnhanceError(f"{path}: an export without its config.yaml")
        cfg = config_from_yaml_text((path / "config.yaml").read_text())
        with safe_open(str(exported[0]), framework="pt") as f:
            meta = f.metadata() or {}
        weights, step, chosen = load_file(str(exported[0])), int(meta.get("step", 0)), path
    else:
        try:
            chosen, state = _state_of(path, ckpt)
        except SampleError as e:
            raise EnhanceError(str(e)) from None
        cfg = config_from_yaml_text(OmegaConf.to_yaml(OmegaConf.create(state["config"])))
        weights = state.get("G_ema") if state.get("G_ema") is not None else state.get("G")
        step = int(state["step"])
    name = task_name(cfg)
    if name not in ENHANCEMENT_TASKS:
        from dgan.translate import TRANSLATION_TASKS

        use = "dgan translate" if name in TRANSLATION_TASKS else "dgan sample"
        raise EnhanceError(f"{path}: a task.name={name} run; dgan enhance takes a "
                           f"super-resolution run (task.name {', '.join(ENHANCEMENT_TASKS)}); "
                           f"use {use}")
    scale = OmegaConf.select(cfg, "sr.scale")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise EnhanceError(f"{path}: sr.scale={scale!r} in its config; expected an integer >= 1")
    if not isinstance(weights, dict):
        raise EnhanceError(f"{chosen}: holds no G_ema or G weights")
    net = build_task(cfg).build_networks()["G"]
    try:
        net.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise EnhanceError(f"{chosen}: its G weights do not fit task.name={name}'s G "
                           f"({first[1].strip() if len(first) > 1 else first[0]})") from None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return TrainedEnhancer(net.to(device), cfg, step, chosen, scale)


# -- files --------------------------------------------------------------------------------

def enhance_files(net: nn.Module, scale: int, src: str | os.PathLike, out: str | os.PathLike,
                  tile: int = DEFAULT_TILE, pad: int = DEFAULT_PAD, precision: str = "fp32",
                  channels: Optional[int] = None, *, overlap: Optional[int] = None,
                  batch: Optional[int] = None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Upscale every image under `src` (a folder, recursively, or one file; any size) by
    `scale` with `net` (a TrainedEnhancer or a plain G) into `out` as PNG with the same
    relative name (extension .png), in tiles (see tiled_apply). Inputs are converted to
    `channels` (default: the enhancer's data.channels): grey for a grey G, RGB (grey
    repeated) for an RGB G. An alpha channel is upscaled bicubically on its own and put
    back (RGBA PNG). Unreadable images are skipped. Returns (written, [(input, reason)
    skipped])."""
    if isinstance(net, TrainedEnhancer):
        channels = channels or net.channels
        net = net.net
    if channels not in (1, 3):
        raise EnhanceError(f"channels {channels!r}: expected 1 (grey) or 3 (RGB)")
    _autocast(precision, _device(net))  # refused before any file is read
    src, out = Path(src), Path(out)
    written: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    try:
        for _, rel, x, alpha in _images(src, out, channels, skipped):
            y = tiled_uint8(net, x, scale, tile=tile, pad=pad, overlap=overlap, batch=batch,
                            precision=precision)
            if alpha is not None:
                h, w = alpha.shape
                alpha = np.asarray(Image.fromarray(alpha).resize(
                    (w * scale, h * scale), Image.Resampling.BICUBIC))
            target = out / rel.with_suffix(".png")
            _write(y, alpha, target)
            written.append(target)
    except TranslateError as e:  # OUT inside IN
        raise EnhanceError(str(e)) from None
    return written, skipped
