"""`dgan ckpt export --format torchscript|onnx` of translation runs: one graph per
direction that translates like `dgan translate` on sides that are multiples of the
network's `multiple`, at any batch size and image size."""

from __future__ import annotations

import pytest
import torch
from test_cyclegan import config as cyclegan_config
from test_cyclegan import fit as fit_cyclegan
from test_pix2pix import config as pix2pix_config
from test_pix2pix import fit as fit_pix2pix

from dgan.cli import main
from dgan.translate import load_translator


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("export-translators")
    fit_pix2pix(pix2pix_config(base / "p2p", "train.steps=2", "checkpoint.every=2",
                               "log.every=2"))
    fit_cyclegan(cyclegan_config(base / "cyc", "train.steps=2", "checkpoint.every=2",
                                 "log.every=2"))
    return {"pix2pix": base / "p2p", "cyclegan": base / "cyc"}


FILES = {"pix2pix": {"G": None}, "cyclegan": {"G_AB": "AtoB", "G_BA": "BtoA"}}


def _inputs(t):
    """Two sizes the graphs were not traced at: batch 3, sides 2 and 3 multiples."""
    m = t.multiple
    gen = torch.Generator().manual_seed(1)
    return [torch.rand(3, t.channels, 2 * m, 3 * m, generator=gen) * 2 - 1,
            torch.rand(1, t.channels, 3 * m, 2 * m, generator=gen) * 2 - 1]


@pytest.mark.parametrize("task", ["pix2pix", "cyclegan"])
def test_torchscript_graphs_translate_like_the_run(runs, task, tmp_path, capsys):
    out = tmp_path / "ts"
    assert main(["ckpt", "export", str(runs[task]), str(out), "--format", "torchscript"]) == 0
    said = capsys.readouterr().out
    names = FILES[task]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{n}.torchscript.pt" for n in names] + ["config.yaml"])
    assert " and ".join(names) in said
    for name, direction in names.items():
        t = load_translator(runs[task], direction=direction)
        graph = torch.jit.load(str(out / f"{name}.torchscript.pt"))
        for x in _inputs(t):
            torch.testing.assert_close(graph(x), t(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("task", ["pix2pix", "cyclegan"])
def test_onnx_graphs_translate_like_the_run(runs, task, tmp_path):
    onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")
    pytest.importorskip("onnxscript", reason="the onnx extra is not installed")
    from onnx.reference import ReferenceEvaluator

    out = tmp_path / "onnx"
    assert main(["ckpt", "export", str(runs[task]), str(out), "--format", "onnx"]) == 0
    for name, direction in FILES[task].items():
        t = load_translator(runs[task], direction=direction)
        proto = onnx.load(str(out / f"{name}.onnx"))
        onnx.checker.check_model(proto)
        meta = {p.key: p.value for p in proto.metadata_props}
        assert meta["dgan.inputs"] == "image" and int(meta["dgan.multiple"]) == t.multiple
        assert meta["dgan.step"] == "2"
        evaluator = ReferenceEvaluator(proto)
        for x in _inputs(t)[:1]:  # the reference evaluator is slow: one size
            (got,) = evaluator.run(None, {"image": x.numpy()})
            torch.testing.assert_close(torch.from_numpy(got), t(x), atol=1e-4, rtol=0)
