"""Tiled inference of super-resolution nets (dgan.enhance) and `dgan enhance`.

Image values: the nets see and return [-1, 1]; the 1/255 and 4/255 bounds are on the
[0, 1] scale, i.e. on (y + 1) / 2.

`load_enhancer` and the CLI are tested here with a stand-in task "sr_test" (one conv +
pixel shuffle G, registered for the test: exact expectations of G's output); a run of the
real task (task.name sr) is enhanced, exported and evaluated in tests/test_sr.py.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

import dgan.config
import dgan.enhance
from dgan.checkpoint import Checkpointer
from dgan.cli import main
from dgan.enhance import (
    EnhanceError,
    _spans,
    enhance_files,
    load_enhancer,
    tiled_apply,
    tiled_uint8,
)
from dgan.tasks import TASKS, Task


def conv_net(channels: int, scale: int, convs: int = 5, width: int = 12, seed: int = 0
             ) -> nn.Module:
    """`convs` 3x3 convs (receptive field radius `convs` input pixels) + pixel shuffle, random
    weights scaled so the output spreads over [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(convs):
        c_in = channels if i == 0 else width
        c_out = channels * scale * scale if i == convs - 1 else width
        conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g)
                              * (2.0 / (c_in * 9)) ** 0.5)
            conv.bias.zero_()
        layers += [conv, nn.LeakyReLU(0.2)] if i < convs - 1 else [conv]
    return nn.Sequential(*layers, nn.PixelShuffle(scale), nn.Tanh()).eval()


def cheap_net(channels: int = 3, scale: int = 4) -> nn.Module:
    """Nearest upsampling + one 3x3 conv: a stand-in G as cheap as it gets."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Upsample(scale_factor=scale, mode="nearest"),
                         nn.Conv2d(channels, channels, 3, padding=1), nn.Tanh()).eval()


def image(channels: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, channels, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def diff01(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(mean, max) |a - b| on the [0, 1] scale."""
    d = (a - b).abs() / 2
    return d.mean().item(), d.max().item()


class Calls(nn.Module):
    """`net`, recording the input shape of every call."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.shapes = net, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        return self.net(x)


# -- tiled == untiled ----------------------------------------------------------------------

@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("channels", [1, 3])
def test_blended_tiles_match_the_whole_image_with_a_receptive_field_beyond_the_pad(
        scale, channels):
    net = conv_net(channels, scale, convs=7)  # receptive field radius 7 > pad 4
    x = image(channels, 53, 70)
    with torch.no_grad():
        whole = net(x)
    counted = Calls(net)
    tiled = tiled_apply(counted, x, scale, tile=24, pad=4, batch=3)
    assert tiled.shape == (1, channels, 53 * scale, 70 * scale)
    # several tiles (3 rows x 4 columns), each window 32x32, a row's batched 3 at a time
    assert [s[0] for s in counted.shapes] == [3, 1] * 3
    assert {s[1:] for s in counted.shapes} == {(channels, 32, 32)}
    mean, peak = diff01(tiled, whole)
    assert mean <= 1 / 255 and peak <= 4 / 255, (mean, peak)
    assert peak > 1e-5  # the pad really is short of the receptive field

    # the same setting with hard cuts (no context, no cross-fade) shows seams: out of bounds
    mean, peak = diff01(tiled_apply(net, x, scale, tile=24, pad=4, blend=False), whole)
    assert mean > 1 / 255 or peak > 4 / 255, (mean, peak)


@pytest.mark.parametrize("h,w,tile,pad,overlap,batch", [
    (53, 70, 24, 5, None, 4),
    (53, 70, 24, 6, 0, 1),      # abutting cores, context only
    (41, 37, 10, 5, 8, 2),      # overlaps of 8 of 10: three tiles share pixels
    (30, 70, 40, 5, 3, 4),      # one row of tiles (tile > height)
    (11, 9, 6, 20, None, 4),    # windows clipped to the whole image
    (53, 70, 0, 5, None, 4),    # tile 0: one pass
    (20, 20, 64, 5, None, 4),   # tile beyond the image: one pass
])
def test_tiles_equal_the_whole_image_when_the_pad_covers_the_receptive_field(
        h, w, tile, pad, overlap, batch):
    net = conv_net(3, 2, convs=5)  # radius 5
    x = image(3, h, w, seed=h)
    with torch.no_grad():
        whole = net(x)
    tiled = tiled_apply(net, x, 2, tile=tile, pad=pad, overlap=overlap, batch=batch)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)


def test_tiles_are_evenly_spread_inside_the_image():
    assert _spans(70, 24, 4, True) == [(0, 24), (15, 39), (31, 55), (46, 70)]
    assert _spans(70, 24, 4, False) == [(0, 24), (24, 48), (48, 70)]
    assert _spans(24, 24, 4, True) == [(0, 24)] and _spans(50, 0, 0, True) == [(0, 50)]
    for length in range(25, 200, 7):
        spans = _spans(length, 24, 6, True)
        assert spans[0][0] == 0 and spans[-1][1] == length
        assert all(b - a == 24 for a, b in spans)
        assert all(b0 - a1 >= 6 for (_, b0), (a1, _) in zip(spans, spans[1:]))


def test_bad_options_and_shapes_are_one_line_errors():
    net, x = conv_net(3, 2), image(3, 16, 16)
    for kw, match in [({"tile": -1}, r"tile -1: expected an integer >= 0"),
                      ({"tile": 8, "pad": 4, "overlap": 8}, r"overlap 8: expected less than"),
                      ({"precision": "fp8"}, r"--precision fp8: expected one of"),
                      ({"precision": "fp16"}, r"--precision fp16: needs a CUDA device")]:
        with pytest.raises(EnhanceError, match=match):
            tiled_apply(net, x, 2, **kw)
    with pytest.raises(EnhanceError, match=r"G maps 16x16 pixels to 32x32, not 48x48 \(scale 3"):
        tiled_apply(net, x, 3, tile=0)


def test_bf16_on_the_cpu_is_close_to_fp32():
    net, x = conv_net(3, 2), image(3, 30, 30)
    y = tiled_apply(net, x, 2, tile=16, pad=5, precision="bf16")
    assert y.dtype == torch.float32
    mean, _ = diff01(y, tiled_apply(net, x, 2, tile=16, pad=5))
    assert 0 < mean < 4 / 255


def test_a_large_image_in_tiles_streamed_to_uint8():
    net, s = cheap_net(scale=2), 2  # receptive field radius 1
    x = image(3, 900, 1200)
    y = tiled_uint8(net, x, s, tile=256, pad=2, batch=4)
    assert y.shape == (1800, 2400, 3) and y.dtype == np.uint8
    assert len(_spans(900, 256, 2, True)) == 4 and len(_spans(1200, 256, 2, True)) == 5

    def untiled(top: int, left: int, size: int = 64, margin: int = 2) -> np.ndarray:
        """G on a crop (at the image border: G's own zero padding), less a margin inside."""
        with torch.no_grad():
            ref = net(x[..., top:top + size, left:left + size])[0]
        ref = ((ref.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0)
        a, b = (0 if top == 0 else margin) * s, (0 if left == 0 else margin) * s
        return ref.numpy()[a:(size - margin) * s, b:(size - margin) * s]

    # the image's corner, and a crop across two overlaps: rows 215-256, columns 472-492
    for top, left in [(0, 0), (198, 420)]:
        want = untiled(top, left)
        a, b = (top + (0 if top == 0 else 2)) * s, (left + (0 if left == 0 else 2)) * s
        got = y[a:a + want.shape[0], b:b + want.shape[1]]
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, (top, left)


# -- files ---------------------------------------------------------------------------------

def write_inputs(src):
    rng = np.random.default_rng(0)
    (src / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (37, 45, 3), np.uint8)).save(src / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (30, 26), np.uint8), "L").save(src / "sub" / "grey.jpg")
    rgba = rng.integers(0, 256, (21, 33, 4), np.uint8)
    rgba[..., 3] = np.linspace(0, 255, 33).astype(np.uint8)[None, :]
    Image.fromarray(rgba, "RGBA").save(src / "alpha.png")
    (src / "bad.png").write_bytes(b"not a png")


@pytest.mark.parametrize("channels", [3, 1])
def test_enhance_files_names_sizes_modes_alpha_and_a_corrupt_file(tmp_path, channels):
    src, out = tmp_path / "in", tmp_path / "out"
    write_inputs(src)
    net = conv_net(channels, 2, convs=3)
    written, skipped = enhance_files(net, 2, src, out, tile=16, pad=4, channels=channels)
    assert sorted(str(p.relative_to(out)) for p in written) == [
        "alpha.png", "rgb.png", "sub/grey.png"]
    assert [(p.name, why.split(" (")[0]) for p, why in skipped] == [
        ("bad.png", "unreadable image")]
    mode = "RGB" if channels == 3 else "L"
    with Image.open(out / "rgb.png") as img:
        assert img.size == (90, 74) and img.mode == mode
        got = np.asarray(img)
    with Image.open(out / "sub" / "grey.png") as img:
        assert img.size == (52, 60) and img.mode == mode
    with Image.open(out / "alpha.png") as img:
        assert img.size == (66, 42) and img.mode == "RGBA"
        alpha = np.asarray(img)[..., 3].astype(int)
    # the alpha ramp, upscaled: every row the same, rising left to right, ends kept
    assert (alpha == alpha[0]).all() and (np.diff(alpha[0]) >= -1).all()
    assert alpha[0, 0] <= 4 and alpha[0, -1] >= 251
    # the file's pixels are G's on the file's pixels
    with Image.open(src / "rgb.png") as img:
        arr = np.asarray(img.convert(mode), np.float32)
    x = torch.from_numpy(arr.reshape(*arr.shape[:2], channels)).permute(2, 0, 1)[None]
    with torch.no_grad():
        want = ((net(x / 127.5 - 1)[0].clamp(-1, 1) + 1) * 127.5).round().byte()
    want = want.permute(1, 2, 0).numpy().reshape(got.shape)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_enhance_files_refuses_an_out_inside_in_and_fp16_on_the_cpu(tmp_path):
    write_inputs(tmp_path / "in")
    net = conv_net(3, 2, convs=2)
    with pytest.raises(EnhanceError, match="inside the input folder"):
        enhance_files(net, 2, tmp_path / "in", tmp_path / "in" / "out", channels=3)
    with pytest.raises(EnhanceError, match="fp16: needs a CUDA device"):
        enhance_files(net, 2, tmp_path / "in", tmp_path / "o", precision="fp16", channels=3)
    assert not (tmp_path / "o").exists()


# -- a run of a stand-in SR task: load_enhancer and the CLI --------------------------------

class StandInSR(Task):
    """What load_enhancer needs of the SR task: G from the config, scale sr.scale."""

    name = "sr_test"
    models = ("pix2pix",)
    own_keys = ("sr.scale",)
    takes_labels = False

    def network_names(self) -> tuple[str, ...]:
        return ("G",)

    def build_networks(self) -> dict[str, nn.Module]:
        c, s = self.cfg.data.channels, self.cfg.sr.scale
        return {"G": nn.Sequential(nn.Conv2d(c, c * s * s, 3, padding=1), nn.PixelShuffle(s))}


@pytest.fixture
def sr_run(tmp_path, monkeypatch):
    """A run with checkpoints of steps 3 and 5 of task sr_test at x2, RGB; G_ema differs
    from G (and between the steps)."""
    monkeypatch.setitem(TASKS, "sr_test", StandInSR)
    monkeypatch.setattr(dgan.enhance, "ENHANCEMENT_TASKS", ("sr", "sr_test"))
    cfg = OmegaConf.merge(OmegaConf.structured(dgan.config.Config), {
        "task": {"name": "sr_test"}, "model": {"name": "pix2pix"},
        "data": {"channels": 3, "resolution": 32}, "sr": {"scale": 2},
        "train": {"precision": "fp32"}})
    run = tmp_path / "run"
    ck = Checkpointer(run, rank=0, world_size=1, keep=5, async_save=False)
    for step in (3, 5):
        torch.manual_seed(step)
        g, ema = StandInSR(cfg).build_networks()["G"], StandInSR(cfg).build_networks()["G"]
        ck.save(step, {"step": step, "images_seen": 0,
                       "config": OmegaConf.to_container(cfg, resolve=True),
                       "G": g.state_dict(), "G_ema": ema.state_dict()}, {}, {}, blocking=True)
    ck.close()
    return run, ema


def test_load_enhancer_reads_g_ema_of_the_newest_or_chosen_checkpoint(sr_run, tmp_path):
    run, ema = sr_run
    e = load_enhancer(run, device="cpu")
    assert (e.scale, e.step, e.channels) == (2, 5, 3)
    x = image(3, 20, 30)
    with torch.no_grad():
        torch.testing.assert_close(e(x, tile=8, pad=1), ema(x), atol=1e-5, rtol=0)
    assert not e.net.training and not any(p.requires_grad for p in e.parameters())
    assert load_enhancer(run, 3, device="cpu").step == 3
    with pytest.raises(EnhanceError, match="has no checkpoint of step 4"):
        load_enhancer(run, 4)
    with pytest.raises(FileNotFoundError, match="no such run"):
        load_enhancer(tmp_path / "nope")


def test_cli_enhances_a_folder(sr_run, tmp_path, capsys):
    run, _ = sr_run
    src, out = tmp_path / "in", tmp_path / "out"
    write_inputs(src)
    assert main(["enhance", "--run", str(run), str(src), str(out), "--scale", "2",
                 "--tile", "16", "--tile-pad", "2"]) == 0
    io = capsys.readouterr()
    assert "enhanced 3 image(s) x2 (step 5)" in io.out and "skipped 1" in io.out
    assert "bad.png: unreadable image" in io.err
    with Image.open(out / "rgb.png") as img:
        assert img.size == (90, 74) and img.mode == "RGB"


def test_cli_errors_are_one_line(sr_run, tmp_path, capsys):
    run, _ = sr_run
    write_inputs(tmp_path / "in")
    src, out = str(tmp_path / "in"), str(tmp_path / "o")
    cases = [
        (["enhance", "--run", str(tmp_path / "nope"), src, out], "no such run"),
        (["enhance", "--run", str(run), "--scale", "4", src, out],
         f"--scale 4: {run} is a x2 model (sr.scale=2)"),
        (["enhance", "--run", str(run), "--precision", "fp16", src, out],
         "--precision fp16: needs a CUDA device"),
        (["enhance", "--run", str(run), "--ckpt", "4", src, out], "has no checkpoint of step 4"),
        (["enhance", "--run", str(run), "--tile", "8", "--tile-pad", "-1", src, out],
         "pad -1: expected an integer >= 0"),
        (["enhance", "--run", str(run), str(tmp_path / "missing"), out],
         "no such file or folder"),
    ]
    for argv, message in cases:
        if "fp16" in argv and torch.cuda.is_available():
            continue  # G goes to the GPU, where fp16 is allowed
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
    assert not (tmp_path / "o").exists()


def test_cli_refuses_a_run_of_another_task(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(TASKS, "sr_test", StandInSR)
    cfg = OmegaConf.merge(OmegaConf.structured(dgan.config.Config),
                          {"model": {"name": "dcgan"}, "train": {"precision": "fp32"}})
    run = tmp_path / "run"
    ck = Checkpointer(run, rank=0, world_size=1, keep=5, async_save=False)
    ck.save(1, {"step": 1, "images_seen": 0, "config": OmegaConf.to_container(cfg),
                "G_ema": {}}, {}, {}, blocking=True)
    ck.close()
    assert main(["enhance", "--run", str(run), str(tmp_path), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a task.name=dcgan run; dgan enhance takes" in err[0], err
    assert "use dgan sample" in err[0]
