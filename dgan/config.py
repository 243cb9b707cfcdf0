"""Structured configuration: one dataclass per component, composed into `Config`.

`load_config(path, overrides)` merges defaults <- YAML file <- `key=value` overrides and
validates the result before any work starts. Errors are `ConfigError` with one line that
names the key, the value and what was expected.
"""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from dgan.data.degrade_config import DegradeConfig

DEFAULT_CONFIG_NAME = "quickstart"


class ConfigError(ValueError):
    """A bad configuration: unknown key, wrong type or value out of range."""


@dataclass
class RunConfig:
    name: str = DEFAULT_CONFIG_NAME  # set from the YAML file's stem unless given
    dir: Optional[str] = None  # default: runs/<name>; the same dir continues the same run
    seed: int = 0
    # another host's lock of run.dir whose heartbeat is older than this many seconds is
    # stale (docs/launching.md); the holder refreshes it every tenth of this
    lock_stale_after: float = 300.0


@dataclass
class DataConfig:
    # shards (directory with index.json, brace pattern, pipe: URL) or builtin:NAME
    # (mnist, stacked_mnist: built once into the cache); None means builtin:mnist
    path: Optional[str] = None
    # unpaired tasks (cyclegan): domain B's single-image shards, resolved like data.path
    # (data.path is domain A); each domain streams with its own resumable position
    path_b: Optional[str] = None
    resolution: int = 28
    channels: int = 1
    workers: int = 1  # DataLoader worker processes per rank
    shuffle_buffer: int = 1000  # samples shuffled together inside one worker
    xflip: bool = False
    # random-crop jitter (pix2pix: 286 at resolution 256): resize to crop x crop, then cut
    # a random resolution x resolution window, the same one for every image of a sample;
    # 0: off (resize to the resolution)
    crop: int = 0
    # largest tar member accepted from a streamed shard (pipe:, URL, compressed), in MiB;
    # a local .tar is capped by its own size
    max_member_mb: int = 256


@dataclass
class TaskConfig:
    # what is trained, one file in dgan/tasks/ each: dcgan | stylegan2 | pix2pix | cyclegan;
    # null: the task of model.name (dcgan -> dcgan, stylegan2 -> stylegan2, ...)
    name: Optional[str] = None
    # pix2pix: AtoB learns each sample's image b from its image a; BtoA the reverse
    direction: str = "AtoB"


@dataclass
class SRConfig:
    """task.name=sr (super-resolution / enhancement, ESRGAN-class): docs/enhancement.md."""
    scale: int = 4  # 1 (restoration at the same size), 2 or 4
    # side of the HR crop G learns from each step (a multiple of sr.scale, at most
    # data.resolution); G sees its degraded sr.patch / sr.scale LR version
    patch: int = 128
    # steps of the first stage: G alone with the pixel loss (PSNR-oriented, D untouched);
    # from this step on the GAN stage (pixel + perceptual + adversarial, D trained)
    pretrain_steps: int = 0
    # how the LR input is made from the HR crop: bicubic (antialiased bicubic downscale,
    # quantised to 8 bits) | realistic (Real-ESRGAN-style blur, resize, noise and JPEG,
    # twice, with the probabilities and ranges of sr.degrade; dgan.data.degrade)
    degradation: str = "bicubic"
    degrade: DegradeConfig = field(default_factory=DegradeConfig)


@dataclass
class ModelConfig:
    # dcgan | stylegan2 | pix2pix (U-Net G, PatchGAN D) | cyclegan (ResNet G, PatchGAN D) |
    # esrgan (RRDB G, U-Net D with spectral norm; task sr); task.name says how it trains
    name: str = "dcgan"
    z_dim: int = 64
    # dcgan
    g_width: int = 32  # channels of G's last hidden layer; doubles towards low resolution
    d_width: int = 32  # channels of D's first layer; doubles towards low resolution
    # pix2pix: stride-2 layers of the PatchGAN D (3: 70x70 patches)
    d_layers: int = 3
    # cyclegan: residual blocks of the ResNet G (the paper: 9 at 256, 6 at 128); esrgan:
    # RRDBs of G (ESRGAN: 23)
    g_blocks: int = 9
    # esrgan: channels each conv of a dense block adds (ESRGAN: 32)
    g_growth: int = 32
    # stylegan2
    w_dim: int = 512
    channel_base: int = 16384  # channels at resolution r: min(channel_base / r, channel_max)
    channel_max: int = 512
    mapping_layers: int = 2
    # class-conditional when the shards carry labels (index.json label names); false: never
    conditional: bool = True
    ops: str = "auto"  # fused kernels: auto (fused on CUDA) | fused | reference
    channels_last: bool = True  # memory format on CUDA


@dataclass
class LossConfig:
    name: str = "nonsaturating"
    r1_gamma: float = 0.0  # R1 penalty weight on reals; 0 disables it
    r1_interval: int = 16  # stylegan2: lazy R1 every N D steps
    pl_weight: float = 0.0  # stylegan2: path-length regularisation weight; 0 disables it
    pl_interval: int = 4  # stylegan2: lazy path length every N G steps
    style_mixing: float = 0.0  # stylegan2: style-mixing probability
    augment: str = "none"  # stylegan2: none | ada (adaptive p) | fixed (DiffAugment-style p)
    augment_p: float = 0.0  # initial (ada) or fixed augmentation probability
    ada_target: float = 0.6  # ada: target sign(D(real)) mean
    l1_weight: float = 100.0  # pix2pix: weight of |G(x) - y|_1 beside the adversarial loss
    cycle_weight: float = 10.0  # cyclegan: weight of the cycle L1 (each way)
    # cyclegan: identity L1 |G_AB(b) - b| (and BA) weight, times loss.cycle_weight; 0: off
    identity_weight: float = 0.5
    pool_size: int = 50  # cyclegan: fakes kept per domain for D's updates; 0: no pool
    # sr: weight of |G(LR) - HR|_1 (both stages)
    pixel_weight: float = 1.0
    # sr: weight of the VGG19 perceptual loss (GAN stage); > 0 needs
    # loss.perceptual_weights; 0: no VGG
    perceptual_weight: float = 1.0
    # sr: torchvision's vgg19 weights (vgg19-dcbb9e9d.pth, or a .safetensors of them with
    # loss.perceptual_sha256); never downloaded
    perceptual_weights: Optional[str] = None
    # sr: the sha256 of loss.perceptual_weights when it is not torchvision's own file
    perceptual_sha256: Optional[str] = None
    # sr: VGG19 layers NAME:WEIGHT, conv*_* before the ReLU, relu*_* after (Real-ESRGAN's)
    perceptual_layers: str = "conv1_2:0.1,conv2_2:0.1,conv3_4:1,conv4_4:1,conv5_4:1"
    # sr: the adversarial loss: vanilla (per-pixel BCE on the U-Net D's map, Real-ESRGAN) |
    # relativistic (relativistic average, ESRGAN)
    gan: str = "vanilla"
    gan_weight: float = 0.1  # sr: weight of G's adversarial loss (GAN stage)


@dataclass
class OptimConfig:
    lr_g: float = 4e-4
    lr_d: float = 4e-4
    beta1: float = 0.5
    beta2: float = 0.999
    # from this step on, every learning rate falls linearly to 0 at train.steps (pix2pix's
    # and CycleGAN's schedule: half the run constant, half decaying; it follows the current
    # train.steps, also after a resume that raised it); 0: constant
    lr_decay_from: int = 0


@dataclass
class TrainConfig:
    batch_size: int = 32  # per process
    steps: int = 3000  # one D step + one G step each
    # fp32 | bf16 | fp16; null: what `accelerate launch --mixed_precision` asked for (bf16,
    # fp16), else fp32 (see resolve_precision)
    precision: Optional[str] = None
    ema_beta: float = 0.999  # dcgan: G_ema decay, ramped up from 0.9 during the first steps
    grad_accum: int = 1  # micro-batches of batch_size per optimizer step, per process
    ema_kimg: float = 10.0  # stylegan2: G_ema half-life in thousands of images
    ema_rampup: float = 0.05  # stylegan2: half-life at most this fraction of images seen
    tf32: bool = True  # on CUDA: TF32 for fp32 matmuls/convolutions (cudnn.benchmark is on)
    # stylegan2 task, ddp: torch.compile G and D in every phase (not Greg with fp16, not Dreg
    # with augmentation); null (auto): on CUDA
    # with the stylegan2 model and the ddp backend, else eager (see resolve_compile)
    compile: Optional[bool] = None
    # where compiled graphs and kernels are cached when compiling, so that a restarted or
    # requeued run (on any node that sees the directory) skips most of the compile time;
    # null: <run.dir>/compile_cache. A TORCHINDUCTOR_CACHE_DIR set in the environment wins.
    compile_cache: Optional[str] = None
    # stop the run (without saving) after this many steps in a row whose loss or gradient
    # was not finite on some rank; such steps are skipped (no update). 0: never stop
    max_bad_steps: int = 10


@dataclass
class CheckpointConfig:
    every: int = 1000  # steps; a checkpoint is also written at the end and on preemption
    keep: int = 2  # newest checkpoints kept ...
    milestone: int = 0  # ... plus every one whose step is a multiple of this (0: none)
    async_save: bool = True  # write in a background thread while training continues
    # a metric key of the in-training evaluation (e.g. fd_digits, fid, coverage_min): the
    # checkpoint of the best value so far is kept outside `keep` and named in
    # <run.dir>/best.json; "" (default): off. Needs eval.every > 0
    keep_best: str = ""


@dataclass
class LogConfig:
    every: int = 500  # steps between scalar logs and sample grids
    grid: int = 64  # images in the fixed-z sample grid
    # auto: a progress bar when stderr is a terminal, else one line every `every` steps
    # (SLURM output files, pipes); bar | lines | off. true and false mean auto and off
    progress: str = "auto"
    # where scalars, sample grids and the resolved config go besides log.jsonl and samples/:
    # any of tensorboard (run.dir/tb), wandb, mlflow (pip install 'dgan[wandb]' / 'dgan[mlflow]')
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])
    project: str = "dgan"  # wandb project / mlflow experiment


@dataclass
class EvalConfig:
    every: int = 0  # steps between evaluations (and one at the end); 0: off
    metrics: list[str] = field(default_factory=lambda: ["fd", "coverage"])
    n: int = 2000  # generated samples (and real samples) per evaluation
    # digit-classifier metrics (fd_digits, coverage, modes; fd/kid/pr without Inception):
    # auto: only on the built-in digits; true: the data are digits too; false: never
    digit_metrics: str = "auto"


@dataclass
class BackendConfig:
    name: str = "ddp"  # ddp (through accelerate) | deepspeed (one engine for G, one for D)
    zero_stage: int = 0  # deepspeed only: ZeRO stage 0, 1 or 2 (3 is refused)
    deepspeed_config_g: Optional[str] = None  # deepspeed only: JSON for G's engine
    deepspeed_config_d: Optional[str] = None  # deepspeed only: JSON for D's engine
    # refuse to start when the launch gave another number of processes; 0: no check
    expect_world_size: int = 0
    # deepspeed only: let DeepSpeed load its own engine files on resume (it unpickles them
    # with torch.load(weights_only=False), which runs code in a crafted file)
    trust_deepspeed_files: bool = False


class InitConfig:
    """`init.from`: weights a new run starts from (dgan.checkpoint.init_from). `from` is a
    Python keyword, so the field is declared by hand: no generated __init__, __repr__ or __eq__
    (they would spell `self.from`); OmegaConf reads the class attribute as the default."""


InitConfig.__annotations__ = {"from": "Optional[str]"}
setattr(InitConfig, "from", None)  # a run / checkpoint / export directory or an NVlabs .pkl
InitConfig = dataclass(init=False, repr=False, eq=False)(InitConfig)  # type: ignore[misc]


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    sr: SRConfig = field(default_factory=SRConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    init: InitConfig = field(default_factory=InitConfig)
    # auto: the newest valid checkpoint in run.dir, else a fresh start; never: always fresh
    # (run.dir should then be new); or a checkpoint directory / another run's directory
    resume: str = "auto"


CHOICES: dict[str, tuple[Any, ...]] = {
    "train.precision": ("fp32", "bf16", "fp16"),
    "backend.name": ("ddp", "deepspeed"),
    "backend.zero_stage": (0, 1, 2, 3),
    "model.name": ("dcgan", "stylegan2", "pix2pix", "cyclegan", "esrgan"),
    "task.direction": ("AtoB", "BtoA"),
    "sr.scale": (1, 2, 4),
    "sr.degradation": ("bicubic", "realistic"),
    "loss.gan": ("vanilla", "relativistic"),
    "model.ops": ("auto", "fused", "reference"),
    "loss.name": ("nonsaturating",),
    "loss.augment": ("none", "ada", "fixed"),
    "log.progress": ("auto", "bar", "lines", "off"),
}
RESOLUTIONS = {"dcgan": (28, 32, 64), "stylegan2": (32, 64, 128, 256, 512, 1024),
               "pix2pix": (32, 64, 128, 256, 512), "cyclegan": (32, 64, 128, 256, 512),
               # the HR images' side (sr.patch crops of them are trained on)
               "esrgan": (32, 48, 64, 96, 128, 192, 256, 384, 512)}
POSITIVE = ("train.batch_size", "train.steps", "checkpoint.every", "checkpoint.keep",
            "log.every", "log.grid", "data.channels", "model.z_dim", "model.g_width",
            "model.d_width", "optim.lr_g", "optim.lr_d", "train.grad_accum", "data.max_member_mb",
            "run.lock_stale_after", "model.d_layers", "model.g_blocks", "model.g_growth",
            "sr.patch")
NON_NEGATIVE = ("data.workers", "data.shuffle_buffer", "data.crop", "loss.r1_gamma", "eval.every",
                "loss.pl_weight", "loss.style_mixing", "loss.augment_p", "train.ema_kimg",
                "backend.expect_world_size", "checkpoint.milestone",
                "train.max_bad_steps", "loss.l1_weight", "optim.lr_decay_from",
                "loss.cycle_weight", "loss.identity_weight", "loss.pool_size",
                "loss.pixel_weight", "loss.perceptual_weight", "loss.gan_weight",
                "sr.pretrain_steps")
METRICS = ("fd", "kid", "pr", "fd_digits", "coverage", "modes", "psnr", "ssim", "l1",
           "digit_class", "cycle_l1", "psnr_y", "ssim_y")
TRACKERS = ("tensorboard", "wandb", "mlflow")  # dgan.trackers.TRACKERS
# The result keys each eval.metrics name can give (fd/kid/pr: Inception features when its
# weights are found, else the digit classifier's, keys ending in _digits); the metric
# names checkpoint.keep_best and `dgan eval --best` accept.
METRIC_KEYS: dict[str, tuple[str, ...]] = {
    # translation tasks too: pix2pix's outputs against the targets under the same keys,
    # cyclegan's G_AB(a) against domain B (..._ab) and G_BA(b) against A (..._ba)
    "fd": ("fid", "fd_digits", "fid_ab", "fid_ba", "fd_digits_ab", "fd_digits_ba"),
    "kid": ("kid", "kid_digits", "kid_ab", "kid_ba", "kid_digits_ab", "kid_digits_ba"),
    "pr": ("precision", "recall", "precision_digits", "recall_digits"),
    "fd_digits": ("fd_digits",),
    "coverage": ("classes_covered", "coverage_min", "confident", "coverage_kl"),
    "modes": ("modes", "modes_kl"),
    "psnr": ("psnr",),  # translation tasks (pix2pix)
    "ssim": ("ssim",),
    "l1": ("l1",),
    "digit_class": ("digit_class", "digit_class_ab", "digit_class_ba"),  # cyclegan: _ab, _ba
    "cycle_l1": ("cycle_l1", "cycle_l1_a", "cycle_l1_b"),  # unpaired translation (cyclegan)
    # super-resolution (sr): G_ema's outputs and bicubic upscaling of the same LR inputs
    # against the HR images, on the Y channel (dgan.metrics.sr)
    "psnr_y": ("psnr_y", "psnr_y_bicubic"),
    "ssim_y": ("ssim_y", "ssim_y_bicubic"),
}
# The one table of directions: keys with these prefixes or suffixes are better when lower
# (distances, divergences); every other metric key is better when higher.
LOWER_IS_BETTER_PREFIXES = ("fd", "fid", "kid", "l1", "cycle_l1")
LOWER_IS_BETTER_SUFFIXES = ("_kl",)


def metric_direction(key: str) -> str:
    """"min" when a lower value of metric key `key` is better, else "max"."""
    lower = key.startswith(LOWER_IS_BETTER_PREFIXES) or key.endswith(LOWER_IS_BETTER_SUFFIXES)
    return "min" if lower else "max"


def metric_keys(metrics: list[str] | tuple[str, ...]) -> list[str]:
    """Every result key that the eval.metrics names `metrics` can give, in table order."""
    keys: list[str] = []
    for m in metrics:
        keys += [k for k in METRIC_KEYS.get(m, ()) if k not in keys]
    return keys


def all_keys(node: Any = Config, prefix: str = "") -> list[str]:
    """Every dotted leaf key of the schema, e.g. ``train.batch_size``."""
    keys: list[str] = []
    for f in fields(node):
        if is_dataclass(f.type) or (isinstance(f.type, str) and f.type.endswith("Config")):
            keys += all_keys(f.default_factory().__class__, f"{prefix}{f.name}.")  # type: ignore[misc]
        else:
            keys.append(prefix + f.name)
    return keys


def _unknown_key(key: str, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, all_keys(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see `dgan train --print-config`"
    return ConfigError(f"unknown config key '{key}' ({where}){hint}")


def _check_keys(node: Any, where: str, prefix: str = "") -> None:
    """Fail on keys that the schema does not have, suggesting the closest valid ones."""
    valid = set(all_keys())
    # every section, nested ones too (sr.degrade)
    groups = {".".join(k.split(".")[:i]) for k in valid for i in range(1, k.count(".") + 1)}
    if not isinstance(node, dict):
        raise ConfigError(f"{where}: expected a mapping of config groups, got {type(node).__name__}")
    for k, v in node.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key in groups:
            _check_keys(v, where, key + ".")
        elif key not in valid:
            raise _unknown_key(key, where)


def _merge(base: DictConfig, other: Any, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)  # type: ignore[return-value]
    except (ConfigKeyError, ConfigAttributeError) as e:
        raise _unknown_key(str(e.full_key), where) from None
    except OmegaConfBaseException as e:
        expected = type(OmegaConf.select(base, str(e.full_key))).__name__ if e.full_key else "?"
        raise ConfigError(
            f"bad value for '{e.full_key}' ({where}): {e.msg.splitlines()[0]} (expected {expected})"
        ) from None


def validate(cfg: DictConfig) -> None:
    """Range and choice checks that types alone cannot express."""
    for key in all_keys():
        value = OmegaConf.select(cfg, key)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"bad value for '{key}': {value}; expected a finite number")
    for key, choices in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            raise ConfigError(f"bad value for '{key}': {value!r}; expected one of {list(choices)}")
    for key in POSITIVE:
        if OmegaConf.select(cfg, key) <= 0:
            raise ConfigError(f"bad value for '{key}': {OmegaConf.select(cfg, key)}; expected > 0")
    for key in NON_NEGATIVE:
        if OmegaConf.select(cfg, key) < 0:
            raise ConfigError(f"bad value for '{key}': {OmegaConf.select(cfg, key)}; expected >= 0")
    allowed = RESOLUTIONS[cfg.model.name]
    if cfg.data.resolution not in allowed:
        raise ConfigError(f"bad value for 'data.resolution': {cfg.data.resolution}; "
                          f"model.name={cfg.model.name} supports {list(allowed)}")
    if cfg.data.channels not in (1, 3):
        raise ConfigError(f"bad value for 'data.channels': {cfg.data.channels}; expected 1 or 3")
    if 0 < cfg.data.crop < cfg.data.resolution:
        raise ConfigError(f"bad value for 'data.crop': {cfg.data.crop}; expected 0 (off) or a "
                          f"load size >= data.resolution ({cfg.data.resolution})")
    if not str(cfg.resume).strip():
        raise ConfigError("bad value for 'resume': ''; expected auto, never or a checkpoint path")
    # init.from must exist only when a run starts from it (checked then): a saved config
    # still loads for sampling after the file it started from is gone
    if OmegaConf.select(cfg, "init.from") is not None and not str(cfg.init["from"]).strip():
        raise ConfigError("bad value for 'init.from': ''; expected a dgan run, checkpoint or "
                          "export directory, or an NVlabs .pkl (or null)")
    if cfg.backend.zero_stage == 3:
        raise ConfigError("backend.zero_stage=3 is not supported: ZeRO-3 partitions D's "
                          "parameters, which G's step uses outside D's engine; use "
                          "backend.zero_stage=2 or backend.name=ddp")
    if cfg.backend.name == "deepspeed" and cfg.train.precision == "fp16":
        raise ConfigError("train.precision=fp16 is not supported with backend.name=deepspeed "
                          "(DeepSpeed's fp16 mode casts the networks to half precision); use "
                          "train.precision=bf16, or backend.name=ddp for fp16")
    if cfg.backend.name == "deepspeed" and cfg.loss.r1_gamma > 0:
        # DeepSpeed hooks the outputs of engine(...) and treats any backward through them,
        # R1's autograd.grad included, as the engine's backward (ZeRO bookkeeping, and the
        # gradient divided by the accumulation steps): R1 would be wrong or fail.
        raise ConfigError("loss.r1_gamma > 0 is not supported with backend.name=deepspeed "
                          "(DeepSpeed treats R1's input-gradient pass as a training backward); "
                          "use backend.name=ddp for R1")
    if cfg.train.compile and cfg.backend.name == "deepspeed":
        # A compiled wrapper would have to sit inside the engine (engine.module), which
        # eager phases may also call, or around the engine and its ZeRO hooks.
        raise ConfigError("train.compile=true is not supported with backend.name=deepspeed "
                          "(the engine owns the module that the eager phases call too); use "
                          "backend.name=ddp or train.compile=false")
    cache = cfg.train.compile_cache
    if cache is not None and (not str(cache).strip() or os.path.isfile(cache)):
        raise ConfigError(f"bad value for 'train.compile_cache': {cache!r}; expected a "
                          "directory (it is created if missing), or null for "
                          "<run.dir>/compile_cache")
    for metric in cfg.eval.metrics:
        if metric not in METRICS:
            raise ConfigError(f"bad value in 'eval.metrics': {metric!r}; expected any of {list(METRICS)}")
    for tracker in cfg.log.trackers:
        if tracker not in TRACKERS:
            raise ConfigError(f"bad value in 'log.trackers': {tracker!r}; expected any of "
                              f"{list(TRACKERS)}")
        if list(cfg.log.trackers).count(tracker) > 1:
            raise ConfigError(f"bad value for 'log.trackers': {tracker!r} is listed twice; "
                              "expected each tracker once")
    if not str(cfg.log.project).strip():
        raise ConfigError("bad value for 'log.project': ''; expected a W&B project / MLflow "
                          "experiment name")
    best = str(cfg.checkpoint.keep_best)
    if best:
        if best not in metric_keys(list(cfg.eval.metrics)):
            raise ConfigError(f"bad value for 'checkpoint.keep_best': {best!r}; expected a "
                              f"metric that eval.metrics={list(cfg.eval.metrics)} computes: "
                              f"{', '.join(metric_keys(list(cfg.eval.metrics)))} (or '' for off)")
        if cfg.eval.every <= 0:
            raise ConfigError(f"checkpoint.keep_best={best} needs eval.every > 0 (the "
                              "in-training evaluation it is chosen by); set eval.every")
    if cfg.eval.n < 2:
        raise ConfigError(f"bad value for 'eval.n': {cfg.eval.n}; expected >= 2")
    if str(cfg.eval.digit_metrics).lower() not in ("auto", "true", "false"):
        raise ConfigError(f"bad value for 'eval.digit_metrics': {cfg.eval.digit_metrics!r}; "
                          "expected auto, true or false")
    for key in ("optim.beta1", "optim.beta2"):
        if not 0.0 <= OmegaConf.select(cfg, key) < 1.0:
            raise ConfigError(f"bad value for '{key}': {OmegaConf.select(cfg, key)}; "
                              "expected [0, 1)")
    if os.path.exists(str(cfg.run.dir)) and not os.path.isdir(str(cfg.run.dir)):
        raise ConfigError(f"bad value for 'run.dir': {cfg.run.dir} exists and is not a "
                          "directory; expected a directory (it is created if missing)")
    if cfg.optim.lr_decay_from >= cfg.train.steps:
        raise ConfigError(f"bad value for 'optim.lr_decay_from': {cfg.optim.lr_decay_from}; "
                          f"expected 0 (constant) or a step before train.steps={cfg.train.steps}")
    if not 0.0 <= cfg.train.ema_beta < 1.0:
        raise ConfigError(f"bad value for 'train.ema_beta': {cfg.train.ema_beta}; expected [0, 1)")
    from dgan.tasks import validate_task  # the task's own keys, grad_accum and compile

    validate_task(cfg, OmegaConf.structured(Config), ConfigError)


def resolve_compile(cfg: DictConfig, device: Any) -> bool:
    """Whether the StyleGAN2 task compiles (its phases, see
    `dgan.tasks.stylegan2.compiled_phases`): `train.compile` when set, else
    (null, auto) on a CUDA device with the stylegan2 model and the ddp backend, where it
    was measured faster (about 1.7x the eager fused path at batch 64 on an H200, see
    benchmarks/RESULTS.md); eager on the CPU, where compiling costs more than it saves on
    a short run, and with deepspeed, which cannot take it."""
    if cfg.train.compile is not None:
        return bool(cfg.train.compile)
    return (getattr(device, "type", str(device)) == "cuda" and cfg.model.name == "stylegan2"
            and cfg.backend.name == "ddp")


def resolve_precision(cfg: DictConfig) -> None:
    """Fill in `train.precision` when it was not given: accelerate's `--mixed_precision`
    (or its config file's `mixed_precision`), which `accelerate launch` exports as
    ACCELERATE_MIXED_PRECISION, else fp32. Given both ways, they must agree; accelerate's
    "no" is its default, so it counts as not given."""
    asked = (os.environ.get("ACCELERATE_MIXED_PRECISION") or "no").strip().lower()
    if asked not in ("no", "bf16", "fp16"):
        raise ConfigError(f"accelerate launch asked for --mixed_precision {asked} "
                          "(ACCELERATE_MIXED_PRECISION), which dgan does not support; use no, "
                          "bf16 or fp16, or set train.precision")
    given = cfg.train.precision
    if given is None:
        cfg.train.precision = "fp32" if asked == "no" else asked
    elif asked != "no" and asked != given:
        raise ConfigError(f"train.precision={given} but accelerate launch asked for "
                          f"--mixed_precision {asked} (ACCELERATE_MIXED_PRECISION); make them "
                          "agree, or give only one of them")


def resolve_progress(cfg: DictConfig) -> None:
    """`log.progress` true / false, its values when it was a bool (OmegaConf keeps them as
    the strings True / False, YAML's on / off too), mean auto / off."""
    value = str(cfg.log.progress)
    cfg.log.progress = {"true": "auto", "false": "off"}.get(value.lower(), value)


def load_config(path: Optional[str] = None, overrides: tuple[str, ...] | list[str] = ()) -> DictConfig:
    """Defaults <- YAML file <- dotlist overrides, validated. Raises ConfigError."""
    cfg: DictConfig = OmegaConf.structured(Config)
    name = DEFAULT_CONFIG_NAME
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = OmegaConf.to_container(OmegaConf.load(p))
        except Exception as e:  # yaml errors come in many types
            raise ConfigError(f"cannot parse config file {path}: {e}") from None
        _check_keys(data or {}, f"in {path}")
        cfg = _merge(cfg, data or {}, f"in {path}")
        name = p.stem
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"bad override '{item}': expected key=value, e.g. train.steps=100")
        key, value = item.split("=", 1)
        if key not in all_keys():
            raise _unknown_key(key, "command line")
        cfg = _merge(cfg, OmegaConf.from_dotlist([f"{key}={value}"]), "command line")
    if cfg.run.name == DEFAULT_CONFIG_NAME and name != DEFAULT_CONFIG_NAME:
        cfg.run.name = name
    if cfg.run.dir is None:
        cfg.run.dir = os.path.join("runs", cfg.run.name)
    resolve_precision(cfg)
    resolve_progress(cfg)
    validate(cfg)
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def config_from_yaml_text(text: str) -> DictConfig:
    """Rebuild a validated config from a saved resolved config (e.g. a run's config.yaml)."""
    cfg = _merge(OmegaConf.structured(Config), OmegaConf.create(text), "saved config")
    resolve_progress(cfg)
    validate(cfg)
    return cfg
