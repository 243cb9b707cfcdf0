"""CycleGAN (task.name=cyclegan) on built-in bold digits (domain A) and digits (domain B):
configuration, the second shard set, training, exact resume with both stream positions,
the image pools and the LR decay, the sample grid, `dgan translate --direction`, exports
and `dgan eval` (cycle_l1)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dgan.cli import _resolve_data, _resolve_second, main
from dgan.config import ConfigError, load_config
from dgan.data.builtin import bold, fit_resolution, halves, load_mnist
from dgan.engine.seeding import step_generator
from dgan.engine.trainer import Trainer
from dgan.tasks.cyclegan import pool_query
from dgan.translate import load_translator

CONFIG = "configs/cyclegan_mnist.yaml"
TINY = ["model.g_width=4", "model.d_width=4", "model.g_blocks=1", "train.batch_size=2",
        "data.workers=0", "log.progress=off", "log.grid=3", "optim.lr_decay_from=0"]


def config(run_dir, *extra):
    return load_config(CONFIG, [f"run.dir={run_dir}", *TINY, *extra])


def trainer_of(cfg):
    return Trainer(cfg, _resolve_data(cfg), _resolve_second(cfg))


def fit(cfg):
    trainer = trainer_of(cfg)
    assert trainer.fit() == 0
    return trainer


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("cyc") / "run"
    fit(config(d, "train.steps=2", "checkpoint.every=2", "log.every=2"))
    return d


def test_configs_and_keys_of_other_tasks():
    cfg = load_config(CONFIG)
    assert cfg.task.name == "cyclegan" and cfg.data.path_b == "builtin:mnist_half2"
    assert cfg.data.path == "builtin:mnist_bold_half1"
    assert (cfg.loss.cycle_weight, cfg.loss.identity_weight) == (10, 1.0)
    big = load_config("configs/cyclegan_256.yaml")
    assert (big.model.g_blocks, big.loss.pool_size, big.train.batch_size) == (9, 50, 1)
    assert big.optim.lr_decay_from * 2 == big.train.steps and big.data.crop == 286
    for overrides, match in [
        (["data.path_b=null"], r"^task.name=cyclegan reads two unpaired shard sets: set "
                               r"data.path_b"),
        (["task.direction=BtoA"], r"'task.direction'=BtoA does nothing for task.name="
                                  r"cyclegan \(a pix2pix key\)"),
        (["loss.l1_weight=1"], r"does nothing for task.name=cyclegan \(a pix2pix key\)"),
        (["model.z_dim=8"], r"'model.z_dim'=8 does nothing for task.name=cyclegan"),
        (["eval.metrics=[psnr]"], r"'eval.metrics': \['psnr'\] for task.name=cyclegan"),
        (["train.grad_accum=2"], r"task.name=cyclegan runs one batch per phase"),
        (["loss.pool_size=-1"], r"'loss.pool_size': -1; expected >= 0"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_config(CONFIG, overrides)
    for base in (None, "configs/pix2pix_mnist.yaml"):
        task = "dcgan" if base is None else "pix2pix"
        for key, value in [("data.path_b", "builtin:mnist"), ("loss.cycle_weight", "5"),
                           ("loss.identity_weight", "0"), ("loss.pool_size", "3"),
                           ("model.g_blocks", "2")]:
            with pytest.raises(ConfigError, match=rf"'{key}'=.* does nothing for task.name="
                                                  rf"{task} \(a cyclegan key\)"):
                load_config(base, [f"{key}={value}"])


def test_data_path_b_is_resolved_like_data_path(tmp_path, capsys):
    assert main(["train", CONFIG, f"run.dir={tmp_path / 'r'}", "data.path_b=builtin:nope",
                 *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.path_b builtin:nope: unknown built-in dataset" in err[0]
    # domain B must be single images (paired shards are refused in one line)
    assert main(["train", CONFIG, f"run.dir={tmp_path / 'r'}", "data.path_b=builtin:mnist_edges",
                 *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "['image']" in err[0], err


def test_the_image_pool_is_the_papers():
    imgs = [torch.full((1, 2, 2), float(i)) for i in range(6)]
    out, pool = pool_query(None, torch.stack(imgs[:3]), 4, torch.Generator().manual_seed(0))
    assert torch.equal(out, torch.stack(imgs[:3])) and torch.equal(pool, out)  # filling
    # the same draws as the pool's: u and an index per image, full pool or not
    ref = torch.Generator().manual_seed(1)
    u, idx = torch.rand(3, generator=ref).tolist(), torch.randint(4, (3,), generator=ref).tolist()
    out, after = pool_query(pool, torch.stack(imgs[3:]), 4, torch.Generator().manual_seed(1))
    stored = [0.0, 1.0, 2.0, 3.0]  # image 3 fills the last place and is returned
    want = [3.0]
    for i, value in ((1, 4.0), (2, 5.0)):
        if u[i] > 0.5:  # swapped: D sees a stored one, the new one takes its place
            want.append(stored[idx[i]])
            stored[idx[i]] = value
        else:
            want.append(value)
    assert [float(x[0, 0, 0]) for x in out] == want
    assert [float(x[0, 0, 0]) for x in after] == stored
    same, none = pool_query(None, torch.stack(imgs), 0, ref)
    assert none is None and torch.equal(same, torch.stack(imgs))


def weights(trainer):
    out = {}
    for name, net in trainer.backend.nets.items():
        out.update({f"{name}.{k}": v.clone() for k, v in net.state_dict().items()})
    for group, opt in trainer.optimizers.items():
        for pid, st in opt.state_dict()["state"].items():
            out.update({f"opt_{group}.{pid}.{k}": v.clone() for k, v in st.items()
                        if torch.is_tensor(v)})
    for k, pool in trainer.task.pools.items():
        out[f"pool_{k}"] = pool.clone()
    return out


def test_resume_is_exact_with_both_streams_the_pools_and_the_lr_decay(tmp_path):
    """4 steps at once = 2 steps, then a new Trainer resuming to 4, with a pool of 3 (full
    after 2 steps of 2, swapping from then on) and the LR falling from step 1 to 0 at 4."""
    extra = ["train.steps=4", "optim.lr_decay_from=1", "loss.pool_size=3",
             "checkpoint.every=2", "log.every=2"]
    straight = fit(config(tmp_path / "a", *extra))
    fit(config(tmp_path / "b", *extra[1:], "train.steps=2"))
    resumed = fit(config(tmp_path / "b", *extra))
    assert resumed.step == 4
    want, got = weights(straight), weights(resumed)
    assert want.keys() == got.keys() and {"pool_a", "pool_b"} <= want.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
    assert want["pool_a"].shape[0] == 3
    for t in (straight, resumed):  # lr at step 4 of a decay from step 1 to 4: 0
        assert [g["lr"] for g in t.optimizers["G"].param_groups] == [0.0]
        assert [g["lr"] for g in t.optimizers["D"].param_groups] == [0.0]
    # both streams continue where they were: the next batches agree
    after = [t.next_batch() for t in (straight, resumed)]
    for k in ("image", "image_b"):
        assert torch.equal(after[0][k], after[1][k]), k
    # the rank state holds both positions and the pools
    rank = resumed.rank_state_dict()
    assert rank["data_b"]["batches"] == 5 and rank["data"]["batches"] == 5
    assert torch.equal(rank["task"]["pools"]["b"], resumed.task.pools["b"].cpu())


def test_the_two_domains_stream_apart(run):
    cfg = config(run, "train.steps=2")
    with pytest.raises(ValueError, match="data.path_b"):
        Trainer(cfg, _resolve_data(cfg))
    trainer = trainer_of(cfg)
    assert trainer.stream_b is not None and trainer.stream_b.kw["seed"] == cfg.run.seed + 1
    images, labels = load_mnist()
    digits = fit_resolution(images, 32)
    first, second = halves(labels)  # A: bold versions of half 1's digits, B: half 2's digits
    thick = bold(digits)
    known = {"a": {thick[i].tobytes() for i in first},
             "b": {digits[i].tobytes() for i in second}}
    for _ in range(2):
        batch = trainer.next_batch()
        for key, name in (("a", "image"), ("b", "image_b")):
            x = batch[name]
            assert x.shape == (2, 1, 32, 32)
            raw = ((x[:, 0] + 1) * 127.5).round().to(torch.uint8).numpy()
            assert all(r.tobytes() in known[key] for r in raw), key  # A bold, B digits


def test_training_steps_are_finite_and_the_grid_shows_both_ways(run):
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    scalars = [r for r in log if "loss/G" in r]
    assert scalars and all(np.isfinite(scalars[-1][k]) for k in (
        "loss/G", "loss/G_adv", "loss/G_cycle", "loss/G_identity", "loss/D_A", "loss/D_B"))
    cfg = config(run, "train.steps=2")
    trainer = trainer_of(cfg)
    trainer.resume()
    grid = trainer.sample_grid()
    assert grid.shape == (3, 1, 32, 128)
    a, b = trainer.task.grid["a"], trainer.task.grid["b"]
    g = trainer.backend.nets["G"].eval()
    with torch.no_grad():
        assert torch.equal(grid[..., :32], a) and torch.equal(grid[..., 64:96], b)
        assert torch.allclose(grid[..., 32:64], g.AB(a), atol=1e-6)
        assert torch.allclose(grid[..., 96:], g.BA(b), atol=1e-6)
    assert sorted((run / "samples").glob("grid-*.png"))


def test_translate_both_directions_and_exports(run, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.pad(np.full((20, 22), 255, np.uint8), ((5, 5), (3, 4)))).save(
        src / "one.png")
    x = torch.from_numpy(np.array(Image.open(src / "one.png"))).float()[None, None]
    x = x / 127.5 - 1
    state_g = trainer_of(config(run, "train.steps=2"))
    state_g.resume()
    g = state_g.backend.nets["G"].eval()
    outs = {}
    for direction, net in (("BtoA", g.BA), ("AtoB", g.AB)):
        out = tmp_path / direction
        assert main(["translate", "--run", str(run), "--direction", direction, str(src),
                     str(out)]) == 0
        assert f"translated 1 image(s) {direction} (step 2)" in capsys.readouterr().out
        got = np.asarray(Image.open(out / "one.png"))
        assert got.shape == (30, 29)
        t = load_translator(run, direction=direction)
        assert t.direction == direction
        want = ((t(x)[0, 0].clamp(-1, 1) + 1) * 127.5).round().numpy().astype(np.uint8)
        assert np.array_equal(got, want)
        with torch.no_grad():  # G_BA for BtoA, G_AB for AtoB
            y = torch.rand(2, 1, 32, 32) * 2 - 1
            assert torch.allclose(t(y), net(y), atol=1e-6)
        outs[direction] = got
    assert not np.array_equal(outs["AtoB"], outs["BtoA"])
    assert load_translator(run).direction == "AtoB"  # the default
    assert main(["ckpt", "export", str(run), str(tmp_path / "exp")]) == 0
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["G.safetensors",
                                                                     "config.yaml"]
    y = torch.rand(2, 1, 32, 32) * 2 - 1
    for direction in ("AtoB", "BtoA"):
        assert torch.equal(load_translator(tmp_path / "exp", direction=direction)(y),
                           load_translator(run, direction=direction)(y))
    assert main(["sample", "--run", str(run), "--n", "2", "--out", str(tmp_path / "s")]) == 2
    assert "use dgan translate" in capsys.readouterr().err


def test_eval_reports_cycle_l1(run, capsys):
    assert main(["eval", "--run", str(run), "--n", "8"]) == 0
    out = capsys.readouterr().out
    assert "8 images of each domain" in out and "cycle_l1" in out
    saved = json.loads((run / "eval-00000002.json").read_text())
    assert saved["images"] == 8 and 0 < saved["cycle_l1"] < 2
    assert saved["cycle_l1"] == pytest.approx((saved["cycle_l1_a"] + saved["cycle_l1_b"]) / 2)
    # the demo's eval.metrics: each way's digit class and FD/KID against the other domain
    for key in ("digit_class_ab", "digit_class_ba", "fd_digits_ab", "fd_digits_ba",
                "kid_digits_ab", "kid_digits_ba"):
        assert key in out and np.isfinite(saved[key]), key
    assert 0 <= saved["digit_class_ab"] <= 1 and saved["fd_digits_ab"] > 0
    assert main(["eval", "--run", str(run), "--n", "8", "--metrics", "digit_class"]) == 0
    assert "fd_digits" not in capsys.readouterr().out
    assert main(["eval", "--run", str(run), "--metrics", "psnr"]) == 2


def test_pool_draws_are_seeded_by_the_step_not_the_global_rng():
    imgs = torch.randn(6, 1, 4, 4)
    pool = torch.randn(4, 1, 4, 4)
    torch.manual_seed(123)
    first = pool_query(pool, imgs, 4, step_generator(0, 0, 7, 23))
    torch.manual_seed(456)
    second = pool_query(pool, imgs, 4, step_generator(0, 0, 7, 23))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
