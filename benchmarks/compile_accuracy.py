"""How far the compiled regularisation phases are from an fp64 answer, next to eager fp32.

The path-length (G) and R1 (D) phases of a tiny StyleGAN2 G and D, fp32 with TF32 off:
eager with autograd's double backward (the eager default), eager with the inner gradient
written out as forward ops (what the compiled graphs run), and the compiled phase; each
against the same phase in fp64 with the reference ops. Errors are max |a - b| over
max(|fp64|, 1), for the loss and for the worst parameter gradient. Random numbers are drawn
in fp32 in every variant (and cast), so all of them see the same draws.

    python benchmarks/compile_accuracy.py [--device cuda] [--backend inductor]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator

import torch
import torch._dynamo
import torch._inductor.config

from dgan import ops
from dgan.models import _stylegan2_d, stylegan2
from dgan.ops import double_backward

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))
from test_ops_compile import fixed_style_mixing, tiny_stylegan2  # the GPU test's


@contextlib.contextmanager
def _fp32_draws() -> Iterator[None]:
    """``randn``/``randn_like`` draw fp32 and cast, so fp64 runs see the fp32 numbers."""
    randn, randn_like = torch.randn, torch.randn_like

    def _randn(*size, dtype=None, **kw):
        return randn(*size, dtype=torch.float32, **kw).to(dtype or torch.float32)

    def _randn_like(x, *, dtype=None, **kw):
        return randn_like(x, dtype=torch.float32, **kw).to(dtype or x.dtype)

    torch.randn, torch.randn_like = _randn, _randn_like
    try:
        yield
    finally:
        torch.randn, torch.randn_like = randn, randn_like


def _greg(G, z, g_kw, fixed: bool) -> Callable:
    def phase(g):
        G.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        mixing = fixed_style_mixing() if fixed else contextlib.nullcontext()
        with double_backward(), _fp32_draws(), mixing:
            img, grad = g(z.to(next(G.parameters()).dtype), **g_kw)
        loss = grad.square().sum(2).mean(1).sqrt().mean() + img[:, 0, 0, 0].mean() * 0
        loss.backward()
        return loss.detach().double(), [p.grad.double() for p in G.parameters()]
    return phase


def _dreg(D, real) -> Callable:
    def phase(d):
        D.zero_grad(set_to_none=True)
        x = real.to(next(D.parameters()).dtype).detach().requires_grad_(True)
        with double_backward():
            logits, grad = d(x, input_grad=True)
        loss = grad.square().sum(dim=[1, 2, 3]).mean() + logits.mean() * 0
        loss.backward()
        return loss.detach().double(), [p.grad.double() for p in D.parameters()]
    return phase


def _err(a, b) -> tuple[float, float]:
    def one(x, y):
        return float((x - y).abs().max()) / max(float(y.abs().max()), 1.0)
    return one(a[0], b[0]), max(one(x, y) for x, y in zip(a[1], b[1]))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backend", default=None, help="inductor on CUDA, aot_eager on the CPU")
    p.add_argument("--mixing", type=float, nargs="+", default=[0.0, 0.9])
    p.add_argument("--fixed-mixing", action="store_true",
                   help="style-mixing draws replaced by fixed values (path-length noise stays)")
    p.add_argument("--no-dreg", action="store_true")
    args = p.parse_args(argv)
    backend = args.backend or ("inductor" if args.device == "cuda" else "aot_eager")
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    print(f"device {args.device}  backend {backend}  torch {torch.__version__}  fp32, TF32 off")
    print(f"{'phase':<16}{'variant':<22}{'loss err':>12}{'grad err':>12}   (vs fp64 reference)")
    for mixing in args.mixing:
        G, D, z, real = tiny_stylegan2(args.device)
        g_kw = {"style_mixing_prob": mixing, "path_length": True, "noise_mode": "const"}
        for name, net, phase in ((f"Greg mix {mixing}", G, _greg(G, z, g_kw, args.fixed_mixing)),
                                 ("Dreg", D, _dreg(D, real))):
            if name == "Dreg" and (mixing != args.mixing[0] or args.no_dreg):
                continue
            ops.set_impl("reference")
            net.double()
            ref = phase(net)
            net.float()
            ops.set_impl("fused")
            rows = {"eager autograd": phase(net)}
            stylegan2.EAGER_PL_VJP = _stylegan2_d.EAGER_R1_VJP = True
            try:
                rows["eager written-out"] = phase(net)
            finally:
                stylegan2.EAGER_PL_VJP = _stylegan2_d.EAGER_R1_VJP = False
            with torch._inductor.config.patch(fallback_random=True):
                rows["compiled"] = phase(torch.compile(net, backend=backend, fullgraph=True,
                                                       dynamic=False))
            torch._dynamo.reset()
            for variant, r in rows.items():
                le, ge = _err(r, ref)
                print(f"{name:<16}{variant:<22}{le:>12.2e}{ge:>12.2e}", flush=True)
            le, ge = _err(rows["compiled"], rows["eager written-out"])
            print(f"{name:<16}{'compiled vs written':<22}{le:>12.2e}{ge:>12.2e}   (fp32 vs fp32)")
    ops.set_impl(None)


if __name__ == "__main__":
    main()
