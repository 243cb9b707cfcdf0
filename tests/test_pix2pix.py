"""pix2pix (task.name=pix2pix) on the built-in MNIST edges pairs: configuration, training,
exact resume with dropout and the linear LR decay, the sample grid, `dgan translate`,
`dgan eval` and exports."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dgan.cli import _resolve_data, main
from dgan.config import ConfigError, load_config
from dgan.data.builtin import fit_resolution, load_mnist, outlines
from dgan.engine.seeding import sample_seed
from dgan.engine.trainer import Trainer
from dgan.metrics.quality import psnr, ssim
from dgan.models.pix2pix import SampleDropout, UNetGenerator
from dgan.tasks.pix2pix import DROPOUT_PHASE
from dgan.translate import load_translator

CONFIG = "configs/pix2pix_mnist.yaml"
TINY = ["model.g_width=8", "model.d_width=8", "train.batch_size=8", "data.workers=0",
        "optim.lr_decay_from=0",
        "log.progress=off", "log.grid=4"]


def config(run_dir, *extra):
    return load_config(CONFIG, [f"run.dir={run_dir}", *TINY, *extra])


def fit(cfg):
    trainer = Trainer(cfg, _resolve_data(cfg))
    assert trainer.fit() == 0
    return trainer


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("p2p") / "run"
    fit(config(d, "train.steps=4", "checkpoint.every=2", "log.every=2"))
    return d


def test_configs_and_keys_of_other_tasks():
    cfg = load_config(CONFIG)
    assert cfg.task.name == "pix2pix" and cfg.loss.l1_weight == 100
    load_config("configs/pix2pix_256.yaml", ["data.path=/x"])
    for overrides, match in [
        (["model.z_dim=128"], r"'model.z_dim'=128 does nothing for task.name=pix2pix"),
        (["loss.r1_gamma=1"], r"'loss.r1_gamma'=1.0 does nothing for task.name=pix2pix"),
        (["loss.pl_weight=2"], r"does nothing for task.name=pix2pix \(a stylegan2 key\)"),
        (["eval.metrics=[coverage]"], r"'eval.metrics': \['coverage'\] for task.name=pix2pix"),
        (["task.direction=CtoD"], r"'task.direction': 'CtoD'; expected one of"),
        (["optim.lr_decay_from=1500"], r"'optim.lr_decay_from': 1500; expected 0"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_config(CONFIG, overrides)
    with pytest.raises(ConfigError, match=r"'loss.l1_weight'=10.0 does nothing for task.name="
                                          r"dcgan \(a pix2pix key\)"):
        load_config(None, ["loss.l1_weight=10"])


def test_single_image_shards_are_refused_in_one_line(tmp_path, capsys):
    assert main(["train", CONFIG, f"run.dir={tmp_path / 'r'}", "data.path=builtin:mnist",
                 *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "['a', 'b']" in err[0], err
    assert not (tmp_path / "r" / "checkpoints").exists()


def weights(trainer):
    out = {}
    for name, net in trainer.backend.nets.items():
        out.update({f"{name}.{k}": v.clone() for k, v in net.state_dict().items()})
    for group, opt in trainer.optimizers.items():
        for pid, st in opt.state_dict()["state"].items():
            out.update({f"opt_{group}.{pid}.{k}": v.clone() for k, v in st.items()
                        if torch.is_tensor(v)})
    return out


def test_resume_is_exact_with_dropout_and_the_lr_decay(tmp_path):
    """4 steps at once = 2 steps, then a new process-like Trainer resuming to 4; the LR
    falls linearly from step 1 to 0 at step 4, and G's dropout masks come from per-sample
    seeds of (run.seed, step, index in the global batch), no saved RNG."""
    extra = ["train.steps=4", "optim.lr_decay_from=1", "checkpoint.every=2", "log.every=2"]
    straight = fit(config(tmp_path / "a", *extra))
    fit(config(tmp_path / "b", *extra[1:], "train.steps=2"))
    resumed = fit(config(tmp_path / "b", *extra))
    assert resumed.step == 4
    want, got = weights(straight), weights(resumed)
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
    assert any(isinstance(m, torch.nn.Dropout) for m in straight.backend.nets["G"].modules())
    assert any(isinstance(m, SampleDropout) for m in straight.backend.nets["G"].modules())
    for t in (straight, resumed):  # lr at step 4 of a decay from step 1 to 4: 0
        assert [g["lr"] for g in t.optimizers["G"].param_groups] == [0.0]


def test_dropout_masks_are_per_sample_and_drawn_from_its_seed():
    """A row's masks depend only on its seed: any split of the batch gives the same rows,
    the global RNG is neither read nor moved, and eval mode drops nothing."""
    torch.manual_seed(0)
    g = UNetGenerator(1, 1, 32, width=8)
    assert sum(isinstance(m, SampleDropout) for m in g.modules()) == 3
    x = torch.randn(6, 1, 32, 32)
    seeds = [sample_seed(0, 3, DROPOUT_PHASE, i) for i in range(6)]
    with torch.no_grad():
        rng = torch.get_rng_state()
        whole = g(x, dropout_seeds=seeds)
        assert torch.equal(torch.get_rng_state(), rng)
        parts = torch.cat([g(x[:2], dropout_seeds=seeds[:2]), g(x[2:], dropout_seeds=seeds[2:])])
        assert torch.equal(whole, parts)
        assert torch.equal(whole, g(x, dropout_seeds=seeds))  # D's and G's phase: same masks
        other = g(x, dropout_seeds=[sample_seed(0, 4, DROPOUT_PHASE, i) for i in range(6)])
        assert not torch.equal(whole, other)  # another step, other masks
        # the same input in two rows with other seeds: other masks
        twice = g(x[:1].expand(2, -1, -1, -1), dropout_seeds=seeds[:2])
        assert not torch.equal(twice[0], twice[1])
        g.eval()
        assert torch.equal(g(x, dropout_seeds=seeds), g(x))
        assert not torch.equal(g(x), whole)
    with pytest.raises(ValueError, match="5 dropout seeds for a batch of 6"):
        g.train()(x, dropout_seeds=seeds[:5])


def test_grid_shows_input_output_target_and_survives_a_resume(run):
    cfg = config(run, "train.steps=4")
    trainer = Trainer(cfg, _resolve_data(cfg))
    trainer.resume()
    grid = trainer.sample_grid()
    assert grid.shape == (4, 1, 32, 96)
    x, y = trainer.task.grid["x"], trainer.task.grid["y"]
    assert torch.equal(grid[..., :32], x) and torch.equal(grid[..., 64:], y)
    # the grid's pairs are the built-in pairs: target = digit, input = its outline
    digits = torch.from_numpy(fit_resolution(load_mnist()[0], 32)).float() / 127.5 - 1
    match = [int(((digits - t[0]).abs().flatten(1).max(1).values == 0).nonzero()[0])
             for t in y]
    edges = torch.from_numpy(outlines(fit_resolution(load_mnist()[0][match], 32)))
    assert torch.equal((x[:, 0] > 0), edges > 0)
    png = sorted((run / "samples").glob("grid-*.png"))
    assert png and np.asarray(Image.open(png[-1])).shape[1] > 3 * 32


def test_translate_a_folder_any_size_alpha_and_a_corrupt_file(run, tmp_path, capsys):
    edges = outlines(fit_resolution(load_mnist()[0][:3], 32))
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(edges[0]).save(src / "one.png")
    Image.fromarray(np.pad(edges[1], ((3, 2), (7, 1)))).save(src / "sub" / "odd.jpg")
    rgba = np.dstack([np.repeat(edges[2][..., None], 3, -1), np.full((32, 32), 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(src / "alpha.png")
    (src / "bad.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert main(["translate", "--run", str(run), str(src), str(out)]) == 0
    io = capsys.readouterr()
    assert "translated 3 image(s) AtoB (step 4)" in io.out and "skipped 1" in io.out
    assert "bad.png: unreadable image" in io.err
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == [
        "alpha.png", "one.png", "sub/odd.png"]
    assert Image.open(out / "sub" / "odd.png").size == (40, 37)
    alpha = Image.open(out / "alpha.png")
    assert alpha.mode == "RGBA" and np.all(np.asarray(alpha)[..., 3] == 200)
    # the file's output is G's output on it
    t = load_translator(run)
    x = torch.from_numpy(edges[0]).float()[None, None] / 127.5 - 1
    want = ((t(x)[0, 0].clamp(-1, 1) + 1) * 127.5).round().numpy()
    assert np.array_equal(np.asarray(Image.open(out / "one.png")), want.astype(np.uint8))


def test_translate_errors_are_one_line(run, tmp_path, capsys):
    cases = [
        (["translate", "--run", str(run), str(tmp_path / "nope"), str(tmp_path / "o")],
         "no such file or folder"),
        (["translate", "--run", str(run), "--direction", "BtoA", str(tmp_path), str(tmp_path / "o")],
         "was trained AtoB"),
        (["translate", "--run", str(run), "--ckpt", "3", str(tmp_path), str(tmp_path / "o")],
         "has no checkpoint of step 3"),
        (["sample", "--run", str(run), "--n", "2", "--out", str(tmp_path / "s")],
         "use dgan translate"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)


def test_export_translates_like_the_run(run, tmp_path):
    assert main(["ckpt", "export", str(run), str(tmp_path / "exp")]) == 0
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["G.safetensors",
                                                                     "config.yaml"]
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    assert torch.equal(load_translator(tmp_path / "exp")(x), load_translator(run)(x))


def test_eval_reports_psnr_ssim_l1_and_the_digit_class(run, capsys):
    assert main(["eval", "--run", str(run), "--n", "32"]) == 0
    out = capsys.readouterr().out
    assert "32 pairs" in out and all(m in out for m in ("psnr", "ssim", "l1", "digit_class"))
    saved = json.loads((run / "eval-00000004.json").read_text())
    assert saved["pairs"] == 32 and 0 < saved["psnr"] < 100 and 0 <= saved["digit_class"] <= 1
    # FD/KID of G(a) against the targets, on the digit classifier's features (no Inception)
    assert "fd_digits" in out and saved["fd_digits"] > 0 and np.isfinite(saved["kid_digits"])
    # not digits by the user's word: left out with a line saying why
    assert main(["eval", "--run", str(run), "--n", "32", "--digit-metrics", "false"]) == 0
    io = capsys.readouterr()
    assert "digit_class" not in io.out and "skipped digit_class, fd, kid" in io.err
    assert "fd_digits" not in io.out and "psnr" in io.out


@pytest.mark.slow  # about 15 s on 2 CPU cores
def test_it_learns_to_fill_outlines(tmp_path):
    """After 200 steps G(outline) is closer to the digit than a black image or the outline
    itself, and structurally similar to it (the outline's SSIM is below 0)."""
    fit(load_config(CONFIG, [f"run.dir={tmp_path}", "train.steps=200", "optim.lr_decay_from=0",
                             "model.g_width=16",
                             "model.d_width=16", "data.workers=0", "log.progress=off",
                             "checkpoint.every=200", "log.every=200"]))
    digits = fit_resolution(load_mnist()[0][-256:], 32)
    a = torch.from_numpy(outlines(digits)).float()[:, None] / 127.5 - 1
    b = torch.from_numpy(digits).float()[:, None] / 127.5 - 1
    out = load_translator(tmp_path)(a)
    got = psnr(out, b).mean()
    assert got > psnr(-torch.ones_like(b), b).mean() + 1 and got > psnr(a, b).mean() + 4
    assert ssim(out, b).mean() > 0.2 > ssim(a, b).mean()
    from dgan.metrics.digits import DigitClassifier

    judge = DigitClassifier.load_or_train(verbose=False)
    labels = torch.from_numpy(load_mnist()[1][-256:]).long()
    kept = (judge.predict(out)[:, 0] == labels).float().mean()
    # the classifier knows the outlines' digit less often (0.57 on these) than G's fillings
    assert kept > (judge.predict(a)[:, 0] == labels).float().mean() + 0.05
