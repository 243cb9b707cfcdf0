"""`dgan sample` and `dgan ckpt export` through the CLI: seeds, classes, truncation, noise
modes, checkpoints, exports and interpolation strips."""

import hashlib
import json
import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from dgan.cli import main
from dgan.data.builtin import make_builtin
from dgan.images import to_uint8
from dgan.sample import generate, load_generator

from test_stylegan2_train import sg2_config
from test_train import fit, small_config

DIGITS = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A class-conditional DCGAN on MNIST with checkpoints at steps 3 and 6."""
    d = tmp_path_factory.mktemp("sample") / "run"
    fit(small_config(d, "train.steps=6", "checkpoint.every=3"))
    return d


@pytest.fixture(scope="module")
def sg2_export(tmp_path_factory):
    """An unconditional StyleGAN2 export whose noise inputs are turned up to strength 1 (two
    training steps leave them near their initial 0, where noise modes could not be told
    apart)."""
    root = tmp_path_factory.mktemp("sg2")
    make_builtin("stacked_mnist", root / "data", resolution=32, samples=64, per_shard=64)
    fit(sg2_config(root / "run", root / "data", "train.steps=2", "model.conditional=false"))
    assert main(["ckpt", "export", str(root / "run"), str(root / "export")]) == 0
    weights = str(root / "export" / "G_ema.safetensors")
    tensors = load_file(weights)
    strengths = [k for k in tensors if k.endswith("noise_strength")]
    assert strengths
    tensors.update({k: torch.ones_like(tensors[k]) for k in strengths})
    save_file(tensors, weights, metadata={"step": "2", "c_dim": "0"})
    return root / "export"


def sample(run, out, *args):
    return main(["sample", "--run", str(run), "--out", str(out), *args])


def digests(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def pixels(path):
    return np.asarray(Image.open(path)).astype(int)


def test_same_seed_same_bytes(run_dir, tmp_path):
    assert sample(run_dir, tmp_path / "a", "--n", "10", "--seed", "5") == 0
    assert sample(run_dir, tmp_path / "b", "--n", "10", "--seed", "5", "--grid") == 0
    a, b = digests(tmp_path / "a"), digests(tmp_path / "b")
    assert sorted(a) == [f"seed{s:06d}.png" for s in range(5, 15)] and b.pop("grid.png")
    assert a == b
    assert sample(run_dir, tmp_path / "c", "--n", "10", "--seed", "6") == 0
    assert digests(tmp_path / "c") != a


def test_image_depends_only_on_its_seed(run_dir, tmp_path):
    assert sample(run_dir, tmp_path / "one", "--seeds", "5") == 0
    assert sample(run_dir, tmp_path / "many", "--seeds", "0-9,200") == 0
    assert sample(run_dir, tmp_path / "n", "--n", "3", "--seed", "4") == 0
    one, many, n = (digests(tmp_path / d) for d in ("one", "many", "n"))
    assert len(many) == 11 and "seed000200.png" in many and len(n) == 3
    assert one["seed000005.png"] == many["seed000005.png"] == n["seed000005.png"]
    assert len(set(many.values())) == 11


@pytest.mark.parametrize("args, expected", [
    (["--seeds", "9-2"], "--seeds 9-2: expected seeds and ranges like 0-99,200"),
    (["--seeds", "1,x"], "not 'x'"),
    (["--seeds", "1,1"], "a seed is given twice"),
    (["--seeds", "1", "--n", "3"], "--seeds replaces --n and --seed"),
    (["--seeds", "1", "--trunc", "0.7"], "only StyleGAN2 generators have truncation"),
    (["--seeds", "1", "--noise-mode", "random"], "only StyleGAN2 generators have noise"),
    (["--seeds", "1", "--class", "12"], "class '12': expected one of 0, 1, 2"),
    (["--seeds", "1", "--ckpt", "4"], "has no checkpoint of step 4 (steps: 3, 6)"),
    (["--seeds", "1", "--ckpt", "nowhere"], "expected a step number or a checkpoint directory"),
    (["--seeds", "1", "--interpolate"], "interpolation needs two or more seeds"),
    (["--n", "0"], "seeds (none): expected one or more seeds >= 0"),
    (["--n", "2", "--seed", "-1"], "seeds -1, 0: expected one or more seeds >= 0"),
])
def test_bad_requests_are_one_line_errors(run_dir, tmp_path, capsys, args, expected):
    assert sample(run_dir, tmp_path / "o", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("dgan: error: ") and err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "o").exists()


def test_class_by_name_or_index(run_dir, tmp_path):
    g = load_generator(run_dir)
    assert g.class_names == DIGITS
    assert sample(run_dir, tmp_path / "three", "--seeds", "0-3", "--class", "3") == 0
    assert sample(run_dir, tmp_path / "four", "--seeds", "0-3", "--class", "4") == 0
    expected = to_uint8(generate(g, range(4), class_idx=3))
    for s in range(4):
        name = f"seed{s:06d}.png"
        got = pixels(tmp_path / "three" / name)
        assert np.array_equal(got, expected[s, ..., 0])
        assert not np.array_equal(got, pixels(tmp_path / "four" / name))


def test_ckpt_by_step_or_path(run_dir, tmp_path):
    step3 = run_dir / "checkpoints" / "step-00000003"
    assert sample(run_dir, tmp_path / "latest", "--seeds", "0-3") == 0
    assert sample(run_dir, tmp_path / "by_step", "--seeds", "0-3", "--ckpt", "3") == 0
    assert sample(run_dir, tmp_path / "by_path", "--seeds", "0-3", "--ckpt", str(step3)) == 0
    assert sample(step3, tmp_path / "checkpoint", "--seeds", "0-3") == 0
    by_step = digests(tmp_path / "by_step")
    assert by_step == digests(tmp_path / "by_path") == digests(tmp_path / "checkpoint")
    assert by_step != digests(tmp_path / "latest")


def test_export_keeps_class_names_with_umask_permissions(run_dir, tmp_path):
    old = os.umask(0o022)
    try:
        assert main(["ckpt", "export", str(run_dir), str(tmp_path / "export")]) == 0
    finally:
        os.umask(old)
    for name in ("G_ema.safetensors", "config.yaml", "classes.json"):
        assert stat.S_IMODE((tmp_path / "export" / name).stat().st_mode) == 0o644, name
    assert json.loads((tmp_path / "export" / "classes.json").read_text()) == DIGITS
    g = load_generator(tmp_path / "export")
    assert g.class_names == DIGITS and g.step == 6 and g.c_dim == 10
    assert sample(tmp_path / "export", tmp_path / "a", "--seeds", "0-3", "--class", "7") == 0
    assert sample(run_dir, tmp_path / "b", "--seeds", "0-3", "--class", "7") == 0
    assert digests(tmp_path / "a") == digests(tmp_path / "b")


def test_stylegan2_truncation_and_noise_modes(sg2_export, tmp_path):
    def run(name, *args):
        assert sample(sg2_export, tmp_path / name, "--seeds", "0-2", *args) == 0
        return digests(tmp_path / name)

    # psi 0: every seed's w is w_avg, and constant noise leaves nothing else to differ
    assert len(set(run("psi0", "--trunc", "0").values())) == 1
    assert len(set(run("psi0_random", "--trunc", "0", "--noise-mode", "random").values())) == 3
    const, none, random = run("const"), run("none", "--noise-mode", "none"), run(
        "random", "--noise-mode", "random")
    assert const == run("const2", "--noise-mode", "const")
    for name in const:
        assert len({const[name], none[name], random[name]}) == 3
    assert run("psi", "--trunc", "0.5") != const
    # random noise comes from the image's own seed too
    assert sample(sg2_export, tmp_path / "one", "--seeds", "2", "--noise-mode", "random") == 0
    assert digests(tmp_path / "one")["seed000002.png"] == random["seed000002.png"]


def test_stylegan2_unconditional_refuses_a_class(sg2_export, tmp_path, capsys):
    assert sample(sg2_export, tmp_path / "o", "--seeds", "1", "--class", "0") == 2
    assert "this generator is unconditional" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["dcgan", "stylegan2"])
def test_interpolation_strip(model, run_dir, sg2_export, tmp_path):
    src = run_dir if model == "dcgan" else sg2_export
    assert sample(src, tmp_path / "strip", "--seeds", "1,2,3", "--interpolate",
                  "--frames", "4") == 0
    assert sample(src, tmp_path / "ends", "--seeds", "1,2,3") == 0
    strip = pixels(tmp_path / "strip" / "interpolation.png")
    r = 28 if model == "dcgan" else 32
    assert strip.shape[:2] == (r + 4, 9 * (r + 2) + 2)  # 2 pairs x 4 frames + the last seed
    tiles = [strip[2:2 + r, 2 + i * (r + 2):2 + i * (r + 2) + r] for i in range(9)]
    for i, seed in ((0, 1), (4, 2), (8, 3)):  # the seeds' own images (to rounding)
        assert np.abs(tiles[i] - pixels(tmp_path / "ends" / f"seed{seed:06d}.png")).max() <= 1
    assert np.abs(tiles[2] - tiles[0]).max() > 1 and np.abs(tiles[2] - tiles[4]).max() > 1


def test_sample_from_missing_run(tmp_path, capsys):
    assert sample(tmp_path, tmp_path / "o", "--n", "1") == 2
    assert str(tmp_path) in capsys.readouterr().err


def test_ckpt_inspect(run_dir, capsys):
    assert main(["ckpt", "inspect", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "step         6" in out and "world size   1" in out and "backend      ddp" in out


def test_interpolation_video(run_dir, tmp_path, capsys):
    """With PyAV installed the strip comes with an MP4 of the same frames: as many frames,
    enlarged to >= 256 px, the ends the seeds' own images (to lossy-codec error)."""
    av = pytest.importorskip("av", reason="the video extra is not installed")
    assert sample(run_dir, tmp_path / "v", "--seeds", "1,2", "--interpolate", "--frames", "6",
                  "--fps", "12", "--video") == 0
    assert "interpolation.mp4" in capsys.readouterr().out
    assert sample(run_dir, tmp_path / "ends", "--seeds", "1,2") == 0
    with av.open(str(tmp_path / "v" / "interpolation.mp4")) as container:
        stream = container.streams.video[0]
        assert float(stream.average_rate) == 12
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(frames) == 7 and frames[0].shape == (280, 280, 3)  # 28 px x 10
    for frame, seed in ((frames[0], 1), (frames[-1], 2)):
        small = frame[5::10, 5::10, 0].astype(np.float64)  # centre of each 10x10 block
        want = pixels(tmp_path / "ends" / f"seed{seed:06d}.png").astype(np.float64)
        assert np.abs(small - want.reshape(small.shape)).mean() < 8
    assert sample(run_dir, tmp_path / "nv", "--seeds", "1,2", "--interpolate",
                  "--no-video") == 0
    assert sorted(p.name for p in (tmp_path / "nv").iterdir()) == ["interpolation.png"]


def test_interpolation_video_without_an_encoder(run_dir, tmp_path, capsys, monkeypatch):
    import dgan.sample

    monkeypatch.setattr(dgan.sample, "video_encoder", lambda: None)
    assert sample(run_dir, tmp_path / "a", "--seeds", "1,2", "--interpolate") == 0
    assert "pip install 'dgan[video]'" in capsys.readouterr().out  # told how to get one
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["interpolation.png"]
    assert sample(run_dir, tmp_path / "b", "--seeds", "1,2", "--interpolate", "--video") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'dgan[video]'" in err[0]
    assert not (tmp_path / "b").exists()
    assert sample(run_dir, tmp_path / "c", "--seeds", "1,2", "--interpolate", "--fps", "0") == 2
    assert "--fps 0" in capsys.readouterr().err
