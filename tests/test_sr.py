"""Super-resolution (task.name=sr): the ESRGAN-class networks, crops and degradation keyed by
(seed, step, global sample index), the two stages (D untouched while G pretrains), exact resume across the
stage boundary, the VGG19 perceptual weights' checks, config errors, PSNR/SSIM on Y, and dgan eval / ckpt export / enhance of a trained run."""

from __future__ import annotations

import hashlib
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dgan.cli import _resolve_data, main
from dgan.config import ConfigError, load_config
from dgan.engine.preempt import REQUEUE_EXIT_CODE, PreemptionFlag
from dgan.engine.trainer import Trainer
from dgan.metrics.sr import psnr_y, ssim_y
from dgan.models.esrgan import RRDB, DenseBlock, RRDBGenerator, SNConv2d, UNetDiscriminator
from dgan.models.vgg import conv_layers
from dgan.tasks.sr import SR, bicubic_downscale

CONFIG = "configs/sr_x4_photos.yaml"
# the demo config on the built-in digits (fast, no scikit-image), bicubic LR unless a test
# asks for sr.degradation=realistic
TINY = ["data.path=builtin:mnist", "data.resolution=32", "data.channels=1",
        "sr.degradation=bicubic",
        "model.g_width=8", "model.g_blocks=1", "model.g_growth=4", "model.d_width=4",
        "train.batch_size=4", "data.workers=0", "log.progress=off", "log.grid=4",
        "eval.every=0", "sr.patch=32", "loss.perceptual_weight=0"]


def config(run_dir, *extra):
    return load_config(CONFIG, [f"run.dir={run_dir}", *TINY, *extra])


def fit(cfg):
    trainer = Trainer(cfg, _resolve_data(cfg))
    assert trainer.fit() == 0
    return trainer


def weights(trainer):
    """Every network, EMA and optimizer tensor of a trainer, by name (clones)."""
    out = {}
    for name, net in {**trainer.backend.nets, **trainer.emas}.items():
        out.update({f"{name}.{k}": v.clone() for k, v in net.state_dict().items()})
    for group, opt in trainer.optimizers.items():
        for pid, st in opt.state_dict()["state"].items():
            out.update({f"opt_{group}.{pid}.{k}": v.clone() for k, v in st.items()
                        if torch.is_tensor(v)})
    return out


# -- networks ---------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1, 2, 4])
@pytest.mark.parametrize("channels", [1, 3])
def test_generator_upscales_by_the_scale(scale, channels):
    torch.manual_seed(0)
    g = RRDBGenerator(channels, channels, scale, width=8, blocks=2, growth=4)
    x = torch.randn(2, channels, 8, 12)
    assert g(x).shape == (2, channels, 8 * scale, 12 * scale)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in g.modules())
    assert sum(isinstance(m, RRDB) for m in g.modules()) == 2
    with pytest.raises(ValueError, match="scale 3; expected one of"):
        RRDBGenerator(1, 1, 3)


def test_dense_blocks_start_small():
    """ESRGAN's init: Kaiming-normal x 0.1, zero biases, so each dense block starts near
    the identity."""
    torch.manual_seed(0)
    block = DenseBlock(64, 32)
    conv = block.convs[4]
    fan_in = conv.weight[0].numel()
    assert conv.weight.std().item() == pytest.approx(0.1 * math.sqrt(2 / fan_in), rel=0.05)
    assert torch.all(conv.bias == 0)
    small = DenseBlock(16, 8)
    x = torch.randn(2, 16, 8, 8)
    assert (small(x) - x).abs().mean() < 0.02 * x.abs().mean()


def test_unet_discriminator_gives_a_logit_per_pixel_with_spectral_norm():
    torch.manual_seed(0)
    d = UNetDiscriminator(3, width=4)
    for shape in [(2, 3, 32, 32), (1, 3, 24, 40), (1, 3, 9, 13)]:
        assert d(torch.randn(shape)).shape == (shape[0], 1, *shape[2:])
    sn = [m for m in d.modules() if isinstance(m, SNConv2d)]
    assert len(sn) == 8
    d(torch.randn(1, 3, 16, 16))
    for m in sn:  # one power iteration per forward: the norm converges to 1
        for _ in range(300):
            w = m.normalised_weight().detach()
        s = torch.linalg.matrix_norm(w.flatten(1), ord=2)
        assert s.item() == pytest.approx(1.0, rel=1e-2)
    d.eval()
    u = [m.sn_u.clone() for m in sn]
    d(torch.randn(1, 3, 16, 16))
    assert all(torch.equal(a, m.sn_u) for a, m in zip(u, sn))  # eval: estimate kept
    with pytest.raises(ValueError, match="at least 8x8"):
        d(torch.randn(1, 3, 4, 16))


# -- crops and degradation ----------------------------------------------------------------
def _task(tmp_path, rank=0, *extra):
    task = SR(config(tmp_path / "r", *extra))
    task.backend = SimpleNamespace(rank=rank, device=torch.device("cpu"))
    return task


def test_crops_and_degradation_are_keyed_by_seed_step_and_global_index(tmp_path):
    """Each crop's corner comes from (run.seed, step, CROP_PHASE, the sample's index in the
    step's global batch): not from the rank, so row i of rank 0's batch of 2B is row i - B
    of rank 1's batch of B (with B = batch_size x grad_accum)."""
    images = torch.rand(6, 3, 48, 48) * 2 - 1
    extra = ("data.resolution=48", "sr.patch=16", "data.channels=3")

    def drawn(step, rank=0, seed=0, rows=slice(None), *more):
        task = _task(tmp_path, rank, *extra, f"run.seed={seed}", *more)
        batch = {"image": images[rows].clone(), "label": None}
        task.draw(step, batch)
        return batch["hr"], batch["lr"]

    hr, lr = drawn(3, 0, 0, slice(None), "train.batch_size=6")
    assert hr.shape == (6, 3, 16, 16) and lr.shape == (6, 3, 4, 4)
    h2, l2 = drawn(3, 0, 0, slice(None), "train.batch_size=6")
    assert torch.equal(hr, h2) and torch.equal(lr, l2)  # a resumed run's step draws the same
    for other in (drawn(4, 0, 0, slice(None), "train.batch_size=6"),
                  drawn(3, 0, 1, slice(None), "train.batch_size=6")):
        assert not torch.equal(hr, other[0])
    # the split: rank 0 with 3 rows, rank 1 with 3 rows (one micro-batch, or three of one)
    for more in (["train.batch_size=3"], ["train.batch_size=1", "train.grad_accum=3"]):
        h0, l0 = drawn(3, 0, 0, slice(0, 3), *more)
        h1, l1 = drawn(3, 1, 0, slice(3, 6), *more)
        assert torch.equal(hr[:3], h0) and torch.equal(lr[:3], l0), more
        assert torch.equal(hr[3:], h1) and torch.equal(lr[3:], l1), more
    # a rank's rows are not the other rank's draws: rank 1 with rank 0's images crops them
    # elsewhere (the index, not the image or the row in the rank's batch, keys the draw)
    assert not torch.equal(drawn(3, 1, 0, slice(0, 3), "train.batch_size=3")[0], hr[:3])
    same = images[:1].expand(6, -1, -1, -1)  # one image 6 times: 6 different windows
    task = _task(tmp_path, 0, *extra, "train.batch_size=6")
    batch = {"image": same.clone(), "label": None}
    task.draw(3, batch)
    assert len({c.numpy().tobytes() for c in batch["hr"]}) == 6
    # each crop is a window of its own image
    for img, crop in zip(images, hr):
        windows = img.unfold(1, 16, 1).unfold(2, 16, 1)  # [C, 33, 33, 16, 16]
        assert (windows - crop[:, None, None]).abs().flatten(3).amax(3).amax(0).min() == 0
    # LR: antialiased bicubic of the crop, on 8-bit levels
    want = F.interpolate((hr + 1) / 2, size=(4, 4), mode="bicubic", antialias=True,
                         align_corners=False).clamp(0, 1)
    got = (lr + 1) / 2
    assert torch.allclose(got, (want * 255).round() / 255, atol=1e-6)
    assert torch.allclose(got * 255, (got * 255).round(), atol=1e-4)
    assert torch.equal(bicubic_downscale(torch.full((1, 1, 8, 8), 0.5), 1),
                       torch.full((1, 1, 8, 8), 128 / 255))


def test_realistic_degradation_is_keyed_by_seed_step_and_global_index(tmp_path):
    """sr.degradation=realistic: each crop degraded alone (dgan.data.degrade on [1, C, P, P])
    with the generator of (run.seed, step, DEGRADE_PHASE, its global index); the same step
    degrades the same crops the same way (a resumed run), another step or seed differently,
    a sample the same on whichever rank it lands, and not as bicubic does. The evaluation's
    draws stay one generator of (run.seed, rank 0, EVAL_STEP) per batch, on every rank."""
    from dgan.data.degrade import degrade
    from dgan.engine.seeding import sample_generator, step_generator
    from dgan.tasks.sr import DEGRADE_PHASE, EVAL_STEP

    images = torch.rand(4, 3, 48, 48) * 2 - 1
    extra = ("data.resolution=48", "sr.patch=32", "data.channels=3",
             "sr.degradation=realistic")

    def drawn(step, rank=0, seed=0, rows=slice(None), batch_size=4):
        task = _task(tmp_path, rank, *extra, f"run.seed={seed}",
                     f"train.batch_size={batch_size}")
        hr = images[rows, :, :32, :32]
        batch = {"image": images[rows].clone(), "label": None, "hr": hr}
        task.draw(step, batch)
        return batch["lr"], task

    lr, task = drawn(3)
    assert lr.shape == (4, 3, 8, 8)
    assert torch.equal(lr, drawn(3)[0])
    for other in (drawn(4)[0], drawn(3, seed=1)[0]):
        assert not torch.equal(lr, other)
    hr01 = (images[:, :, :32, :32] + 1) / 2
    want = torch.cat([degrade(hr01[i:i + 1], 4, task.cfg.sr.degrade,
                              sample_generator(0, 3, DEGRADE_PHASE, i)) * 2 - 1
                      for i in range(4)])
    assert torch.equal(lr, want)
    # 2 ranks x 2 rows = 1 rank x 4 rows; rank 1 degrading rank 0's crops does it otherwise
    assert torch.equal(drawn(3, 0, 0, slice(0, 2), 2)[0], lr[:2])
    assert torch.equal(drawn(3, 1, 0, slice(2, 4), 2)[0], lr[2:])
    assert not torch.equal(drawn(3, 1, 0, slice(0, 2), 2)[0], lr[:2])
    assert not torch.allclose(lr, bicubic_downscale(hr01, 4) * 2 - 1, atol=0.02)
    # the evaluation: the same on rank 0 and rank 1, as before this change (one generator)
    ev = task.degrade_eval(images[:, :, :32, :32])
    assert torch.equal(ev, _task(tmp_path, 1, *extra).degrade_eval(images[:, :, :32, :32]))
    assert torch.equal(ev, degrade(hr01, 4, task.cfg.sr.degrade,
                                   step_generator(0, 0, EVAL_STEP, DEGRADE_PHASE)) * 2 - 1)


# -- training: stages and resume ----------------------------------------------------------
def test_d_is_untouched_while_g_pretrains_then_trained(tmp_path):
    cfg = config(tmp_path / "a", "sr.pretrain_steps=2", "train.steps=2")
    init = weights(Trainer(cfg, _resolve_data(cfg)))
    pre = fit(cfg)
    after_pre = weights(pre)
    d_keys = [k for k in init if k.startswith("D.")]
    assert d_keys and all(torch.equal(init[k], after_pre[k]) for k in d_keys)
    d_state = pre.optimizers["D"].state_dict()["state"]  # D's Adam never stepped
    assert d_state and all(st["step"] == 0 and not st["exp_avg"].any()
                           and not st["exp_avg_sq"].any() for st in d_state.values())
    assert not all(torch.equal(init[k], after_pre[k]) for k in init if k.startswith("G."))
    gan = fit(config(tmp_path / "a", "sr.pretrain_steps=2", "train.steps=3"))
    after = weights(gan)
    assert not all(torch.equal(after_pre[k], after[k]) for k in d_keys)
    assert all(st["step"] == 1 for st in gan.optimizers["D"].state_dict()["state"].values())


class StopAt(PreemptionFlag):
    """A preemption agreed once the trainer has finished step `at` (saved, exit 75)."""

    def __init__(self, trainer, at):
        super().__init__()
        self.trainer, self.at = trainer, at

    def agreed(self, all_reduce, device="cpu"):
        return self.trainer.step == self.at


@pytest.mark.parametrize("stop", [1, 2])  # before the boundary, and exactly at it
def test_resume_across_the_stage_boundary_is_exact(tmp_path, stop):
    """4 steps at once (pretraining 0-1, GAN 2-3, lr decaying from step 1, checkpoints only
    at the end) = stopped (preempted) after `stop` steps, then a new Trainer resuming to 4;
    G, D, G_ema and both optimizers bit for bit."""
    extra = ["sr.pretrain_steps=2", "optim.lr_decay_from=1", "loss.gan=relativistic",
             "checkpoint.every=100", "log.every=1", "train.steps=4",
             "sr.degradation=realistic"]
    straight = fit(config(tmp_path / "a", *extra))
    cfg = config(tmp_path / "b", *extra)
    first = Trainer(cfg, _resolve_data(cfg))
    assert first.fit(StopAt(first, stop)) == REQUEUE_EXIT_CODE and first.step == stop
    resumed = fit(config(tmp_path / "b", *extra))
    assert resumed.step == 4
    want, got = weights(straight), weights(resumed)
    assert want.keys() == got.keys() and any(k.startswith("opt_D.") for k in want)
    for k in want:
        assert torch.equal(want[k], got[k]), k


def test_grad_accum_gives_the_fakes_of_each_micro_batch_to_d(tmp_path):
    cfg = config(tmp_path / "a", "train.grad_accum=2", "train.batch_size=2",
                 "sr.pretrain_steps=0", "train.steps=1")
    trainer = Trainer(cfg, _resolve_data(cfg))
    stats = trainer.train_step(trainer.next_batch())
    assert {"loss/D", "loss/G_adv", "loss/G_pixel"} <= set(stats)
    assert trainer.task._fakes == []  # every fake consumed by D's phase, none left over


def test_grid_and_evaluation(tmp_path, capsys):
    cfg = config(tmp_path / "a", "sr.pretrain_steps=1", "train.steps=2", "eval.n=8")
    trainer = fit(cfg)
    grid = trainer.sample_grid()
    assert grid.shape == (4, 1, 32, 128)
    hr, lr = trainer.task.grid["hr"], trainer.task.grid["lr"]
    assert torch.equal(grid[..., 96:], hr)
    assert torch.equal(grid[..., :32], F.interpolate(lr, scale_factor=4, mode="nearest"))
    results = trainer.evaluate()
    assert set(results) == {"psnr_y", "ssim_y", "psnr_y_bicubic", "ssim_y_bicubic", "images"}
    assert results["images"] == 8
    assert 5 < results["psnr_y_bicubic"] < 100 and 0 < results["ssim_y_bicubic"] < 1
    capsys.readouterr()
    # dgan eval of the run measures what the in-training evaluation measured (G_ema, the
    # same images, the same degradation draws)
    assert main(["eval", "--run", str(tmp_path / "a")]) == 0
    import json

    saved = json.loads((tmp_path / "a" / "eval-00000002.json").read_text())
    for key, value in results.items():
        assert saved[key] == pytest.approx(value, rel=1e-6), key


# -- the perceptual loss's weights --------------------------------------------------------
def fake_vgg19(path, drop=None, reshape=None, extra=True):
    """A state dict with torchvision's vgg19 `features` layout, random values (small
    storage: each weight a random per-output-channel value expanded to its shape)."""
    torch.manual_seed(0)
    state = {}
    for name, (i, cin, cout) in conv_layers().items():
        state[f"features.{i}.weight"] = (torch.randn(cout, 1, 1, 1) * 0.05).expand(cout, cin, 3, 3)
        state[f"features.{i}.bias"] = torch.zeros(cout)
    if extra:
        state["classifier.0.weight"] = torch.zeros(2, 2)
    if drop:
        del state[drop]
    if reshape:
        state[reshape] = torch.zeros(3, 3)
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _perceptual(tmp_path, path, *extra):
    return config(tmp_path / "r", "loss.perceptual_weight=1", f"loss.perceptual_weights={path}",
                  "sr.pretrain_steps=0", "train.steps=1", *extra)


def _one_line_error(cfg, match):
    with pytest.raises(ConfigError, match=match) as e:
        Trainer(cfg, _resolve_data(cfg))
    assert "\n" not in str(e.value), str(e.value)


def test_perceptual_loss_trains_with_a_vgg19_file(tmp_path):
    path = tmp_path / "vgg.pth"
    sha = fake_vgg19(path)
    cfg = _perceptual(tmp_path, path, f"loss.perceptual_sha256={sha}",
                      "loss.perceptual_layers=conv2_2:0.5,relu3_1:1")
    trainer = Trainer(cfg, _resolve_data(cfg))
    vgg = trainer.task.perceptual.net
    assert len(vgg.convs) == 5 and not any(p.requires_grad for p in vgg.parameters())
    assert torch.equal(vgg.convs[3].weight, torch.load(path, weights_only=True)["features.7.weight"])
    stats = trainer.train_step(trainer.next_batch())
    assert stats["loss/G_perceptual"] > 0


def test_perceptual_weights_errors_are_one_line(tmp_path):
    path = tmp_path / "vgg.pth"
    sha = fake_vgg19(path)
    _one_line_error(_perceptual(tmp_path, tmp_path / "nope.pth"),
                    r"nope.pth: no such file; expected torchvision's VGG19")
    _one_line_error(_perceptual(tmp_path, path),  # no sha256 given: torchvision's file wanted
                    rf"vgg.pth: sha256 {sha} is not torchvision's vgg19-dcbb9e9d.pth")
    _one_line_error(_perceptual(tmp_path, path, "loss.perceptual_sha256=" + "ab" * 32),
                    rf"vgg.pth: sha256 {sha}, expected (ab){{32}} \(loss.perceptual_sha256\)")
    missing = tmp_path / "missing.safetensors"
    sha = fake_vgg19(missing, drop="features.34.weight")
    _one_line_error(_perceptual(tmp_path, missing, f"loss.perceptual_sha256={sha}"),
                    r"missing.safetensors: no tensor features.34.weight \(conv5_4\); expected "
                    r"torchvision's vgg19 layout")
    bad = tmp_path / "bad.pth"
    sha = fake_vgg19(bad, reshape="features.5.weight")
    _one_line_error(_perceptual(tmp_path, bad, f"loss.perceptual_sha256={sha}"),
                    r"bad.pth: features.5.weight \(conv2_1\) has shape \[3, 3\], expected "
                    r"\[128, 64, 3, 3\]")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    sha = hashlib.sha256(b"not a checkpoint").hexdigest()
    _one_line_error(_perceptual(tmp_path, junk, f"loss.perceptual_sha256={sha}"),
                    r"junk.pth: cannot read it")


def test_train_cli_reports_a_missing_vgg_file_in_one_line(tmp_path, capsys):
    assert main(["train", CONFIG, f"run.dir={tmp_path / 'r'}", *TINY[:-1],
                 "loss.perceptual_weight=1", f"loss.perceptual_weights={tmp_path / 'x.pth'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "x.pth: no such file" in err[0], err
    assert not (tmp_path / "r" / "checkpoints").exists()


# -- configuration ------------------------------------------------------------------------
def test_config_errors():
    cfg = load_config(CONFIG)
    assert cfg.task.name == "sr" and cfg.sr.scale == 4 and cfg.model.name == "esrgan"
    load_config(CONFIG, ["task.name=null"])  # model.name=esrgan means task sr
    load_config(CONFIG, ["checkpoint.keep_best=psnr_y", "eval.every=500"])
    for overrides, match in [
        (["sr.scale=3"], r"'sr.scale': 3; expected one of \[1, 2, 4\]"),
        (["sr.scale=2", "sr.patch=31"], r"'sr.patch': 31; expected a multiple of sr.scale=2"),
        (["sr.patch=30"], r"'sr.patch': 30; expected a multiple of sr.scale=4"),
        (["sr.patch=256"], r"'sr.patch': 256; expected 8 .. data.resolution=128"),
        (["sr.degradation=jpeg"], r"'sr.degradation': 'jpeg'; expected one of "
                                  r"\['bicubic', 'realistic'\]"),
        (["sr.degradation=realistic", "sr.degrade.jpeg_quality_min=0"],
         r"sr.degrade.jpeg_quality_min=0, sr.degrade.jpeg_quality_max=95: expected 1 <= min"),
        (["sr.degradation=bicubic", "sr.degrade.blur_prob=0.5"],
         r"'sr.degrade' does nothing with "
                                       r"sr.degradation=bicubic"),
        (["loss.gan=lsgan"], r"'loss.gan': 'lsgan'; expected one of"),
        (["loss.perceptual_weight=1"], r"loss.perceptual_weight=1.0 needs VGG19 weights: point "
                                       r"loss.perceptual_weights at .* or set "
                                       r"loss.perceptual_weight=0"),
        (["loss.perceptual_layers=conv9_9:1"], r"'loss.perceptual_layers': 'conv9_9:1'"),
        (["loss.perceptual_sha256=abc"], r"'loss.perceptual_sha256': 'abc'; expected 64 hex"),
        (["loss.pixel_weight=0"], r"sr.pretrain_steps=1200 trains G on the pixel loss alone"),
        (["loss.l1_weight=5"], r"'loss.l1_weight'=5.0 does nothing for task.name=sr"),
        (["model.z_dim=8"], r"'model.z_dim'=8 does nothing for task.name=sr"),
        (["eval.metrics=[cycle_l1]"], r"'eval.metrics': \['cycle_l1'\] for task.name=sr"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_config(CONFIG, overrides)
    for key in ("sr.scale=2", "sr.pretrain_steps=5", "loss.gan=relativistic",
                "loss.perceptual_weight=0", "sr.degrade.blur_prob=0.5"):
        with pytest.raises(ConfigError, match=r"does nothing for task.name=dcgan \(a sr key\)"):
            load_config(None, [key])
    with pytest.raises(ConfigError, match=r"task.name=pix2pix .*\(a sr key\)"):
        load_config("configs/pix2pix_mnist.yaml", ["sr.patch=64"])


# -- PSNR / SSIM on Y ---------------------------------------------------------------------
def test_psnr_and_ssim_on_y():
    torch.manual_seed(0)
    x = (torch.randint(40, 200, (2, 3, 32, 32)).float() / 127.5) - 1
    assert torch.all(psnr_y(x, x, 4) == 100.0)  # identical: the 100 dB cap
    assert torch.allclose(ssim_y(x, x, 4), torch.ones(2))
    for d in (1, 5):  # +d levels in R, G and B: Y moves by d x 219 / 255 levels
        y = x + d / 127.5
        want = 20 * math.log10(255 / (d * 219 / 255))
        assert torch.allclose(psnr_y(x, y, 4), torch.full((2,), want, dtype=torch.float32),
                              atol=1e-3)
        grey = x[:, :1]
        assert torch.allclose(psnr_y(grey, grey + d / 127.5),
                              torch.full((2,), want, dtype=torch.float32), atol=1e-3)
    # only the border differs: cropped away
    y = x.clone()
    y[..., :2, :] = -1
    assert torch.all(psnr_y(x, y, 2) == 100.0) and torch.all(psnr_y(x, y, 0) < 100.0)
    assert torch.all(ssim_y(x, x.flip(-1), 4) < 0.5)
    # Y weights: a pure-green change moves Y most, pure blue least
    base = torch.zeros(1, 3, 16, 16) - 1
    errs = []
    for c in range(3):
        y = base.clone()
        y[:, c] += 20 / 127.5
        errs.append(psnr_y(base, y).item())
    assert errs[1] < errs[0] < errs[2]


# -- after training: dgan eval, export, enhance -------------------------------------------
@pytest.fixture(scope="module")
def sr_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("sr-run") / "run"
    fit(config(d, "sr.pretrain_steps=1", "train.steps=2", "checkpoint.every=1",
               "checkpoint.keep=2", "log.every=1"))
    return d


def test_dgan_eval_and_eval_best_of_an_sr_run(sr_run, capsys):
    import json

    assert main(["eval", "--run", str(sr_run), "--n", "8"]) == 0
    out = capsys.readouterr().out
    assert "8 images of builtin:mnist (x4, LR by sr.degradation=bicubic)" in out
    saved = json.loads((sr_run / "eval-00000002.json").read_text())
    assert saved["n"] == 8 and saved["images"] == 8
    for key in ("psnr_y", "psnr_y_bicubic", "ssim_y", "ssim_y_bicubic"):
        assert key in out and 0 < saved[key] < 100, key
    assert main(["eval", "--run", str(sr_run), "--n", "8", "--best", "psnr_y"]) == 0
    capsys.readouterr()
    best = json.loads((sr_run / "best.json").read_text())
    values = {s: json.loads((sr_run / f"eval-{s:08d}.json").read_text())["psnr_y"]
              for s in (1, 2)}
    assert best["step"] == max(values, key=values.get) and best["metric"] == "psnr_y"
    assert main(["eval", "--run", str(sr_run), "--best", "digit_class"]) == 2
    assert "unknown metric for a super-resolution run" in capsys.readouterr().err


def test_export_and_enhance_an_sr_run(sr_run, tmp_path, capsys):
    from PIL import Image

    from dgan.enhance import load_enhancer

    run = load_enhancer(sr_run, device="cpu")
    x = torch.rand(2, 1, 9, 7) * 2 - 1
    assert main(["ckpt", "export", str(sr_run), str(tmp_path / "st")]) == 0
    assert sorted(p.name for p in (tmp_path / "st").iterdir()) == ["G_ema.safetensors",
                                                                    "config.yaml"]
    exported = load_enhancer(tmp_path / "st", device="cpu")
    assert exported.scale == 4 and exported.step == 2
    with torch.no_grad():
        assert torch.equal(exported.net(x), run.net(x))
        assert main(["ckpt", "export", str(sr_run), str(tmp_path / "ts"), "--format",
                     "torchscript"]) == 0
        graph = torch.jit.load(str(tmp_path / "ts" / "G_ema.torchscript.pt"))
        torch.testing.assert_close(graph(x), run.net(x), atol=1e-5, rtol=0)
    capsys.readouterr()
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray((np.arange(30 * 20).reshape(30, 20) % 256).astype(np.uint8)).save(
        src / "a.png")
    assert main(["enhance", "--run", str(sr_run), str(src), str(tmp_path / "out"), "--tile",
                 "8", "--tile-pad", "4"]) == 0
    with Image.open(tmp_path / "out" / "a.png") as img:
        assert img.size == (80, 120) and img.mode == "L"


def test_a_saved_config_with_the_nested_degrade_section_loads(tmp_path):
    """config.yaml as a run writes it (sr.degrade nested two levels deep) loads back; a key
    unknown inside it is named."""
    from omegaconf import OmegaConf

    cfg = config(tmp_path / "r", "sr.degradation=realistic", "sr.degrade.blur_prob=0.5")
    saved = tmp_path / "config.yaml"
    saved.write_text(OmegaConf.to_yaml(cfg))
    again = load_config(str(saved))
    assert again.sr.degrade.blur_prob == 0.5 and again.sr.degradation == "realistic"
    saved.write_text(OmegaConf.to_yaml(cfg).replace("blur_prob: 0.5", "blur_prb: 0.5"))
    with pytest.raises(ConfigError, match=r"unknown config key 'sr.degrade.blur_prb'"):
        load_config(str(saved))


def test_fd_kid_of_the_outputs_and_of_bicubic_against_the_hr_images(tmp_path, capsys):
    """eval.metrics fd, kid: G's outputs and bicubic upscaling against the HR images (digit
    features on the built-in digits; the FID Inception's with its weights): a G that is
    bicubic upscaling scores exactly bicubic's numbers, a G that ignores its input far
    worse; on photos without the Inception weights they are left out with one line."""
    from torch import nn

    from dgan.metrics.sr import bicubic_up, evaluate_sr

    cfg = config(tmp_path / "r", "eval.metrics=[psnr_y,fd,kid]")
    task = _task(tmp_path)
    source = _resolve_data(cfg)

    class Bicubic(nn.Module):
        def forward(self, lr):
            return bicubic_up(lr, 4)

    class Blank(nn.Module):
        def forward(self, lr):
            return torch.full((len(lr), lr.shape[1], lr.shape[2] * 4, lr.shape[3] * 4), -1.0)

    cpu = torch.device("cpu")
    same = evaluate_sr(cfg, Bicubic(), source, cpu, task.degrade_eval, ["psnr_y", "fd", "kid"],
                       n=64)
    assert {"fd_digits", "fd_digits_bicubic", "kid_digits", "kid_digits_bicubic"} <= set(same)
    assert same["fd_digits"] == pytest.approx(same["fd_digits_bicubic"])
    assert same["psnr_y"] == pytest.approx(same["psnr_y_bicubic"])
    blank = evaluate_sr(cfg, Blank(), source, cpu, task.degrade_eval, ["fd", "kid"], n=64)
    assert blank["fd_digits"] > 1.3 * blank["fd_digits_bicubic"]  # 836 vs 549 measured
    assert blank["kid_digits"] > blank["kid_digits_bicubic"]
    assert "psnr_y" not in blank
    # not digits by the user's word: no digit features for fd/kid, said in one line
    cfg.eval.digit_metrics = "false"
    capsys.readouterr()
    other = evaluate_sr(cfg, Bicubic(), source, cpu, task.degrade_eval, ["psnr_y", "fd"], n=8)
    assert set(other) == {"psnr_y", "psnr_y_bicubic", "images"}
    assert "skipped fd: eval.digit_metrics=false" in capsys.readouterr().err
