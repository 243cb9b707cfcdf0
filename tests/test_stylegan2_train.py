"""StyleGAN2 through the trainer on the CPU: a few steps of every phase, and exact resume."""

import os

import pytest
import torch
from test_train import fit, flat_state, small_config

from dgan import checkpoint
from dgan.data.builtin import make_builtin


@pytest.fixture(scope="module")
def stacked(tmp_path_factory):
    out = tmp_path_factory.mktemp("stacked")
    make_builtin("stacked_mnist", out, resolution=32, samples=256, per_shard=64)
    return out


def sg2_config(run_dir, data, *extra):
    return small_config(
        run_dir, "model.name=stylegan2", f"data.path={data}", "data.resolution=32",
        "data.channels=3", "model.z_dim=32", "model.w_dim=32", "model.channel_base=256",
        "model.channel_max=32", "model.mapping_layers=2", "train.batch_size=4",
        "train.steps=4", "checkpoint.every=2", "log.every=2", "log.grid=4",
        "loss.r1_gamma=0.1", "loss.r1_interval=2", "loss.pl_weight=2", "loss.pl_interval=2",
        "loss.style_mixing=0.9", "loss.augment=ada", "optim.lr_g=0.002", "optim.lr_d=0.002",
        "optim.beta1=0", "optim.beta2=0.99", *extra)


@pytest.mark.slow
@pytest.mark.parametrize("compile_", [False, True], ids=["eager", "compiled"])
def test_stylegan2_trains_all_phases_and_resumes_exactly(tmp_path, stacked, monkeypatch,
                                                         compile_):
    """A crash at step 3 and a resume end bitwise where the uninterrupted run ends; with
    train.compile=true too (the resumed run compiles every phase again, from the compile
    cache in its run directory)."""
    from torch._dynamo.utils import counters

    from dgan.engine.trainer import Trainer

    extra = ("train.compile=true",) if compile_ else ()
    # Run a fills the compile cache run b finds by default in its run directory (one cold
    # compile in this test instead of two).
    cache = tmp_path / "b" / "compile_cache"
    a_cache = (f"train.compile_cache={cache}",) if compile_ else ()
    straight = fit(sg2_config(tmp_path / "a", stacked, *extra, *a_cache))
    state = checkpoint.load_latest(tmp_path / "a")[1]
    assert state["step"] == 4 and "pl_mean" in str(state["task"])
    for v in flat_state(straight).values():
        if v.is_floating_point():
            assert torch.isfinite(v).all()

    original = Trainer.train_step

    def crash_at_3(self, *args):
        if self.step == 3:
            raise RuntimeError("simulated crash")
        return original(self, *args)

    cfg = sg2_config(tmp_path / "b", stacked, *extra)
    # As in a new process: compiled code made for run a (same graphs) is not reused from
    # memory; run b compiles again, from its cache.
    torch._dynamo.reset()
    hits = counters["inductor"]["fxgraph_cache_hit"]
    monkeypatch.setattr(Trainer, "train_step", crash_at_3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(cfg)
    monkeypatch.setattr(Trainer, "train_step", original)
    assert (cache / "fxgraph").is_dir() == compile_, list(cache.glob("*"))
    if compile_:
        assert counters["inductor"]["fxgraph_cache_hit"] > hits
    hits = counters["inductor"]["fxgraph_cache_hit"]
    torch._dynamo.reset()
    resumed = fit(cfg)
    if compile_:  # the resumed run found its graphs in the cache
        assert counters["inductor"]["fxgraph_cache_hit"] > hits
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(cache)
    a, b = flat_state(straight), flat_state(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_stylegan2_compiled_main_phases_train_and_save_the_same_keys(tmp_path, stacked):
    """train.compile=true (reference ops, Inductor on the CPU; no augmentation, so R1
    compiles too): every phase runs through torch.compile wrappers of the trained modules,
    and the checkpoint has exactly the keys of an uncompiled run (no `_orig_mod.`)."""

    short = ("train.steps=2", "checkpoint.every=2", "log.every=2", "loss.augment=none")
    plain = fit(sg2_config(tmp_path / "plain", stacked, *short))
    compiled = fit(sg2_config(tmp_path / "compiled", stacked, "train.compile=true", *short))
    recipe, b = compiled.task, compiled.backend
    assert plain.task.compiled == {} and plain.task.compiled_phases == ()
    assert recipe.compiled_phases == ("Gmain", "Dmain", "Greg", "Dreg")
    for phase in ("Gmain", "Greg", "Dmain", "Dreg"):
        g, d = recipe.networks(phase)
        want_g, want_d = ((b.wrapped["G"], b.nets["D"]) if phase[0] == "G"
                          else (b.nets["G"], b.wrapped["D"]))
        if phase in recipe.compiled_phases:
            # a wrapper around the very module the eager phases train: shared parameters
            assert g._orig_mod is want_g and d._orig_mod is want_d, phase
            assert g is recipe.compiled[want_g] and d is recipe.compiled[want_d]
        else:
            assert g is want_g and d is want_d, phase
    assert len(recipe.compiled) >= 2
    assert all(p is q for p, q in zip(recipe.networks("Gmain")[0].parameters(),
                                      b.nets["G"].parameters()))
    a = checkpoint.load_latest(tmp_path / "plain")[1]
    c = checkpoint.load_latest(tmp_path / "compiled")[1]
    assert c["step"] == 2 and c["config"]["train"]["compile"] is True
    for key in ("G", "D", "G_ema", "opt_G", "opt_D", "task"):
        assert sorted(flatten_keys(c[key])) == sorted(flatten_keys(a[key])), key
    assert not any("_orig_mod" in k for k in flatten_keys(c))
    for v in flat_state(compiled).values():
        if v.is_floating_point():
            assert torch.isfinite(v).all()


def flatten_keys(tree, prefix=""):
    if not isinstance(tree, dict):
        return [prefix]
    return [k for key, v in tree.items() for k in flatten_keys(v, f"{prefix}{key}.")]


def test_checkpoint_from_0dim_noise_strengths_resumes() -> None:
    """Weights and Adam state saved while the noise strengths were 0-dim load into the
    [1]-shaped parameters, and training goes on."""
    from types import SimpleNamespace

    from torch.distributed.checkpoint.state_dict import get_state_dict

    from dgan.checkpoint.hooks import load_network_state
    from dgan.models.stylegan2 import Generator

    def make():
        torch.manual_seed(0)
        g = Generator(z_dim=8, w_dim=8, img_resolution=32, channel_base=64, channel_max=8,
                      mapping_layers=1)
        return g, torch.optim.Adam(g.parameters(), lr=0.1)

    def train_step(g, opt):
        opt.zero_grad()
        g(torch.randn(2, 8)).square().mean().backward()
        opt.step()

    g, opt = make()
    train_step(g, opt)
    model_state, optim_state = get_state_dict(g, opt)
    noise = [k for k in model_state if k.endswith("noise_strength")]
    assert noise and all(model_state[k].shape == (1,) for k in noise)
    for k in noise:  # as a checkpoint of the 0-dim parameters held them
        model_state[k] = model_state[k].reshape(())
        for key in ("exp_avg", "exp_avg_sq"):
            optim_state["state"][k][key] = optim_state["state"][k][key].reshape(())
    g2, opt2 = make()
    load_network_state(SimpleNamespace(name="ddp", nets={"G": g2}, groups={"G": ("G",)},
                                       opt={"G": opt2}), "G",
                       model_state, optim_state)
    for (name, a), b in zip(g.named_parameters(), g2.parameters()):
        assert torch.equal(a, b), name
    train_step(g2, opt2)  # Adam's state has the parameters' shapes
    assert all(opt2.state[p]["exp_avg"].shape == p.shape for p in g2.parameters())
