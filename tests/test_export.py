"""`dgan ckpt export --format safetensors|torchscript|onnx` through the CLI: every format
loads back and gives G_ema's images for the same z; what cannot be exported is one line."""

import json
import os
import stat
import sys

import pytest
import torch
from safetensors.torch import load_file
from test_stylegan2_train import sg2_config
from test_train import fit, small_config

from dgan.cli import main
from dgan.data.builtin import make_builtin
from dgan.sample import load_generator

FILES = {"safetensors": "G_ema.safetensors", "torchscript": "G_ema.torchscript.pt",
         "onnx": "G_ema.onnx"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two trained runs: a class-conditional DCGAN (MNIST) and a class-conditional
    StyleGAN2 (Stacked MNIST, 32x32), two steps each."""
    root = tmp_path_factory.mktemp("export")
    fit(small_config(root / "dcgan", "train.steps=2", "checkpoint.every=2"))
    make_builtin("stacked_mnist", root / "data", resolution=32, samples=64, per_shard=64)
    fit(sg2_config(root / "sg2", root / "data", "train.steps=2"))
    return {"dcgan": root / "dcgan", "stylegan2": root / "sg2"}


def export(run, out, *args):
    old = os.umask(0o022)
    try:
        return main(["ckpt", "export", str(run), str(out), *args])
    finally:
        os.umask(old)


def inputs_and_expected(run, n=5, psi=0.5):  # traced with psi 0.7
    """Inputs of the graph formats for n images, and G_ema's own images for them
    (StyleGAN2: noise 'const', truncation psi)."""
    g = load_generator(run)
    gen = torch.Generator().manual_seed(123)
    z = torch.randn(n, g.z_dim, generator=gen)
    c = torch.nn.functional.one_hot(torch.arange(n) % g.c_dim, g.c_dim).float()
    stylegan = hasattr(g.net, "mapping")
    kw = {"truncation_psi": psi, "noise_mode": "const"} if stylegan else {}
    with torch.no_grad():
        expected = g(z, c, **kw)
    inputs = (z, c, torch.tensor(psi)) if stylegan else (z, c)
    return g, inputs, expected


def check_folder(out, fmt, g):
    """config.yaml, classes.json and the weights with the umask's permissions."""
    for name in (FILES[fmt], "config.yaml", "classes.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name
    assert json.loads((out / "classes.json").read_text()) == g.class_names
    assert len(g.class_names) == g.c_dim > 0


@pytest.mark.parametrize("model", ["dcgan", "stylegan2"])
def test_safetensors_is_the_default_and_loads_back(runs, model, tmp_path):
    assert export(runs[model], tmp_path / "default") == 0
    assert export(runs[model], tmp_path / "st", "--format", "safetensors") == 0
    a, b = (str(tmp_path / d / FILES["safetensors"]) for d in ("default", "st"))
    ta, tb = load_file(a), load_file(b)
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert sorted(p.name for p in (tmp_path / "st").iterdir()) == sorted(
        ["G_ema.safetensors", "config.yaml", "classes.json"])
    g, inputs, expected = inputs_and_expected(runs[model])
    check_folder(tmp_path / "st", "safetensors", g)
    loaded = load_generator(tmp_path / "st")
    assert loaded.class_names == g.class_names and loaded.step == g.step == 2
    kw = {"truncation_psi": 0.5, "noise_mode": "const"} if model == "stylegan2" else {}
    with torch.no_grad():
        assert torch.equal(loaded(*inputs[:2], **kw), expected)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
@pytest.mark.parametrize("model", ["dcgan", "stylegan2"])
def test_torchscript_gives_the_same_images(runs, model, tmp_path, capsys):
    assert export(runs[model], tmp_path / "ts", "--format", "torchscript") == 0
    assert "G_ema.torchscript.pt" in capsys.readouterr().out
    g, inputs, expected = inputs_and_expected(runs[model])  # 5 images; traced with 2
    check_folder(tmp_path / "ts", "torchscript", g)
    extra = {"dgan.json": ""}
    ts = torch.jit.load(str(tmp_path / "ts" / FILES["torchscript"]), _extra_files=extra)
    with torch.no_grad():
        got = ts(*inputs)
    assert got.shape == expected.shape == (5, g.channels, g.resolution, g.resolution)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    meta = json.loads(extra["dgan.json"])
    assert meta["step"] == "2" and meta["inputs"][:2] == ["z", "c"]
    # dgan itself reads the safetensors export: a graph folder is one clear line
    assert main(["sample", "--run", str(tmp_path / "ts"), "--out", str(tmp_path / "s"),
                 "--seeds", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "G_ema.torchscript.pt" in err and "--format safetensors" in err


@pytest.mark.parametrize("model", ["dcgan", "stylegan2"])
def test_onnx_gives_the_same_images(runs, model, tmp_path):
    pytest.importorskip("onnx", reason="the onnx extra is not installed (pip install "
                        "'dgan[onnx]')")
    pytest.importorskip("onnxscript", reason="the onnx extra is not installed")
    import onnx
    from onnx.reference import ReferenceEvaluator

    assert export(runs[model], tmp_path / "onnx", "--format", "onnx") == 0
    g, inputs, expected = inputs_and_expected(runs[model], n=3)  # traced with 2
    check_folder(tmp_path / "onnx", "onnx", g)
    model_proto = onnx.load(str(tmp_path / "onnx" / FILES["onnx"]))
    onnx.checker.check_model(model_proto)
    meta = {p.key: p.value for p in model_proto.metadata_props}
    names = meta["dgan.inputs"].split(",")
    assert meta["dgan.step"] == "2" and names[:2] == ["z", "c"]
    feeds = {name: x.numpy() for name, x in zip(names, inputs)}
    (got,) = ReferenceEvaluator(model_proto).run(None, feeds)
    torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-4, rtol=0)


class _Opaque(torch.autograd.Function):
    """A Python autograd Function, as the fused ops are: TorchScript cannot save one."""

    @staticmethod
    def forward(ctx, x):
        return x * 1

    @staticmethod
    def backward(ctx, grad):
        return grad


def test_an_unexportable_op_is_one_line_naming_it(runs, tmp_path, capsys, monkeypatch):
    from dgan.models import dcgan

    forward = dcgan.Generator.forward
    monkeypatch.setattr(dcgan.Generator, "forward",
                        lambda self, z, c=None: _Opaque.apply(forward(self, z, c)))
    assert export(runs["dcgan"], tmp_path / "ts", "--format", "torchscript") == 2
    err = capsys.readouterr().err
    assert err.startswith("dgan: error: ") and err.count("\n") == 1, err
    assert "_Opaque" in err and "torchscript" in err
    assert not (tmp_path / "ts").exists()  # nothing half-written


def test_an_op_onnx_cannot_translate_is_named(runs, tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnx", reason="the onnx extra is not installed")
    pytest.importorskip("onnxscript", reason="the onnx extra is not installed")
    from dgan.models import dcgan

    @torch.library.custom_op("dgantest::opaque", mutates_args=())
    def opaque(x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @opaque.register_fake
    def _(x):
        return torch.empty_like(x)

    forward = dcgan.Generator.forward
    monkeypatch.setattr(dcgan.Generator, "forward",
                        lambda self, z, c=None: opaque(forward(self, z, c)))
    assert export(runs["dcgan"], tmp_path / "onnx", "--format", "onnx") == 2
    err = capsys.readouterr().err
    assert err.startswith("dgan: error: ") and err.count("\n") == 1, err
    assert "dgantest" in err and "opaque" in err


def test_onnx_without_the_extra_is_one_line(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx fails, as without the extra
    assert export(runs["dcgan"], tmp_path / "onnx", "--format", "onnx") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'dgan[onnx]'" in err, err
    assert not (tmp_path / "onnx").exists()
