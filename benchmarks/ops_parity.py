"""Per-op speed and agreement of fused (Triton) vs reference ops at StyleGAN2-256 shapes.

For each op: forward+backward time (ms, median of CUDA-event timings) for the reference
and the fused path, the speed-up, and the relative difference of the outputs on the same
inputs, ``||fused - reference|| / ||reference||`` (both in the benchmark dtype).

For the ``scale_bias_act`` rows the "reference" column is what the synthesis layer runs
without it: ``torch.addcmul(noise, x, d)`` followed by ``bias_act`` (fused when the fused
path is available), and the pre-convolution styles multiply ``x * s[:, :, None, None]``.

    python benchmarks/ops_parity.py                 # GPU, bf16, channels_last
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="shapes / 8, batch 2 (CPU smoke test)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    n, scale = (2, 8) if args.tiny else (args.batch, 1)
    if device.type == "cpu":
        dtype = torch.float32
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
