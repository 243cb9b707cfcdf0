"""Training throughput of the StyleGAN2-256 recipe: reference ops vs fused ops vs fused+compile.

Times full training steps (Gmain, Greg every 4, Dmain, Dreg every 16, style mixing, G_ema,
Adam) on synthetic real images already on the device, so data loading is not measured.
Prints one row per (mode, batch): img/s, s/kimg, peak GPU memory, FLOPs per trained image
(counted with ``torch.utils.flop_counter.FlopCounterMode`` over one step of each phase,
weighted by how often it runs) and the achieved fraction of the card's dense bf16 peak.

    python benchmarks/train_throughput.py                       # GPU: batches 16 and 64
    python benchmarks/train_throughput.py --tiny --steps 4      # CPU smoke test (32x32)

Modes: ``reference`` (plain PyTorch ops), ``fused`` (Triton ops), ``compile`` (``torch.compile``
of G and D in every phase, as the trainer's ``train.compile`` does: there bias_act and the
modulation lower to the reference so Inductor can fuse them, while upfirdn2d stays the
Triton kernel as the custom op ``dgan::upfirdn2d``; Greg's and Dreg's inner gradients are
written out as forward ops), ``compile-graphs`` (the same with ``mode="reduce-overhead"``:
CUDA graphs for the compiled phases; on a CPU it is plain ``compile``),
``compile-eager-greg``, ``compile-eager-dreg`` and ``compile-eager-reg`` (``compile`` with
Greg, Dreg or both eager on the Triton ops: the last is ``compile`` as measured before
either compiled), and ablations of the fused path, each switching
parts of it off inside the same process (see ``ABLATIONS``): ``fused-noepilogue`` (the
synthesis layer's styles multiply and demodulation + noise + bias + lrelu epilogue, and D's
bias + lrelu, as separate multiply / addcmul / bias_act passes instead of
``scale_bias_act``), ``fused-nomatmul`` (toRGB as scale + 1x1 convolution instead of one
batched matmul), ``fused-prev`` (both: the fused path as of the second H200 run),
``fused-nogradfix`` (convolutions through torch's own double backward instead of
``conv2d_gradfix``) and ``fused-old`` (all of these plus the first, 1D upfirdn2d kernel for
channels_last tensors: the code of the first H200 run); ``fused-separate-d`` and
``compile-separate-d`` run Dmain's D as two calls (fakes, then reals) instead of one call on
both; ``fused-plvjp`` and ``fused-r1vjp`` take Greg's or Dreg's inner gradient eagerly as
written-out forward ops (the compiled path's form) instead of through autograd.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import time
import traceback

import torch

from dgan import ops
from dgan.augment import AdaptiveAugment
from dgan.engine.ema import halflife_beta, update_ema
from dgan.models.stylegan2 import Discriminator, Generator
from dgan.tasks.stylegan2_loss import StyleGAN2Loss, lazy_adam_hparams

# Dense bf16 tensor-core peak in TFLOP/s by device-name substring.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def default_peak(device: torch.device) -> float | None:
    """Dense bf16 peak (TFLOP/s) for known cards, else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


class Setup:
    """G, D, G_ema, optimizers and the two loss objects for one benchmark configuration."""

    def __init__(self, args: argparse.Namespace, device: torch.device, mode: str) -> None:
        torch.manual_seed(0)
        cl = device.type == "cuda"
        kw = {"img_resolution": args.resolution, "channel_base": args.channel_base,
                  "channel_max": args.channel_max, "channels_last": cl}
        self.G = Generator(z_dim=args.z_dim, w_dim=args.z_dim, mapping_layers=args.map_depth,
                           **kw).to(device)
        self.D = Discriminator(**kw).to(device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        hp_g = lazy_adam_hparams(0.0025, (0.0, 0.99), 4)
        hp_d = lazy_adam_hparams(0.0025, (0.0, 0.99), 16)
        fused_adam = device.type == "cuda"
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=hp_g[0], betas=hp_g[1],
                                      eps=1e-8, fused=fused_adam)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=hp_d[0], betas=hp_d[1],
                                      eps=1e-8, fused=fused_adam)
        augment = AdaptiveAugment(p=0.2).to(device) if args.augment else None
        # the fused-separate-d modes: one D call each for fakes and reals in Dmain
        loss_kw = {"augment": augment, "r1_gamma": 0.8192,
                   "merge_d_calls": "merge_d" not in ABLATIONS.get(mode, set())}
        self.loss_reg = StyleGAN2Loss(self.G, self.D, **loss_kw).to(device)
        g_main, d_main = self.G, self.D
        # Wrappers around the same modules: Greg/Dreg (loss_reg) train the same parameters.
        self.graphs = mode == "compile-graphs"
        if mode.startswith("compile"):
            kw = {"mode": "reduce-overhead"} if self.graphs else {}
            kw["dynamic"] = False  # as train.compile: one static graph per batch size
            g_main, d_main = torch.compile(self.G, **kw), torch.compile(self.D, **kw)
        self.loss_main = StyleGAN2Loss(g_main, d_main, **loss_kw).to(device)
        # Greg and Dreg through the compiled G and D (their inner gradients written out as
        # forward ops), as train.compile does (Dreg not with augmentation);
        # compile-eager-reg keeps both eager, as in the runs before.
        self.compiled_phases = set()
        if mode.startswith("compile"):
            off = ABLATIONS.get(mode, set())
            self.compiled_phases = {"Gmain", "Dmain"}
            if "eager_greg" not in off:
                self.compiled_phases.add("Greg")
            if "eager_dreg" not in off and augment is None:
                self.compiled_phases.add("Dreg")
        self.device = device
        self.dtype = {"bf16": torch.bfloat16, "fp32": None}[args.precision]

    def phase(self, name: str, real: torch.Tensor) -> torch.Tensor:
        """Run one phase: forward, backward, optimizer step. Returns the detached loss."""
        is_g = name.startswith("G")
        net, opt = (self.G, self.opt_g) if is_g else (self.D, self.opt_d)
        opt.zero_grad(set_to_none=True)
        # Freeze the other network so its weight gradients are not computed at all.
        other = self.D if is_g else self.G
        other.requires_grad_(False)
        net.requires_grad_(True)
        amp = (torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None
               else contextlib.nullcontext())
        if self.graphs and name in self.compiled_phases:
            # A new CUDA-graph generation: no output of an earlier replay is used after this
            # (the losses and stats are eager tensors computed from the graphs' outputs).
            torch.compiler.cudagraph_mark_step_begin()
        with amp:
            n = real.shape[0]
            if name == "Gmain":
                loss, _ = self.loss_main.g_main(n)
            elif name == "Greg":
                greg = self.loss_main if name in self.compiled_phases else self.loss_reg
                loss, _ = greg.g_reg(n)
            elif name == "Dmain":
                loss, _ = self.loss_main.d_main(real)
            else:
                dreg = self.loss_main if name in self.compiled_phases else self.loss_reg
                loss, _ = dreg.d_reg(real)
        loss.backward()
        opt.step()
        return loss.detach()

    def step(self, step: int, real: torch.Tensor, nimg: int) -> None:
        """One full training step (all phases due at ``step``) and the EMA update."""
        for name in self.loss_reg.phases(step):
            self.phase(name, real)
        update_ema(self.G_ema, self.G, halflife_beta(nimg, real.shape[0]))


def count_flops_per_image(setup: Setup, real: torch.Tensor) -> float:
    """Average FLOPs per trained image, each phase weighted by its frequency."""
    from torch.utils.flop_counter import FlopCounterMode

    class _NoModules:
        """FlopCounterMode's module tracker hooks module inputs, which breaks
        ``autograd.grad`` with respect to a leaf input (R1); only totals are needed here."""

        parents = ("Global",)

        def __enter__(self) -> None:
            return None

        def __exit__(self, *exc: object) -> None:
            return None

    weights = {"Gmain": 1.0, "Greg": 1 / 4, "Dmain": 1.0, "Dreg": 1 / 16}
    total = 0.0
    for name, wgt in weights.items():
        counter = FlopCounterMode(display=False)
        counter.mod_tracker = _NoModules()
        with counter:
            setup.phase(name, real)
        total += wgt * counter.get_total_flops()
    return total / real.shape[0]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _real(args: argparse.Namespace, batch: int, device: torch.device) -> torch.Tensor:
    real = torch.rand(batch, 3, args.resolution, args.resolution, device=device) * 2 - 1
    return real.to(memory_format=torch.channels_last) if device.type == "cuda" else real


# Ablations: which of the fused path's parts each mode switches off (see the module docstring).
ABLATIONS = {
    "fused-noepilogue": {"epilogue"},
    "fused-nomatmul": {"matmul"},
    "fused-nogradfix": {"gradfix"},
    "fused-prev": {"epilogue", "matmul"},
    "fused-old": {"epilogue", "matmul", "gradfix", "cl_fir"},
    "fused-separate-d": {"merge_d"},
    "compile-separate-d": {"merge_d"},
    "fused-plvjp": {"pl_vjp"},
    "fused-r1vjp": {"r1_vjp"},
    "compile-eager-greg": {"eager_greg"},
    "compile-eager-dreg": {"eager_dreg"},
    "compile-eager-reg": {"eager_greg", "eager_dreg"},
}


@contextlib.contextmanager
def _ablation(mode: str):
    """Switch parts of the fused path off for one mode, restoring them afterwards.

    ``epilogue``: the styles multiply, the demodulation + noise + bias + lrelu epilogue and
    D's bias + lrelu + residual sum go back to separate multiply / addcmul / bias_act / add
    passes; ``matmul``:
    toRGB back to scale + 1x1 convolution; ``gradfix``: convolutions through torch's own
    double backward; ``cl_fir``: the first, 1D upfirdn2d kernel for channels_last tensors.
    """
    import importlib

    from dgan.models import _layers, _stylegan2_d, stylegan2
    from dgan.ops import _upfirdn2d_triton, bias_act, conv2d_gradfix

    mc = importlib.import_module("dgan.ops.modulated_conv2d")
    off = ABLATIONS.get(mode, set())
    saved = (conv2d_gradfix._custom, _upfirdn2d_triton.USE_CL_KERNEL, mc.FUSED_EPILOGUE,
             mc.MATMUL_1X1, _layers.scale_bias_act,
             stylegan2.EAGER_PL_VJP, _stylegan2_d.EAGER_R1_VJP)
    if "pl_vjp" in off:
        stylegan2.EAGER_PL_VJP = True
    if "r1_vjp" in off:
        _stylegan2_d.EAGER_R1_VJP = True
    if "gradfix" in off:
        conv2d_gradfix._custom = lambda op, x, impl: False
    if "cl_fir" in off:
        _upfirdn2d_triton.USE_CL_KERNEL = False
    if "epilogue" in off:
        mc.FUSED_EPILOGUE = False
        def separate(x, b=None, residual=None, **kw):
            y = bias_act(x, b, **kw)
            return y + residual if residual is not None else y

        _layers.scale_bias_act = separate
    if "matmul" in off:
        mc.MATMUL_1X1 = False
    try:
        yield
    finally:
        (conv2d_gradfix._custom, _upfirdn2d_triton.USE_CL_KERNEL, mc.FUSED_EPILOGUE,
         mc.MATMUL_1X1, _layers.scale_bias_act,
         stylegan2.EAGER_PL_VJP, _stylegan2_d.EAGER_R1_VJP) = saved


def run(args: argparse.Namespace, mode: str, batch: int, device: torch.device,
        flops: float) -> dict:
    """Benchmark one (mode, batch) configuration; returns a result row."""
    with _ablation(mode):
        return _run(args, mode, batch, device, flops)


def _run(args: argparse.Namespace, mode: str, batch: int, device: torch.device,
         flops: float) -> dict:
    ops.set_impl("reference" if mode == "reference" else "auto")
    setup = Setup(args, device, mode)
    real = _real(args, batch, device)
    nimg = 0
    t_warm = time.perf_counter()
    for s in range(args.warmup):
        nimg += batch
        setup.step(s, real, nimg)
    sync(device)
    warm_s = time.perf_counter() - t_warm
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for s in range(args.warmup, args.warmup + args.steps):
        nimg += batch
        setup.step(s, real, nimg)
    sync(device)
    dt = time.perf_counter() - t0
    img_s = batch * args.steps / dt
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    peak = args.peak_tflops or default_peak(device)
    frac = flops * img_s / (peak * 1e12) if peak else float("nan")
    return {"mode": mode, "batch": batch, "img_s": img_s, "s_kimg": 1000 / img_s, "mem_gib": mem,
                "gflop_img": flops / 1e9, "frac": frac, "warm_s": warm_s}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="32x32, tiny channels: CPU smoke test")
    p.add_argument("--batches", type=int, nargs="+", default=None)
    p.add_argument("--modes", nargs="+", default=None,
                   choices=["reference", "fused", "compile", "compile-graphs", *ABLATIONS])
    p.add_argument("--steps", type=int, default=None, help="timed steps (use multiples of 16)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--precision", choices=["bf16", "fp32"], default=None)
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--augment", action="store_true", help="adaptive augmentation at p=0.2")
    p.add_argument("--no-flops", dest="count_flops", action="store_false")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.tiny:
        args.resolution, args.channel_base, args.channel_max, args.z_dim = 32, 256, 32, 32
    else:
        args.resolution, args.channel_base, args.channel_max, args.z_dim = 256, 16384, 512, 512
    args.map_depth = 2
    args.batches = args.batches or ([4, 8] if args.tiny else [16, 64])
    gpu = device.type == "cuda"
    args.modes = args.modes or (["reference", "fused", "compile"] if gpu else ["reference"])
    args.steps = args.steps or (4 if args.tiny else 48)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 16)
    args.precision = args.precision or ("bf16" if gpu else "fp32")
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if gpu else "cpu"
    print(f"device: {name}  torch {torch.__version__}  res {args.resolution}  "
          f"precision {args.precision}  steps {args.steps} (+{args.warmup} warm-up)")
    header = f"{'mode':<16}{'batch':>6}{'img/s':>10}{'s/kimg':>9}{'mem GiB':>9}" \
             f"{'GFLOP/img':>11}{'% peak':>8}{'warm-up s':>11}"
    print(header)
    print("-" * len(header))
    # FLOPs per image depend on the architecture and recipe only (401.3 GFLOP at both
    # batch sizes on an H200 run): count once, eagerly, at the smallest batch.
    per_image = float("nan")
    if args.count_flops:
        ops.set_impl("reference")
        small = min(args.batches)
        per_image = count_flops_per_image(Setup(args, device, "reference"),
                                          _real(args, small, device))
    flops = dict.fromkeys(args.batches, per_image)
    failed = False
    for mode in args.modes:
        for batch in args.batches:
            try:
                r = run(args, mode, batch, device, flops[batch])
            except Exception:  # one failing mode must not cost the others (GPU time is scarce)
                traceback.print_exc()
                print(f"{mode:<16}{batch:>6}    FAILED (traceback above)", flush=True)
                failed = True
                continue
            print(f"{r['mode']:<16}{r['batch']:>6}{r['img_s']:>10.1f}{r['s_kimg']:>9.2f}"
                  f"{r['mem_gib']:>9.2f}{r['gflop_img']:>11.1f}{100 * r['frac']:>8.2f}"
                  f"{r['warm_s']:>11.1f}",
                  flush=True)
            if gpu:
                torch.cuda.empty_cache()
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
