"""Compile every Triton kernel the fused ops launch for a real GPU, without a GPU.

The CPU interpreter (``TRITON_INTERPRET=1``) checks what the kernels compute, but not that
they compile for a GPU: the interpreter runs Python, while a GPU build goes through Triton's
MLIR passes, LLVM and ``ptxas``, which reject things the interpreter accepts and decide the
registers, spills and shared memory that set a kernel's speed. This script makes that build
happen on a machine without a GPU:

* Triton's active driver is replaced by one that reports a CUDA device of the chosen
  compute capability (``--arch 90``: H100/H200; ``80``: A100) and launches nothing;
* every ``kernel[grid](...)`` the ops make compiles the exact specialisation a GPU run would
  (argument dtypes, 16-byte divisibility of sizes, constexprs) down to a cubin with the
  ``ptxas`` that ships inside the triton wheel, instead of launching;
* the model phases run under ``FakeTensorMode`` (shapes, no data), so the full-size
  StyleGAN2-256 recipe at batch 64 costs only the compiles.

Each distinct compiled kernel is listed with its warps, registers per thread, spilled bytes
(``cuobjdump -res-usage`` on the cubin), shared memory, and its global loads and stores as
vector/scalar instruction counts in the PTX (a streaming kernel whose tile loads are not
16-byte vectors leaves bandwidth unused). A compile error, shared memory
over the card's limit or a grid over CUDA's limits (2^31 - 1 programs on axis 0, 65,535 on
axes 1 and 2) is reported as a failure, and the exit status is 1.

    python benchmarks/triton_aot.py                    # sm_90, StyleGAN2-256 batch 64 + op sweep
    python benchmarks/triton_aot.py --arch 80 --only ops
    python benchmarks/triton_aot.py --only model --set _scale_bias_act_triton.NUM_WARPS=8
    python benchmarks/triton_aot.py --tiny --batch 4 --quick   # what the test runs

Not covered: what the kernels compute (the interpreter tests and the ``gpu`` tests do that)
and how fast they run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import torch

# Shared memory per block (bytes, opt-in maximum) of the compute capabilities we target.
MAX_SHARED = {80: 166_912, 86: 101_376, 89: 101_376, 90: 232_448, 100: 232_448}
MAX_GRID = (2**31 - 1, 65_535, 65_535)


@dataclasses.dataclass
class Compiled:
    name: str
    constants: str
    dtypes: str
    num_warps: int
    shared: int
    regs: int | None
    spill_bytes: int | None
    loads: str  # global load instructions in the PTX, "vector/scalar"
    stores: str
    seconds: float
    grid: tuple[int, ...]


class _FakeUtils:
    def __init__(self, arch: int):
        self.arch = arch

    def get_device_properties(self, device):
        return {"max_shared_mem": MAX_SHARED.get(self.arch, 101_376),
                "multiprocessor_count": 132, "max_num_regs": 65_536, "warpSize": 32}


class _FakeCudaDriver:
    """What ``JITFunction.run`` asks of the active driver before it compiles."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)
        self.utils = _FakeUtils(arch)

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_current_target(self):
        return self.target

    def get_active_torch_device(self):
        return torch.device("cpu")


def _accesses(ptx: str, op: str) -> str:
    """``"vector/scalar"`` counts of ``ld.global`` / ``st.global`` instructions: whether a
    kernel's memory accesses vectorised (16-byte ``.v4.b32`` for a tile of bf16)."""
    found = re.findall(rf"\b{op}\.global(?:\.\w+)*", ptx)
    vec = sum(1 for f in found if ".v2" in f or ".v4" in f or ".v8" in f)
    return f"{vec}/{len(found) - vec}"


def _resources(cubin: bytes, name: str) -> tuple[int | None, int | None]:
    """Registers per thread and spilled (local memory) bytes per thread of ``name``."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return None, None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True,
                             check=False).stdout
    m = re.search(r"Function " + re.escape(name) + r"[^\n]*\n\s*REG:(\d+)[^\n]*LOCAL:(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else (None, None)


@contextlib.contextmanager
def compile_instead_of_launch(arch: int, log: list[Compiled],
                              failures: list[str]) -> Iterator[None]:
    """Inside: Triton launches compile for ``sm_<arch>`` and record the result in ``log``."""
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction, MockTensor

    seen: set[tuple] = set()
    saved_driver, saved_getitem = driver._active, JITFunction.__getitem__

    def getitem(self, grid):
        def launch(*args, **kwargs):
            # Tensors (fake, meta or CPU) become MockTensors: a dtype and an aligned address,
            # which is all the specialisation reads from a device tensor.
            args = [MockTensor(a.dtype) if isinstance(a, torch.Tensor) else a for a in args]
            kw = {k: MockTensor(v.dtype) if isinstance(v, torch.Tensor) else v
                  for k, v in kwargs.items()}
            name = self.fn.__name__
            g = tuple(int(v) for v in grid)
            for axis, (v, limit) in enumerate(zip(g, MAX_GRID)):
                if v > limit:
                    failures.append(f"{name}: grid axis {axis} = {v} > CUDA's limit {limit}")
            t0 = time.perf_counter()
            try:
                kernel = self.run(*args, grid=grid, warmup=True, **kw)
            except Exception as e:  # noqa: BLE001 - reported with the kernel's name
                failures.append(f"{name}: compile failed: {type(e).__name__}: {e}"[:2000])
                return
            dt = time.perf_counter() - t0
            md = kernel.metadata
            key = (name, kernel.hash)
            if key in seen:
                return
            consts = {k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)
                      and k.isupper()}
            dtypes = sorted({str(a.dtype).removeprefix("torch.") for a in args
                             if isinstance(a, MockTensor)})
            regs, spill = _resources(kernel.asm["cubin"], md.name)
            shared = int(getattr(md, "shared", 0))
            limit = MAX_SHARED.get(arch, 101_376)
            if shared > limit:
                failures.append(f"{name}: {shared} bytes of shared memory > {limit} on sm_{arch}")
            rec = Compiled(name, " ".join(f"{k}={v}" for k, v in consts.items()),
                           ",".join(dtypes), md.num_warps, shared, regs, spill,
                           _accesses(kernel.asm["ptx"], "ld"), _accesses(kernel.asm["ptx"], "st"),
                           dt, g)
            seen.add(key)
            log.append(rec)
        return launch

    driver.set_active(_FakeCudaDriver(arch))
    JITFunction.__getitem__ = getitem
    try:
        yield
    finally:
        JITFunction.__getitem__ = saved_getitem
        driver._active = saved_driver


# --------------------------------------------------------------------------------------------
# What to run


def run_model_phases(tiny: bool, batch: int, dtype: torch.dtype | None) -> None:
    """Gmain, Greg, Dmain, Dreg of the StyleGAN2 recipe with forward and backward passes."""
    from traffic import run_phases  # benchmarks/ is on sys.path for scripts and tests

    args = argparse.Namespace(batch=batch)
    if tiny:
        args.resolution, args.channel_base, args.channel_max, args.z_dim = 32, 256, 32, 32
    else:
        args.resolution, args.channel_base, args.channel_max, args.z_dim = 256, 16384, 512, 512
    run_phases(args, lambda name: contextlib.nullcontext(), dtype=dtype)


def run_op_sweep(acts: list[str], quick: bool = False) -> None:
    """Each op's forward, first and second derivative in fp32, bf16 and fp16, NCHW and
    channels_last, odd sizes, and a tensor large enough for 64-bit indexing.

    ``quick``: one odd shape, and three activations (identity, piecewise linear, smooth)
    instead of all, except for ``bias_act`` in fp32 NCHW.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    from dgan import ops

    def grads(y, ins):
        ins = [t for t in ins if t is not None and t.requires_grad]
        g = torch.autograd.grad(y.float().square().sum(), ins, create_graph=True)
        torch.autograd.grad(sum((t.float() * 1.5).sum() for t in g), ins, allow_unused=True)

    def leaf(*shape, dtype=torch.float32, cl=False):
        t = torch.empty(*shape, dtype=dtype)
        if cl:
            t = t.to(memory_format=torch.channels_last)
        return t.requires_grad_()

    shapes = [(3, 5, 7, 9)] if quick else [(3, 5, 7, 9), (4, 64, 16, 16), (2, 512, 8, 8)]
    few = [a for a in acts if a in ("linear", "lrelu", "tanh")] if quick else acts
    with FakeTensorMode():
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            for cl in (False, True):
                for shape in shapes:
                    n, c, h, w = shape
                    x = leaf(*shape, dtype=dtype, cl=cl)
                    b = leaf(c)
                    for act in acts if dtype == torch.float32 and not cl else few:
                        for clamp in (None, 256.0):
                            grads(ops.bias_act(x, b, act=act, clamp=clamp, impl="fused"), [x, b])
                            if act not in few:
                                continue
                            s = leaf(n, c)
                            nz = leaf(n, 1, h, w, dtype=dtype)
                            y = ops.scale_bias_act(x, s, nz, b, act=act, clamp=clamp,
                                                   impl="fused")
                            grads(y, [x, s, nz, b])
                    r = leaf(*shape, dtype=dtype, cl=cl)
                    grads(ops.scale_bias_act(x, None, None, b, act="lrelu", residual=r,
                                             impl="fused"), [x, b, r])
                    f = torch.tensor([1.0, 3.0, 3.0, 1.0])
                    grads(ops.upsample2d(x, f, impl="fused"), [x])
                    grads(ops.downsample2d(x, f, impl="fused"), [x])
                    grads(ops.upfirdn2d(x, f, up=2, padding=(2, 1, 2, 1), impl="fused"), [x])
                wt = leaf(32, 16, 3, 3)
                styles = leaf(4, 16)
                xm = leaf(4, 16, 9, 9, dtype=dtype, cl=cl)
                grads(ops.modulated_conv2d(xm, wt, styles, impl="fused"), [xm, wt, styles])
            # 64-bit indexing: 2^31 elements and more (free under FakeTensorMode).
            big = leaf(64, 128, 512, 512, dtype=dtype, cl=True)
            grads(ops.bias_act(big, leaf(128), act="lrelu", clamp=256.0, impl="fused"), [big])
            grads(ops.scale_bias_act(big, leaf(64, 128), None, leaf(128), act="lrelu",
                                     impl="fused"), [big])
            grads(ops.upsample2d(big, torch.tensor([1.0, 3.0, 3.0, 1.0]), impl="fused"), [big])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 or 80")
    p.add_argument("--only", choices=["model", "ops"], default=None)
    p.add_argument("--tiny", action="store_true", help="the 32x32 model instead of 256x256")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--acts", default="linear,relu,lrelu,tanh,sigmoid,elu,selu,softplus,swish")
    p.add_argument("--set", action="append", default=[], metavar="MODULE.NAME=VALUE",
                   help="override a tuning constant first, e.g. "
                        "_scale_bias_act_triton.NUM_WARPS=8 (module under dgan.ops)")
    p.add_argument("--quick", action="store_true",
                   help="fewer op-sweep variants (one shape, three activations)")
    args = p.parse_args(argv)

    import triton

    from dgan.ops import _dispatch

    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        p.error("unset TRITON_INTERPRET: the interpreter never compiles")
    import importlib

    for item in args.set:
        target, _, value = item.partition("=")
        mod, _, name = target.rpartition(".")
        module = importlib.import_module(f"dgan.ops.{mod}")
        if not mod or not hasattr(module, name):
            p.error(f"--set {item}: dgan.ops.{mod} has no constant {name!r}")
        setattr(module, name, type(getattr(module, name))(value))
    log: list[Compiled] = []
    failures: list[str] = []
    t0 = time.perf_counter()
    saved = _dispatch._impl
    _dispatch.set_impl("fused")
    try:
        with compile_instead_of_launch(args.arch, log, failures):
            if args.only in (None, "model"):
                for dtype in (torch.bfloat16, torch.float16, None):
                    run_model_phases(args.tiny, args.batch, dtype)
            if args.only in (None, "ops"):
                run_op_sweep(args.acts.split(","), args.quick)
    finally:
        _dispatch._impl = saved
    wall = time.perf_counter() - t0

    print(f"triton {triton.__version__}, torch {torch.__version__}, target sm_{args.arch}: "
          f"{len(log)} distinct kernels compiled in {wall:.0f} s")
    print(f"{'kernel':<24}{'dtypes':<22}{'warps':>6}{'regs':>6}{'spill B':>8}{'smem B':>8}"
          f"{'ld v/s':>8}{'st v/s':>8}{'grid':>16}  constexprs")
    for r in sorted(log, key=lambda r: (r.name, r.dtypes, r.constants)):
        print(f"{r.name:<24}{r.dtypes:<22}{r.num_warps:>6}{r.regs if r.regs is not None else '?':>6}"
              f"{r.spill_bytes if r.spill_bytes is not None else '?':>8}{r.shared:>8}"
              f"{r.loads:>8}{r.stores:>8}{'x'.join(map(str, r.grid)):>16}  {r.constants}")
    by_name: dict[str, list[Compiled]] = {}
    for r in log:
        by_name.setdefault(r.name, []).append(r)
    print("\nper kernel: variants, max registers, variants that spill")
    for name, rs in sorted(by_name.items()):
        regs = [r.regs for r in rs if r.regs is not None]
        spills = sum(1 for r in rs if r.spill_bytes)
        print(f"  {name:<24}{len(rs):>5}{max(regs) if regs else '?':>6}{spills:>5}")
    if failures:
        print(f"\n{len(failures)} FAILURES")
        for f in dict.fromkeys(failures):
            print("  " + f)
        return 1
    print("\nno failures")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
