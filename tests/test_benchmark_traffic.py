"""benchmarks/traffic.py counts bytes the way its table claims (it backs numbers in RESULTS.md)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "traffic.py"


def _traffic():
    import sys

    if str(_PATH.parent) not in sys.path:  # as when run as a script: its siblings import
        sys.path.insert(0, str(_PATH.parent))
    spec = importlib.util.spec_from_file_location("traffic", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_counts_distinct_input_spans_and_outputs() -> None:
    traffic = _traffic()
    a = torch.randn(4, 8)
    col = torch.randn(4, 1)
    with traffic.Traffic() as t:
        b = a + a.t().t()  # a view of the same storage counted as its own input span
        c = a * col.expand(4, 8)  # a broadcast reads its 4 elements, not 32
        a.view(32)  # views move nothing
    assert b.shape == c.shape
    rd, wr, k = t.bytes["pointwise"]
    assert k == 2
    assert rd == (128 + 128) + (128 + 16)
    assert wr == 128 + 128


def test_tiny_recipe_counts_every_phase_with_the_fused_stand_ins() -> None:
    traffic = _traffic()
    args = argparse.Namespace(ops="fused", batch=4, resolution=32, channel_base=256,
                              channel_max=32, z_dim=32)
    result = traffic.count(args)
    assert list(result) == ["Gmain", "Greg", "Dmain", "Dreg"]
    for name, t in result.items():
        assert t.bytes["conv"][0] > 0, name
        assert t.bytes["triton bias_act"][2] > 0, name
        assert t.bytes["triton upfirdn2d"][2] > 0, name
        if name.startswith("G"):
            assert t.bytes["triton scale_bias_act"][2] > 0, name
    ref = traffic.count(argparse.Namespace(**{**vars(args), "ops": "reference"}))
    assert "triton bias_act" not in ref["Gmain"].bytes
    assert ref["Gmain"].bytes["fir (depthwise conv)"][2] > 0
