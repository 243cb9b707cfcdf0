"""The fused upfirdn2d inside ``torch.compile``: the ``dgan::upfirdn2d`` custom op.

Checks that need the Triton kernel run on the CPU under ``TRITON_INTERPRET=1``, each in a
fresh interpreter process (as in ``test_ops_triton.py``): the op against the reference
(forward, first and second derivatives, both layouts, ``torch.library.opcheck``), and a tiny
StyleGAN2 G and D compiled with Inductor while ``set_impl('fused')`` forces the fused path:
no graph breaks, the op in the generated code, and outputs and gradients equal to eager.
The dispatch rule and the fake (tracing) implementation are checked in-process.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch

from dgan import ops
from dgan.ops import _dispatch

pytest.importorskip("triton")

UPFIRDN2D_CASES = [  # up, down, padding (x0, x1, y0, y1), filter
    (1, 1, (1, 2, 1, 2), "sep"), (2, 1, (2, 1, 2, 1), "sep"), (1, 2, (1, 1, 1, 1), "sep"),
    (2, 2, (0, 1, 2, -1), "full"), (1, 1, (-1, 2, 0, 0), "full"), (1, 1, (0, 0, 0, 0), None),
]


def _close(a, b, tol: float = 1e-5) -> None:
    a, b = a.detach(), b.detach()
    scale = max(float(b.abs().max()), 1.0)
    err = float((a.double() - b.double()).abs().max())
    assert err <= tol * scale, f"max abs err {err} > {tol} * {scale}"


def _op_args(x, f, up, down, pad, flip_filter=False, gain=1.0):
    """``torch.ops.dgan.upfirdn2d`` arguments for ``upfirdn2d(x, f, up, down, pad, ...)``."""
    from dgan.ops.upfirdn2d import _fused_filter, _is_channels_last

    f2d = _fused_filter(f, flip_filter, gain, x.device)
    return (x, f2d, up, up, down, down, *pad, _is_channels_last(x))


# -- in-process ------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["fused", "reference", "auto"])
def test_compiled_regions_keep_only_upfirdn2d_fused(impl: str) -> None:
    """Inside torch.compile, upfirdn2d follows the switch; every other op takes the reference."""

    def choices(x):
        out = [x.sum() * 0 + float(_dispatch.use_fused(op, x))
               for op in ("upfirdn2d", "bias_act", "modulate_weight", "conv2d")]
        return torch.stack(out)

    ops.set_impl(impl)
    try:
        x = torch.ones(2)
        eager = choices(x).tolist()
        compiled = torch.compile(choices, backend="eager", fullgraph=True)(x).tolist()
    finally:
        ops.set_impl(None)
        torch._dynamo.reset()
    fused = impl == "fused"  # CPU tensors: 'auto' picks the reference
    assert eager == [float(fused)] * 4
    assert compiled == [float(fused), 0.0, 0.0, 0.0]


def test_explicit_impl_is_respected_inside_compile() -> None:
    def choice(x):
        return x + float(_dispatch.use_fused("bias_act", x, "fused"))

    try:
        out = torch.compile(choice, backend="eager", fullgraph=True)(torch.zeros(1))
    finally:
        torch._dynamo.reset()
    assert out.item() == 1.0


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "one_channel", "strided"])
def test_fake_op_has_the_kernels_shape_dtype_and_layout(layout: str) -> None:
    """The fake implementation (what the compiler plans with) follows ``launch``'s rule:
    channels_last output for channels_last input, contiguous for everything else."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from dgan.ops.upfirdn2d import _is_channels_last, upfirdn2d_reference

    c = 1 if layout == "one_channel" else 3
    x = torch.randn(2, c, 9, 7, dtype=torch.bfloat16)
    if layout in ("channels_last", "one_channel"):
        x = x.to(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.randn(2, c, 9, 14, dtype=torch.bfloat16)[..., ::2]
    f = ops.setup_filter([1, 3, 3, 1])
    for up, down, pad, kind in UPFIRDN2D_CASES:
        ff = f if kind == "sep" else (torch.ones(3, 4) if kind == "full" else None)
        want = upfirdn2d_reference(x.float(), ff, up, down, pad).shape
        args = _op_args(x, ff, up, down, pad)
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            y = torch.ops.dgan.upfirdn2d(mode.from_tensor(x), *args[1:])
        assert y.shape == want and y.dtype == x.dtype and y.device == x.device
        cl = _is_channels_last(x)
        assert cl == (layout == "channels_last")
        fmt = torch.channels_last if cl else torch.contiguous_format
        assert y.stride() == torch.empty(want, memory_format=fmt).stride()


# -- under the Triton interpreter (subprocesses) -----------------------------------------

def check_custom_op() -> None:
    """Eager ``dgan::upfirdn2d`` and its autograd formula against the reference (float64
    inputs: the only difference is the kernel's fp32 accumulation), and opcheck."""
    from dgan.ops import upfirdn2d_reference

    g = torch.Generator().manual_seed(0)
    f = ops.setup_filter([1, 3, 3, 1])
    full = torch.randn(3, 4, generator=g, dtype=torch.float64).float()
    for up, down, pad, kind in UPFIRDN2D_CASES:
        ff = f if kind == "sep" else (full if kind == "full" else None)
        for cl in (False, True):
            for flip in (False, True):
                x = torch.randn(2, 3, 7, 5, generator=g, dtype=torch.float64)
                if cl:
                    x = x.to(memory_format=torch.channels_last)
                x.requires_grad_(True)
                kw = {"flip_filter": flip, "gain": 2.0}
                outs = []
                for custom in (True, False):
                    y = (torch.ops.dgan.upfirdn2d(*_op_args(x, ff, up, down, pad, **kw))
                         if custom else upfirdn2d_reference(x, ff, up, down, pad, **kw))
                    (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
                    (ggx,) = torch.autograd.grad((gx * gx.detach().sign()).sum(), x)
                    outs.append((y, gx, ggx))
                (y, gx, ggx), (ry, rgx, rggx) = outs
                assert y.is_contiguous(memory_format=torch.channels_last) == cl
                assert gx.shape == x.shape and y.dtype == x.dtype
                for a, b in ((y, ry), (gx, rgx), (ggx, rggx)):
                    _close(a, b)
    x = torch.randn(2, 3, 7, 5, generator=g)
    for cl in (False, True):
        xi = (x.to(memory_format=torch.channels_last) if cl else x).requires_grad_(True)
        torch.library.opcheck(torch.ops.dgan.upfirdn2d.default,
                              _op_args(xi, f, 2, 1, (2, 1, 2, 1), gain=4.0))
    # A graph may hand the op other strides than it traced: the traced layout still wins.
    args = _op_args(x.to(memory_format=torch.channels_last), f, 2, 1, (2, 1, 2, 1))
    y = torch.ops.dgan.upfirdn2d(x, *args[1:])
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    _close(y, upfirdn2d_reference(x, f, 2, 1, (2, 1, 2, 1)))


def check_compiled_stylegan2(device: str = "cpu") -> None:
    """Tiny G and D (channels_last, the training layout) compiled with Inductor on the fused
    path: zero graph breaks, the custom op in the generated forward and backward code, the
    kernel launched as often as in eager mode and never through the eager autograd Function,
    outputs and first-order gradients equal to eager (fp32; TF32 off on CUDA)."""
    import sys

    import torch._dynamo
    from torch._inductor.utils import run_and_get_code

    from dgan.models.stylegan2 import Discriminator, Generator
    from dgan.ops import _upfirdn2d_triton

    mod = sys.modules["dgan.ops.upfirdn2d"]
    ops.set_impl("fused")
    torch.manual_seed(0)
    kw = {"img_resolution": 32, "channel_base": 256, "channel_max": 32, "channels_last": True}
    G = Generator(z_dim=32, w_dim=32, mapping_layers=2, **kw).to(device)
    D = Discriminator(**kw).to(device)
    z = torch.randn(4, 32, device=device)

    # Graph breaks, with the training-time forward (random noise, style mixing).
    ex_g = torch._dynamo.explain(G)(z, style_mixing_prob=0.9)
    img = G(z)
    ex_d = torch._dynamo.explain(D)(img)
    for name, ex in (("G", ex_g), ("D", ex_d)):
        assert ex.graph_break_count == 0, (name, ex.break_reasons)
        assert ex.graph_count == 1, (name, ex.graph_count)
    in_graphs = {name: sum(str(n.target).startswith("dgan.upfirdn2d")
                           for gr in ex.graphs for n in gr.graph.nodes)
                 for name, ex in (("G", ex_g), ("D", ex_d))}
    torch._dynamo.reset()

    counts = {"launch": 0, "function": 0}
    launch, forward = _upfirdn2d_triton.launch, mod._UpFirDn2dFused.forward

    def counting_launch(*args, **kwargs):
        counts["launch"] += 1
        return launch(*args, **kwargs)

    def counting_forward(*args, **kwargs):
        counts["function"] += 1
        return forward(*args, **kwargs)

    def step(g, d):
        G.zero_grad(set_to_none=True)
        D.zero_grad(set_to_none=True)
        img = g(z, noise_mode="const")
        logits = d(img)
        torch.nn.functional.softplus(-logits).mean().backward()
        grads = [p.grad.clone() for p in [*G.parameters(), *D.parameters()]]
        return img.detach(), logits.detach(), grads

    _upfirdn2d_triton.launch = counting_launch
    mod._UpFirDn2dFused.forward = staticmethod(counting_forward)
    try:
        eager = step(G, D)
        eager_counts = dict(counts)
        counts.update(launch=0, function=0)
        gc, dc = torch.compile(G, backend="inductor"), torch.compile(D, backend="inductor")
        compiled, code = run_and_get_code(step, gc, dc)
        compiled_counts = dict(counts)
    finally:
        _upfirdn2d_triton.launch = launch
        mod._UpFirDn2dFused.forward = staticmethod(forward)
        ops.set_impl(None)

    # 3 blocks: up-conv FIR + image-skip upsample in G, conv and skip downsample in D.
    assert in_graphs == {"G": 6, "D": 6}, in_graphs
    assert eager_counts == {"launch": 24, "function": 24}, eager_counts  # forward + backward
    assert compiled_counts == {"launch": 24, "function": 0}, compiled_counts
    calls = sum(src.count("torch.ops.dgan.upfirdn2d") for src in code)
    assert calls >= 24, (calls, len(code))
    (img, logits, grads), (ref_img, ref_logits, ref_grads) = compiled, eager
    _close(img, ref_img, 1e-4)
    _close(logits, ref_logits, 1e-4)
    for a, b in zip(grads, ref_grads):
        _close(a, b, 1e-4)


@contextlib.contextmanager
def fixed_style_mixing() -> Iterator[None]:
    """Generator style mixing without random draws: the cutoff ``randint`` is the middle
    value, the coin ``rand`` is 0 (always mix) and the second latent ``randn_like`` is a
    fixed pattern. Only the path-length noise is then drawn at random.

    For comparisons with eager under Inductor on CUDA in torch 2.11: its scheduler reorders
    the fallback random ops even with ``fallback_random``, so the compiled phase draws a
    different cutoff and latent from eager (pytorch/pytorch#181136, fixed by #181245; the
    torch 2.13 here has the fix). Measured on an H200: with random mixing the compiled
    path-length phase differed from eager by 4.5e-4 in the loss and 0.14 in the worst
    parameter gradient, with these fixed draws by 6.7e-8 (``benchmarks/compile_accuracy.py``).
    """
    randint, rand, randn_like = torch.randint, torch.rand, torch.randn_like

    def _randint(low, high, size=(), **kw):
        return torch.full(size, (low + high) // 2, dtype=torch.long, device=kw.get("device"))

    def _rand(*size, **kw):
        return torch.zeros(*size, device=kw.get("device"))

    def _randn_like(x, **kw):
        return torch.cos(torch.arange(x.numel(), device=x.device, dtype=x.dtype)).view_as(x)

    torch.randint, torch.rand, torch.randn_like = _randint, _rand, _randn_like
    try:
        yield
    finally:
        torch.randint, torch.rand, torch.randn_like = randint, rand, randn_like


def tiny_stylegan2(device: str):
    """(G, D, z, real): a 32x32 G and D with perturbed biases and noise strengths (so that no
    derivative is trivially zero), 4 latents and 8 channels_last images."""
    from dgan.models.stylegan2 import Discriminator, Generator

    torch.manual_seed(0)
    kw = {"img_resolution": 32, "channel_base": 256, "channel_max": 32, "channels_last": True}
    G = Generator(z_dim=32, w_dim=32, mapping_layers=2, **kw).to(device)
    D = Discriminator(**kw).to(device)
    with torch.no_grad():
        for p in (*G.parameters(), *D.parameters()):
            if p.ndim <= 1:
                p.add_(torch.randn_like(p) * 0.2)
    z = torch.randn(4, 32, device=device)
    real = torch.randn(8, 3, 32, 32, device=device).to(memory_format=torch.channels_last)
    return G, D, z, real


def check_compiled_regularisers(device: str = "cpu", backend: str = "aot_eager",
                                fixed_mixing: bool = False) -> None:
    """The path-length (G) and R1 (D) phases of a tiny G and D compiled on the fused path
    (their inner gradients written out as forward ops): one graph each, no break, the
    custom op for every FIR pass of the forward and of the written-out gradient, and the
    loss and parameter gradients of the eager phases (fused kernels, autograd's double
    backward). ``fallback_random`` makes Inductor draw the eager random numbers;
    ``fixed_mixing`` takes the style-mixing draws out (see :func:`fixed_style_mixing`)."""
    import torch._dynamo
    import torch._inductor.config

    from dgan.ops import double_backward

    ops.set_impl("fused")
    G, D, z, real = tiny_stylegan2(device)
    g_kw = {"style_mixing_prob": 0.9, "path_length": True, "noise_mode": "const"}

    def greg(g):
        G.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        mixing = fixed_style_mixing() if fixed_mixing else contextlib.nullcontext()
        with double_backward(), mixing:
            img, grad = g(z, **g_kw)
        loss = grad.square().sum(2).mean(1).sqrt().mean() + img[:, 0, 0, 0].mean() * 0
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in G.parameters()]

    def dreg(d):
        D.zero_grad(set_to_none=True)
        with double_backward():
            logits, grad = d(real.detach().requires_grad_(True), input_grad=True)
        loss = grad.square().sum(dim=[1, 2, 3]).mean() + logits.mean() * 0
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in D.parameters()]

    def fir_nodes(ex) -> int:
        return sum(str(n.target).startswith("dgan.upfirdn2d")
                   for gr in ex.graphs for n in gr.graph.nodes)

    results = {}
    try:
        for name, net, args, kwargs, phase in (
                ("G", G, (z,), g_kw, greg),
                ("D", D, (real.detach().requires_grad_(True),), {"input_grad": True}, dreg)):
            with double_backward():
                ex = torch._dynamo.explain(net)(*args, **kwargs)
            torch._dynamo.reset()
            assert ex.graph_break_count == 0 and ex.graph_count == 1, (name, ex.break_reasons)
            # G: 3 up-conv FIRs and 3 image upsamples; D: 3 conv and 3 skip downsamples;
            # each in the forward and in the written-out gradient.
            assert fir_nodes(ex) == 12, (name, fir_nodes(ex))
            eager = phase(net)
            with torch._inductor.config.patch(fallback_random=True):
                compiled = phase(torch.compile(net, backend=backend, fullgraph=True,
                                               dynamic=False))
            results[name] = (compiled, eager)
    finally:
        ops.set_impl(None)
        torch._dynamo.reset()
    for compiled, eager in results.values():
        _close(compiled[0], eager[0], 1e-4)
        for a, b in zip(compiled[1], eager[1]):
            _close(a, b, 1e-3)


CHECKS = {"custom_op": check_custom_op, "compiled_stylegan2": check_compiled_stylegan2,
          "compiled_regularisers": check_compiled_regularisers}


def _run_check(name: str, timeout: int) -> None:
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1", DGAN_OPS="auto")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), name], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.gpu
def test_compiled_stylegan2_keeps_the_fused_fir_on_cuda() -> None:
    """The same check on a GPU (Inductor's CUDA code generation; not run on the CPU)."""
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        check_compiled_stylegan2("cuda")
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
        torch._dynamo.reset()
        ops.set_impl(None)


@pytest.mark.gpu
def test_compiled_regularisers_keep_the_fused_fir_on_cuda() -> None:
    """The compiled path-length and R1 phases with Inductor's CUDA code generation."""
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        check_compiled_regularisers("cuda", "inductor", fixed_mixing=True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


def test_fixed_style_mixing_takes_out_the_mixing_draws() -> None:
    """The GPU check above relies on it: under ``fixed_style_mixing`` the mixed styles no
    longer depend on the seed (and still mix), without it they do."""
    from dgan.models.stylegan2 import Generator

    torch.manual_seed(0)
    G = Generator(z_dim=8, w_dim=8, mapping_layers=1, img_resolution=32, channel_base=64,
                  channel_max=8)
    z = torch.randn(2, 8)

    def styles(seed: int, fixed: bool) -> torch.Tensor:
        torch.manual_seed(seed)
        with fixed_style_mixing() if fixed else contextlib.nullcontext():
            return G(z, style_mixing_prob=0.9, return_ws=True)[1]

    unmixed = G.mapping(z, None)
    assert torch.equal(styles(1, True), styles(2, True))
    assert not torch.equal(styles(1, True), unmixed)
    assert not torch.equal(styles(1, False), styles(2, False))


@pytest.mark.slow
def test_compiled_regularisers_keep_the_fused_fir_under_interpreter() -> None:
    _run_check("compiled_regularisers", 600)


def test_custom_op_matches_the_reference_under_interpreter() -> None:
    _run_check("custom_op", 300)


@pytest.mark.slow
def test_compiled_stylegan2_keeps_the_fused_fir_under_interpreter() -> None:
    _run_check("compiled_stylegan2", 600)


if __name__ == "__main__":
    CHECKS[sys.argv[1]]()
