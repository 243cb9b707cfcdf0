"""Where the time of a StyleGAN2 training step goes: per phase, and per GPU kernel.

Runs the recipe of ``train_throughput.py`` (same ``Setup``) for one 16-step cycle as
warm-up, then

1. times every phase of the next 16-step cycle with CUDA events (Gmain, Greg every 4,
   Dmain, Dreg every 16, and the EMA update) and prints ms per call and the share of
   the cycle;
2. profiles one more cycle with ``torch.profiler`` and prints the kernels with the most
   device time, and the device time per kernel family (convolution/matmul, Triton,
   other elementwise and reductions, copies).

    python benchmarks/profile_step.py --batch 64 --impl fused
    python benchmarks/profile_step.py --batch 64 --mode compile  # every phase compiled
    python benchmarks/profile_step.py --tiny --batch 4          # CPU smoke test
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import time

import torch
import train_throughput as tt

from dgan import ops
from dgan.engine.ema import halflife_beta, update_ema

CYCLE = 16
PHASES = ("Gmain", "Greg", "Dmain", "Dreg")


class _Timer:
    """Event pairs on CUDA, perf_counter after a sync elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.spans: dict[str, list] = collections.defaultdict(list)

    @contextlib.contextmanager
    def __call__(self, name: str):
        if self.cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            yield
            b.record()
            self.spans[name].append((a, b))
        else:
            t0 = time.perf_counter()
            yield
            self.spans[name].append(time.perf_counter() - t0)

    def ms(self) -> dict[str, list[float]]:
        if self.cuda:
            torch.cuda.synchronize()
            return {k: [a.elapsed_time(b) for a, b in v] for k, v in self.spans.items()}
        return {k: [1000 * t for t in v] for k, v in self.spans.items()}


def family(name: str) -> str:
    n = name.lower()
    if any(k in n for k in ("gemm", "conv", "cudnn", "cutlass", "wgrad", "dgrad", "fprop",
                            "sm90_xmma", "xmma", "nchwtonhwc", "nhwctonchw", "implicit")):
        return "conv / matmul (cuDNN, cuBLAS)"
    if "triton" in n or name.startswith("_"):
        return "triton (dgan.ops or inductor)"
    if "memcpy" in n or "memset" in n or "copy" in n:
        return "copies, memsets"
    if "reduce" in n:
        return "reductions"
    return "other elementwise"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--impl", choices=["reference", "fused"], default="fused")
    p.add_argument("--mode", choices=["eager", "compile", "compile-graphs"], default="eager",
                   help="compile: G and D compiled in every phase, as train.compile does "
                        "(the warm-up cycle compiles); compile-graphs: with CUDA graphs")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--trace", default=None, help="write a Chrome trace here")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    if args.tiny:
        args.resolution, args.channel_base, args.channel_max, args.z_dim = 32, 256, 32, 32
    else:
        args.resolution, args.channel_base, args.channel_max, args.z_dim = 256, 16384, 512, 512
    args.map_depth, args.augment = 2, False
    args.precision = "bf16" if gpu else "fp32"
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    ops.set_impl(args.impl if gpu or args.impl == "reference" else "reference")
    setup = tt.Setup(args, device, "fused" if args.mode == "eager" else args.mode)
    real = tt._real(args, args.batch, device)
    timer = _Timer(device)
    nimg = 0

    def cycle(timed: bool) -> None:
        nonlocal nimg
        for s in range(CYCLE):
            nimg += args.batch
            for name in setup.loss_reg.phases(s):
                span = timer(name) if timed else contextlib.nullcontext()
                with span, torch.profiler.record_function(name):
                    setup.phase(name, real)
            with timer("ema") if timed else contextlib.nullcontext():
                update_ema(setup.G_ema, setup.G, halflife_beta(nimg, args.batch))

    cycle(timed=False)
    tt.sync(device)
    t0 = time.perf_counter()
    cycle(timed=True)
    tt.sync(device)
    wall = time.perf_counter() - t0
    spans = timer.ms()
    total = sum(sum(v) for v in spans.values())
    name = torch.cuda.get_device_name(device) if gpu else "cpu"
    print(f"device: {name}  impl {args.impl}  mode {args.mode}  batch {args.batch}  res {args.resolution}  "
          f"one {CYCLE}-step cycle: {wall:.3f} s wall = {CYCLE * args.batch / wall:.1f} img/s")
    print(f"{'phase':<8}{'calls':>6}{'ms/call':>10}{'ms/cycle':>10}{'share':>8}")
    for k in (*PHASES, "ema"):
        v = spans.get(k, [])
        if v:
            print(f"{k:<8}{len(v):>6}{sum(v) / len(v):>10.2f}{sum(v):>10.1f}"
                  f"{100 * sum(v) / total:>7.1f}%")
    print(f"{'sum':<8}{'':>6}{'':>10}{total:>10.1f}   (wall {1000 * wall:.1f} ms)")

    acts = [torch.profiler.ProfilerActivity.CPU]
    if gpu:
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts, acc_events=True) as prof:
        cycle(timed=False)
        tt.sync(device)
    if args.trace:
        prof.export_chrome_trace(args.trace)
    if not gpu:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
        return
    # record_function ranges also show up as device-side events: keep only kernels.
    kernels = [e for e in prof.key_averages()
               if e.device_type == torch.autograd.DeviceType.CUDA and e.key not in PHASES]
    attr = "self_device_time_total" if hasattr(kernels[0], "self_device_time_total") \
        else "self_cuda_time_total"
    kernels.sort(key=lambda e: getattr(e, attr), reverse=True)
    dev_total = sum(getattr(e, attr) for e in kernels) / 1000
    fam: dict[str, float] = collections.defaultdict(float)
    for e in kernels:
        fam[family(e.key)] += getattr(e, attr) / 1000
    print(f"\ndevice time in kernels over the cycle: {dev_total:.1f} ms "
          f"({100 * dev_total / (1000 * wall):.0f}% of the timed cycle's wall time)")
    for k, v in sorted(fam.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<34}{v:>9.1f} ms {100 * v / dev_total:>6.1f}%")
    print(f"\n{'ms':>9}{'calls':>7}  kernel")
    for e in kernels[:args.top]:
        print(f"{getattr(e, attr) / 1000:>9.2f}{e.count:>7}  {e.key[:110]}")


if __name__ == "__main__":
    main()
