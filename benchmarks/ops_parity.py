"""Per-op speed and agreement of fused (Triton) vs reference ops at StyleGAN2-256 shapes.

For each op: forward+backward time (ms, median of CUDA-event timings) for the reference
and the fused path, the speed-up, and the relative difference of the outputs on the same
inputs, ``||fused - reference|| / ||reference||`` (both in the benchmark dtype).

For the ``scale_bias_act`` rows the "reference" column is what the synthesis layer runs
without it: ``torch.addcmul(noise, x, d)`` followed by ``bias_act`` (fused when the fused
path is available), and the pre-convolution styles multiply ``x * s[:, :, None, None]``.

``--sweep`` instead times ``scale_bias_act``'s fused kernels under each of a few tilings
(``TILE`` elements per tile, ``NUM_WARPS``, ``TARGET_PROGRAMS`` per launch; see
``dgan/ops/_scale_bias_act_triton.py``) at the recipe's largest shapes, as ratios to the
current setting: the numbers to choose its defaults by.

    python benchmarks/ops_parity.py                 # GPU, bf16, channels_last
    python benchmarks/ops_parity.py --sweep         # GPU: scale_bias_act tilings
    python benchmarks/ops_parity.py --tiny          # CPU smoke test (reference only)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from dgan.ops import (
    bias_act,
    modulate_weight,
    scale_bias_act,
    setup_filter,
    triton_available,
    upfirdn2d,
)


def _time(fn: Callable[[], torch.Tensor], device: torch.device, reps: int) -> float:
    """Median milliseconds of ``fn`` (forward + backward)."""
    fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def cases(n: int, scale: int, device: torch.device, dtype: torch.dtype):
    """(name, make_inputs, op(impl, *inputs)) at the shapes of the 256x256 model."""
    cl = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    f = setup_filter([1, 3, 3, 1], device=device)

    def act_inputs():
        x = torch.randn(n, 128 // scale, 128 // scale, 128 // scale, device=device, dtype=dtype)
        return x.to(memory_format=cl).requires_grad_(), torch.zeros(128 // scale, device=device)

    def up_inputs():
        x = torch.randn(n, 64 // scale, 257 // scale, 257 // scale, device=device, dtype=dtype)
        return (x.to(memory_format=cl).requires_grad_(),)

    def down_inputs():
        x = torch.randn(n, 64 // scale, 256 // scale, 256 // scale, device=device, dtype=dtype)
        return (x.to(memory_format=cl).requires_grad_(),)

    def mod_inputs():
        w = torch.randn(512 // scale, 512 // scale, 3, 3, device=device, requires_grad=True)
        return w, torch.randn(n, 512 // scale, device=device, requires_grad=True)

    # The 256x256 synthesis layer: [N, 64, 256, 256] activations, fp32 per-sample coefficients.
    c256, r256 = 64 // scale, 256 // scale
    # The composition's bias_act: fused whenever the fused path runs at all.
    base = "fused" if device.type == "cuda" and triton_available() else "reference"

    def epi_inputs():
        x = torch.randn(n, c256, r256, r256, device=device, dtype=dtype)
        d = torch.rand(n, c256, device=device) + 0.5  # demodulation coefficients
        noise = torch.randn(n, 1, r256, r256, device=device, dtype=dtype)
        b = torch.randn(c256, device=device)
        return (x.to(memory_format=cl).requires_grad_(), d.requires_grad_(),
                noise.requires_grad_(), b.requires_grad_())

    def epilogue(impl, x, d, noise, b):
        if impl == "fused":
            return scale_bias_act(x, d, noise, b, act="lrelu", clamp=256, impl="fused")
        y = torch.addcmul(noise.to(x.dtype), x, d.to(x.dtype)[:, :, None, None])
        return bias_act(y, b, act="lrelu", clamp=256, impl=base)

    def styles_inputs():
        x = torch.randn(n, c256, r256, r256, device=device, dtype=dtype)
        s = torch.randn(n, c256, device=device)
        return x.to(memory_format=cl).requires_grad_(), s.requires_grad_()

    def styles(impl, x, s):
        if impl == "fused":
            return scale_bias_act(x, s, impl="fused")
        return x * s.to(x.dtype)[:, :, None, None]

    return [
        ("bias_act lrelu+clamp", act_inputs,
         lambda impl, x, b: bias_act(x, b, act="lrelu", clamp=256, impl=impl)),
        ("upfirdn2d filter (after up-conv)", up_inputs,
         lambda impl, x: upfirdn2d(x, f, padding=1, gain=4, impl=impl)),
        ("upfirdn2d down2 (1x1 skip)", down_inputs,
         lambda impl, x: upfirdn2d(x, f, down=2, padding=1, impl=impl)),
        ("modulate+demodulate weights", mod_inputs,
         lambda impl, w, s: modulate_weight(w, s, out_dtype=dtype, impl=impl)),
        ("scale+noise+bias+lrelu+clamp", epi_inputs, epilogue),
        ("styles scale x*s (before conv)", styles_inputs, styles),
    ]


# (TILE, NUM_WARPS, TARGET_PROGRAMS) for --sweep; the first row is the current default.
# Registers per thread of the recipe's variants (sm_90, triton_aot.py), fwd / bwd / bwd2:
# 2048/4: 56/128/120, 2048/8: 40/64/76, 1024/4: 40/69/72, 4096/8: 80/128/118.
SWEEP = [(1024, 4, 4096), (2048, 4, 4096), (2048, 8, 4096), (4096, 8, 4096),
         (1024, 4, 1024), (1024, 4, 16384), (1024, 2, 4096), (512, 4, 4096)]


def sweep(n: int, scale: int, device: torch.device, dtype: torch.dtype, reps: int) -> None:
    """Time scale_bias_act's kernels under each SWEEP tiling (fused path only)."""
    from dgan.ops import _scale_bias_act_triton as k

    cl = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    impl = "fused" if device.type == "cuda" else "reference"  # CPU: a smoke test of the loop
    c, r = 64 // scale, 256 // scale
    cd, rd = 128 // scale, 128 // scale

    def make(shape, *extra):
        torch.manual_seed(0)
        x = torch.randn(*shape, device=device, dtype=dtype).to(memory_format=cl)
        return [x.requires_grad_(), *(t.requires_grad_() for t in extra)]

    # Inputs are made once; each timed call is the op, its backward (autograd.grad: no .grad
    # accumulation passes) and, for the last row, the backward of that gradient.
    syn = make((n, c, r, r), torch.rand(n, c, device=device) + 0.5,
               torch.randn(n, 1, r, r, device=device, dtype=dtype), torch.randn(c, device=device))
    dl = make((n, cd, rd, rd), torch.randn(n, cd, rd, rd, device=device,
                                           dtype=dtype).to(memory_format=cl),
              torch.randn(cd, device=device))
    r1 = make((n, c, r, r), torch.rand(n, c, device=device) + 0.5, torch.randn(c, device=device))

    def synthesis():  # the 256x256 synthesis epilogue: demod scale, noise, bias, lrelu, clamp
        x, d, nz, b = syn
        y = scale_bias_act(x, d, nz, b, act="lrelu", clamp=256, impl=impl)
        torch.autograd.grad(y, syn, torch.ones_like(y))

    def d_layer():  # D's conv activation with the residual block's sum
        x, res, b = dl
        y = scale_bias_act(x, None, None, b, act="lrelu", clamp=256, impl=impl, residual=res)
        torch.autograd.grad(y, dl, torch.ones_like(y))

    def r1_like():  # a gradient of the gradient, as R1 and path length take
        x, d, b = r1
        y = scale_bias_act(x, d, None, b, act="lrelu", clamp=256, impl=impl)
        (g,) = torch.autograd.grad(y, x, torch.ones_like(y), create_graph=True)
        torch.autograd.grad((g * g).sum(), r1, allow_unused=True)  # x, b: zero (lrelu' is flat)

    rows = [("synthesis epilogue fwd+bwd", synthesis, 5 * n * c * r * r),
            ("D act + residual fwd+bwd", d_layer, 6 * n * cd * rd * rd),
            ("double backward (R1-like)", r1_like, None)]
    saved = k.TILE, k.NUM_WARPS, k.TARGET_PROGRAMS
    print(f"scale_bias_act tilings, {dtype}, batch {n}: ms (ratio to the first row); "
          f"GB/s counts the passes over x-sized tensors")
    print(f"{'TILE/warps/programs':<22}" + "".join(f"{name:>30}" for name, _, _ in rows))
    base: dict[str, float] = {}
    try:
        for cfg in SWEEP:
            k.TILE, k.NUM_WARPS, k.TARGET_PROGRAMS = cfg
            line = f"{'/'.join(map(str, cfg)):<22}"
            for name, fn, elems in rows:
                try:
                    ms = _time(fn, device, reps)
                except Exception as e:  # a tiling that fails must not hide the others
                    line += f"{'failed: ' + type(e).__name__:>30}"
                    continue
                base.setdefault(name, ms)
                gbs = f" {elems * dtype.itemsize / ms / 1e6:6.0f} GB/s" if elems else ""
                line += f"{ms:>10.3f} ({ms / base[name]:4.2f}){gbs:>12}"
            print(line, flush=True)
    finally:
        k.TILE, k.NUM_WARPS, k.TARGET_PROGRAMS = saved


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="shapes / 8, batch 2 (CPU smoke test)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument("--sweep", action="store_true", help="time scale_bias_act tilings instead")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    n, scale = (2, 8) if args.tiny else (args.batch, 1)
    if device.type == "cpu":
        dtype = torch.float32
    if args.sweep:
        sweep(n, scale, device, dtype, args.reps)
        return
    impls = ["reference"] + (["fused"] if device.type == "cuda" and triton_available() else [])
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device: {name}  dtype {dtype}  batch {n}  (forward + backward, ms)")
    print(f"{'op':<34}{'reference':>11}{'fused':>9}{'speed-up':>10}{'rel. diff':>12}")
    for label, make, op in cases(n, scale, device, dtype):
        res: dict[str, float] = {}
        outs: dict[str, torch.Tensor] = {}
        for impl in impls:
            torch.manual_seed(0)  # the same input values for both paths
            inputs = make()

            def step(impl=impl, inputs=inputs, op=op):
                y = op(impl, *inputs)
                y.backward(torch.ones_like(y))
                return y

            res[impl] = _time(step, device, args.reps)
            outs[impl] = op(impl, *inputs).detach().double()
        fused = res.get("fused", float("nan"))
        ref = outs["reference"]
        diff = ((outs["fused"] - ref).norm() / ref.norm()).item() if "fused" in outs \
            else float("nan")
        print(f"{label:<34}{res['reference']:>11.3f}{fused:>9.3f}"
              f"{res['reference'] / fused:>10.2f}{diff:>12.2e}", flush=True)


if __name__ == "__main__":
    main()
