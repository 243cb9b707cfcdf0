"""Count the memory traffic and kernel launches of the StyleGAN2-256 training phases, no GPU needed.

Runs each phase (Gmain, Greg, Dmain, Dreg: forward and backward, no optimizer step) once
under ``FakeTensorMode`` -- tensors carry shapes, dtypes and strides but no data, so the
full-size model at batch 64 costs nothing -- with a dispatch mode that records every aten
op below autograd: its category and the bytes of its distinct inputs and outputs (the span
of each tensor's strides, so a broadcast ``[N, C, 1, 1]`` counts as N*C elements). The
fused Triton kernels are replaced by stand-ins that produce the right output and record
one read of each input and one write of each output (what the kernels do, apart from the
FIR's halo reads).

It answers "how many bytes does a phase move outside the convolutions, and through which
ops", the part of the step that runs at memory bandwidth: divide by the card's copy
bandwidth for a lower bound on its time. Views are free; a ``copy`` row that grows is a
layout or dtype conversion somebody did not mean. Counts are per phase call at the given
batch (Greg runs at half of it), with bf16 autocast and channels_last as in training.

    python benchmarks/traffic.py                   # StyleGAN2-256, batch 64, fused ops
    python benchmarks/traffic.py --ops reference   # plain PyTorch ops
    python benchmarks/traffic.py --ablation fused-prev   # with parts of the fused path off
    python benchmarks/traffic.py --tiny            # 32x32 smoke test
"""

from __future__ import annotations

import argparse
import collections
import contextlib
from collections.abc import Iterator

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from dgan import ops
from dgan.models.stylegan2 import Discriminator, Generator
from dgan.ops.upfirdn2d import _out_size
from dgan.tasks.stylegan2_loss import StyleGAN2Loss

aten = torch.ops.aten

_VIEWS = {
    "view", "_unsafe_view", "reshape", "permute", "expand", "slice", "select", "t",
    "transpose", "unsqueeze", "squeeze", "as_strided", "detach", "alias", "split",
    "split_with_sizes", "unbind", "empty", "empty_like", "empty_strided", "new_empty",
    "new_empty_strided", "lift_fresh", "_local_scalar_dense", "sym_size", "sym_stride",
    "is_same_size", "unfold", "diagonal", "narrow", "chunk", "view_as", "expand_as",
    "_reshape_alias", "sym_numel", "sym_storage_offset", "dim", "is_contiguous", "device",
    "size", "stride", "numel", "storage_offset", "layout", "dtype",
}
_CATEGORIES = {
    "conv": {"convolution", "convolution_backward", "_convolution", "cudnn_convolution",
             "cudnn_convolution_transpose", "conv2d", "conv_transpose2d"},
    "matmul": {"mm", "addmm", "bmm", "baddbmm", "matmul", "_addmm_activation"},
    "copy": {"copy_", "clone", "_to_copy", "contiguous", "cat", "repeat", "stack",
             "constant_pad_nd", "flip", "index", "index_select", "gather", "_copy_from"},
    "reduce": {"sum", "mean", "amax", "amin", "max", "min", "norm", "linalg_vector_norm",
               "var", "std", "var_mean", "prod", "_foreach_norm"},
    "random": {"normal", "normal_", "uniform_", "randn", "rand", "randint", "random_",
               "bernoulli_", "bernoulli", "randn_like", "rand_like", "randint_like"},
}


def _span_bytes(t: torch.Tensor) -> int:
    if t.numel() == 0:
        return 0
    span = 1 + sum((s - 1) * st for s, st in zip(t.shape, t.stride()) if st > 0)
    return span * t.element_size()


def _tensors(tree: object) -> Iterator[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from _tensors(v)
    elif isinstance(tree, dict):
        for v in tree.values():
            yield from _tensors(v)


class Traffic(TorchDispatchMode):
    """Records (category -> bytes read, bytes written, launches) and the biggest ops."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = collections.defaultdict(lambda: [0, 0, 0])
        self.by_op = collections.defaultdict(lambda: [0, 0])

    def record(self, category: str, name: str, inputs: list, outputs: list) -> None:
        seen: set[int] = set()
        rd = 0
        for t in inputs:
            if id(t) not in seen:
                seen.add(id(t))
                rd += _span_bytes(t)
        wr = sum(_span_bytes(t) for t in outputs)
        row = self.bytes[category]
        row[0] += rd
        row[1] += wr
        row[2] += 1
        op = self.by_op[(category, name)]
        op[0] += rd + wr
        op[1] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name in _VIEWS:
            return out
        category = next((c for c, names in _CATEGORIES.items() if name in names), "pointwise")
        if name == "convolution" and args[8] == args[0].shape[1] > 1 and args[1].shape[1] == 1:
            category = "fir (depthwise conv)"  # the reference upfirdn2d
        inputs = [t for t in _tensors((args, kwargs))]
        outputs = list(_tensors(out))
        if not inputs and not outputs:  # e.g. promote_types: dtype arithmetic, no kernel
            return out
        if name.endswith("_") and outputs:  # in place: the written tensor is also an input
            inputs = inputs[1:] if inputs and inputs[0] is outputs[0] else inputs
        self.record(category, name, inputs, outputs)
        return out


@contextlib.contextmanager
def fake_kernels(counter: Traffic) -> Iterator[None]:
    """Replace the Triton launches with shape-only stand-ins that record their traffic."""
    import importlib

    from dgan.ops import _bias_act_triton, _modconv_triton, _upfirdn2d_triton

    try:  # absent before scale_bias_act existed: lets this script count older commits too
        sba = importlib.import_module("dgan.ops._scale_bias_act_triton")
    except ImportError:
        sba = argparse.Namespace(forward=None, backward=None, backward2=None)
    saved = _bias_act_triton.launch, _upfirdn2d_triton.launch, _modconv_triton.launch
    saved_sba = sba.forward, sba.backward, sba.backward2

    def small(*ts):
        return [t for t in ts if t is not None]

    def sba_forward(x, scale, noise, b, act, alpha, gain, clamp, residual=None):
        out = torch.empty_like(x)
        counter.record("triton scale_bias_act", "scale_bias_act fwd",
                       small(x, scale, noise, b, residual), [out])
        return out

    def sba_backward(dy, x, scale, noise, b, need, act, alpha, gain, clamp):
        need_dx, need_gs, need_gn, need_gb = need
        dx = torch.empty_like(x) if need_dx else None
        gs = torch.empty_like(scale) if need_gs and scale is not None else None
        gn = torch.empty_like(noise) if need_gn and noise is not None else None
        gb = torch.empty_like(b) if need_gb and b is not None else None
        counter.record("triton scale_bias_act", "scale_bias_act bwd",
                       small(dy, x, scale, noise, b), small(dx, gs, gn, gb))
        return dx, gs, gn, gb

    def sba_backward2(dy, x, scale, noise, b, g_dx, g_gs, g_gn, g_gb, need, piecewise_linear,
                      act, alpha, gain, clamp):
        # The launcher's own decision of what is computed (and so what is read).
        need_ddy, need_dx, need_ds, need_dn, need_db = sba.backward2_needs(
            scale, noise, b, g_dx, g_gs, g_gn, g_gb, need, piecewise_linear)
        outs = (torch.empty_like(x) if need_ddy else None,
                torch.empty_like(x) if need_dx else None,
                torch.empty_like(scale) if need_ds else None,
                torch.empty_like(noise) if need_dn else None,
                torch.empty_like(b) if need_db else None)
        if not any(o is not None for o in outs):
            return outs
        load_dy = need_dx or need_ds or need_db or need_dn
        counter.record("triton scale_bias_act", "scale_bias_act bwd2",
                       small(x, dy if load_dy else None, scale, noise, b, g_dx, g_gs, g_gn, g_gb),
                       small(*outs))
        return outs

    def bias_act(mode, x, b, g, dim, act, alpha, gain, clamp):
        out = torch.empty_like(x)
        ins = [x] + ([b] if b is not None else []) + ([g] if g is not None else [])
        counter.record("triton bias_act", f"bias_act mode {mode}", ins, [out])
        return out

    def upfirdn2d(x, f2d, upx, upy, downx, downy, px0, px1, py0, py1):
        n, c, h, w = x.shape
        fh, fw = f2d.shape
        oh, ow = _out_size(h, upy, downy, py0, py1, fh), _out_size(w, upx, downx, px0, px1, fw)
        cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        fmt = torch.channels_last if cl else torch.contiguous_format
        out = torch.empty((n, c, oh, ow), dtype=x.dtype, device=x.device, memory_format=fmt)
        counter.record("triton upfirdn2d", f"upfirdn2d up{upx} down{downx}", [x], [out])
        return out

    def modulate(weight, styles, demodulate, eps, out_dtype):
        o, i, kh, kw = weight.shape
        out = torch.empty((styles.shape[0], o, i, kh, kw), dtype=out_dtype, device=weight.device)
        counter.record("triton modulate", "modulate", [weight, styles], [out])
        return out

    _bias_act_triton.launch, _upfirdn2d_triton.launch, _modconv_triton.launch = (
        bias_act, upfirdn2d, modulate)
    sba.forward, sba.backward, sba.backward2 = sba_forward, sba_backward, sba_backward2
    try:
        yield
    finally:
        _bias_act_triton.launch, _upfirdn2d_triton.launch, _modconv_triton.launch = saved
        sba.forward, sba.backward, sba.backward2 = saved_sba


def count(args: argparse.Namespace) -> dict[str, Traffic]:
    """Per-phase Traffic of one call each of Gmain, Greg, Dmain, Dreg."""
    from train_throughput import _ablation  # benchmarks/ is on sys.path for scripts and tests

    from dgan.ops import _dispatch

    saved, out = _dispatch._impl, {}
    ops.set_impl(args.ops)
    try:
        with _ablation(getattr(args, "ablation", None) or ""):
            _count(args, out)
    finally:
        _dispatch._impl = saved
    return out


def _count(args: argparse.Namespace, out: dict[str, Traffic]) -> None:
    counters: dict[str, Traffic] = {}

    @contextlib.contextmanager
    def counted(name: str) -> Iterator[None]:
        counter = counters.setdefault(name, Traffic())
        with fake_kernels(counter), counter:
            yield

    run_phases(args, counted, warmup=True)
    counters.pop("warm-up")
    out.update(counters)


def run_phases(args: argparse.Namespace, wrap, dtype: torch.dtype | None = torch.bfloat16,
               warmup: bool = False) -> None:
    """One call each of Gmain, Greg, Dmain, Dreg (forward and backward, no optimizer step) of
    the StyleGAN2 recipe in ``args`` (resolution, channel_base, channel_max, z_dim, batch)
    under ``FakeTensorMode``, channels_last, with ``dtype`` autocast (``None``: fp32).

    ``wrap(name)`` returns the context each phase's forward and its backward run in.
    ``warmup``: run one Gmain first, as ``wrap("warm-up")``, so that the counted phases see
    what the ops keep from step to step (the filter taps), as every step but the first does.
    """
    with FakeTensorMode(allow_non_fake_inputs=True):
        torch.manual_seed(0)
        kw = {"img_resolution": args.resolution, "channel_base": args.channel_base,
              "channel_max": args.channel_max, "channels_last": True}
        G = Generator(z_dim=args.z_dim, w_dim=args.z_dim, mapping_layers=2, **kw)
        D = Discriminator(**kw)
        loss = StyleGAN2Loss(G, D, r1_gamma=0.8192)
        real = torch.empty(args.batch, 3, args.resolution, args.resolution).to(
            memory_format=torch.channels_last)
        autocast = (torch.autocast("cpu", dtype=dtype) if dtype is not None
                    else contextlib.nullcontext())
        # A first, uncounted Gmain builds what the ops cache across steps (filter taps).
        for name in (("warm-up",) if warmup else ()) + ("Gmain", "Greg", "Dmain", "Dreg"):
            for p in (*G.parameters(), *D.parameters()):
                p.grad = None  # as the trainer's zero_grad(set_to_none=True) leaves them
            is_g = name.startswith("G") or name == "warm-up"  # the warm-up is a Gmain
            G.requires_grad_(is_g)
            D.requires_grad_(not is_g)
            with wrap(name), autocast:
                if name in ("Gmain", "warm-up"):
                    value, _ = loss.g_main(args.batch)
                elif name == "Greg":
                    value, _ = loss.g_reg(args.batch)
                elif name == "Dmain":
                    value, _ = loss.d_main(real)
                else:
                    value, _ = loss.d_reg(real)
            with wrap(name):
                value.backward()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ops", choices=["fused", "reference"], default="fused")
    p.add_argument("--ablation", default=None,
                   help="a train_throughput.py ablation mode, e.g. fused-prev or fused-old")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--tiny", action="store_true", help="32x32, tiny channels")
    p.add_argument("--top", type=int, default=12, help="list the N ops moving the most bytes")
    p.add_argument("--bandwidth", type=float, default=4.26,
                   help="TB/s for the time column (4.26: device copy measured on an H200)")
    args = p.parse_args(argv)
    if args.tiny:
        args.resolution, args.channel_base, args.channel_max, args.z_dim = 32, 256, 32, 32
    else:
        args.resolution, args.channel_base, args.channel_max, args.z_dim = 256, 16384, 512, 512
    result = count(args)
    print(f"StyleGAN2-{args.resolution}, batch {args.batch} (Greg {args.batch // 2}), "
          f"{args.ablation or args.ops} ops, bf16 autocast, channels_last; "
          f"GB = 1e9 bytes read + written, ms at {args.bandwidth} TB/s")
    cats = sorted({c for t in result.values() for c in t.bytes})
    header = f"{'category':<22}" + "".join(f"{n + ' GB':>11}{'#':>6}" for n in result)
    print(header)
    print("-" * len(header))
    totals = dict.fromkeys(result, 0)
    for c in cats:
        line = f"{c:<22}"
        for n, t in result.items():
            rd, wr, k = t.bytes.get(c, (0, 0, 0))
            line += f"{(rd + wr) / 1e9:>11.2f}{k:>6}"
            if c not in ("conv", "matmul"):
                totals[n] += rd + wr
        print(line)
    print(f"{'not conv/matmul':<22}" + "".join(
        f"{totals[n] / 1e9:>11.2f}{'':>6}" for n in result))
    print(f"{'  as ms':<22}" + "".join(
        f"{totals[n] / args.bandwidth / 1e9:>11.2f}{'':>6}" for n in result))
    launches = {n: sum(v[2] for v in t.bytes.values()) for n, t in result.items()}
    print(f"{'kernels (ops)':<22}" + "".join(f"{launches[n]:>11}{'':>6}" for n in result))
    for n, t in result.items():
        print(f"\n{n}: the {args.top} ops moving the most bytes (outside conv/matmul)")
        rows = sorted(((v[0], v[1], k) for k, v in t.by_op.items()
                       if k[0] not in ("conv", "matmul")), reverse=True)[: args.top]
        for b, k, (c, name) in rows:
            print(f"  {b / 1e9:8.2f} GB {k:5d}x  {c:<18} {name}")


if __name__ == "__main__":
    main()
