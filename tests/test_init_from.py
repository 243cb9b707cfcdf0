"""init.from (a new run from saved weights) and the NVlabs StyleGAN2 snapshot import.

NVlabs snapshots are written in the test from the architecture (tests/nvlabs_format.py):
no downloaded file, and nothing in them may run.
"""

import collections
import os
import pickle
import re
import sys

import pytest
import torch
from nvlabs_format import install_fake_modules, write_snapshot
from test_stylegan2_train import sg2_config
from test_train import fit, small_config

from dgan import checkpoint
from dgan.checkpoint import nvlabs
from dgan.checkpoint.init_from import InitFromError
from dgan.checkpoint.safe_pickle import UnsafePickle
from dgan.cli import _resolve_data, main
from dgan.data.builtin import make_builtin
from dgan.engine.trainer import Trainer
from dgan.models import stylegan2
from dgan.sample import load_generator

ARCH = {"z_dim": 32, "w_dim": 32, "img_resolution": 32, "img_channels": 3,
        "channel_base": 256, "channel_max": 32}


def randomised(net, seed):
    """`net` with every parameter and buffer drawn anew: no two tensors alike, noise
    strengths and biases away from their initial zeros."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*net.named_parameters(), *net.named_buffers()]:
            if not name.endswith("resample_filter"):  # fixed filters, not state
                t.copy_(torch.randn(t.shape, generator=gen) * 0.5)
    return net


def models(c_dim, seed=0):
    g = randomised(stylegan2.Generator(c_dim=c_dim, mapping_layers=2, **ARCH), seed)
    g_ema = randomised(stylegan2.Generator(c_dim=c_dim, mapping_layers=2, **ARCH), seed + 1)
    d = randomised(stylegan2.Discriminator(c_dim=c_dim, **{k: v for k, v in ARCH.items()
                                                           if k not in ("z_dim", "w_dim")}),
                   seed + 2)
    return g, d, g_ema


@pytest.fixture
def snapshot(tmp_path, monkeypatch):
    """(path, (G, D, G_ema), marker) of an unconditional NVlabs snapshot."""
    install_fake_modules(monkeypatch)
    nets = models(c_dim=0)
    path, marker = tmp_path / "network-snapshot-000100.pkl", tmp_path / "ran"
    write_snapshot(path, *nets, marker)
    return path, nets, marker


@pytest.mark.parametrize("c_dim", [0, 3])
def test_nvlabs_snapshot_imports_every_tensor_without_running_it(tmp_path, monkeypatch, c_dim):
    """dgan -> NVlabs layout -> import: every tensor of G, D and G_ema comes back in its own
    place (every tensor holds different values), and the networks compute what the
    originals compute; the snapshot's module source (which NVlabs' loader runs) never runs."""
    install_fake_modules(monkeypatch)
    g, d, g_ema = models(c_dim)
    path, marker = tmp_path / "snapshot.pkl", tmp_path / "ran"
    write_snapshot(path, g, d, g_ema, marker)
    # as on a user's machine: no NVlabs code to import
    monkeypatch.delitem(sys.modules, "torch_utils.persistence")
    monkeypatch.delitem(sys.modules, "dnnlib.util")
    nets = nvlabs.networks(path)
    assert not marker.exists()
    for name, original in (("G", g), ("D", d), ("G_ema", g_ema)):
        want = original.state_dict()
        assert set(nets[name]) == set(want), name
        for k, t in want.items():
            assert torch.equal(nets[name][k], t), f"{name}.{k}"
    g2, d2, ema2 = models(c_dim, seed=10)
    g2.load_state_dict(nets["G"])
    d2.load_state_dict(nets["D"])
    ema2.load_state_dict(nets["G_ema"])
    z = torch.randn(4, ARCH["z_dim"], generator=torch.Generator().manual_seed(1))
    c = torch.eye(3)[[0, 1, 2, 0]] if c_dim else None
    with torch.no_grad():
        for new, old in ((g2, g), (ema2, g_ema)):
            assert torch.equal(new(z, c, noise_mode="const"), old(z, c, noise_mode="const"))
        img = torch.randn(4, 3, 32, 32)
        assert torch.equal(d2(img, c), d(img, c))


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class StoragePayload:
    """A tensor storage whose bytes hold a pickle that runs a command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (torch.storage._load_from_bytes, (pickle.dumps(Payload(self.marker)),))


@pytest.mark.parametrize("where", ["top", "network", "storage"])
def test_a_snapshot_with_a_payload_is_refused_without_running(tmp_path, monkeypatch, where):
    install_fake_modules(monkeypatch)
    marker = tmp_path / "pwned"
    g, d, g_ema = models(0)
    path = tmp_path / "evil.pkl"
    write_snapshot(path, g, d, g_ema, tmp_path / "ran")
    data = {"G_ema": Payload(marker)} if where == "top" else None
    if where != "top":
        from nvlabs_format import generator

        net = generator(g_ema, "")
        evil = Payload(marker) if where == "network" else StoragePayload(marker)
        net.meta["state"]["_modules"]["mapping"].meta["state"]["_buffers"]["w_avg"] = evil
        data = {"G": generator(g, ""), "G_ema": net}
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(UnsafePickle, match=r"refers to (posix|os)\.system.*refused") as e:
        nvlabs.networks(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    assert not marker.exists()
    # and through the CLI: one line, exit status 2
    assert main(["ckpt", "import", str(path), str(tmp_path / "out")]) == 2
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_other_globals_and_stylegan3_are_refused(tmp_path, monkeypatch):
    install_fake_modules(monkeypatch)
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps({"G_ema": collections.Counter(a=1)}))
    with pytest.raises(UnsafePickle, match="refers to collections.Counter"):
        nvlabs.networks(path)
    from nvlabs_format import Persistent

    sg3 = Persistent("Generator", modules={"synthesis": Persistent("SynthesisNetwork", modules={
        "input": Persistent("SynthesisInput", {"weight": torch.zeros(2, 2)})})})
    path.write_bytes(pickle.dumps({"G_ema": sg3}))
    with pytest.raises(nvlabs.NVlabsError, match="StyleGAN3"):
        nvlabs.networks(path)


def test_ckpt_import_writes_an_export_that_samples_like_g_ema(snapshot, tmp_path, capsys):
    path, (_, _, g_ema), marker = snapshot
    out = tmp_path / "export"
    assert main(["ckpt", "import", str(path), str(out)]) == 0
    assert "model.channel_base=256" in capsys.readouterr().out
    assert not marker.exists()
    assert oct((out / "G_ema.safetensors").stat().st_mode & 0o777) != "0o600"
    loaded = load_generator(out)
    z = torch.randn(2, ARCH["z_dim"])
    with torch.no_grad():
        assert torch.equal(loaded(z, noise_mode="const"), g_ema(z, noise_mode="const"))


@pytest.fixture(scope="module")
def stacked(tmp_path_factory):
    out = tmp_path_factory.mktemp("stacked")
    make_builtin("stacked_mnist", out, resolution=32, samples=64, per_shard=64)
    return out


def test_init_from_an_nvlabs_snapshot_starts_a_new_run_from_its_weights(snapshot, stacked,
                                                                          tmp_path):
    path, (g, d, g_ema), _ = snapshot
    cfg = sg2_config(tmp_path / "run", stacked, "model.conditional=false", f"init.from={path}")
    trainer = Trainer(cfg, _resolve_data(cfg))
    try:
        for net, want in ((trainer.backend.nets["G"], g), (trainer.backend.nets["D"], d),
                          (trainer.emas["G_ema"], g_ema)):
            have = net.state_dict()
            assert all(torch.equal(have[k], v) for k, v in want.state_dict().items())
        assert trainer.step == 0 and not trainer.optimizers["G"].state and not trainer.optimizers["D"].state
    finally:
        trainer.close()


def train(*overrides):
    return main(["train", "log.progress=false", "data.workers=0", "train.batch_size=8",
                 "log.grid=4", "checkpoint.async_save=false", *overrides])


def test_init_from_runs_checkpoints_and_exports_through_the_cli(tmp_path, capsys):
    """From a dgan run: G, D and G_ema at step 0 with fresh optimizers; from an export: G and
    G_ema from its G_ema, D fresh. Its own checkpoints later resume (a requeue runs the same
    command); another run's checkpoints, a second source or another model are refused."""
    src = tmp_path / "src"
    fit(small_config(src, "train.steps=2", "checkpoint.every=2", "train.batch_size=8"))
    state = checkpoint.load_latest(src)[1]
    run = tmp_path / "new"
    cfg = small_config(run, f"init.from={src}", "train.batch_size=8")
    trainer = Trainer(cfg, _resolve_data(cfg))
    try:
        for net, key in ((trainer.backend.nets["G"], "G"), (trainer.backend.nets["D"], "D"),
                         (trainer.emas["G_ema"], "G_ema")):
            have = net.state_dict()
            assert all(torch.equal(have[k], v) for k, v in state[key].items()), key
        assert trainer.step == 0 and not trainer.optimizers["G"].state
    finally:
        trainer.close()

    assert main(["ckpt", "export", str(src), str(tmp_path / "export")]) == 0
    cfg = small_config(tmp_path / "e", f"init.from={tmp_path / 'export'}", "train.batch_size=8")
    trainer = Trainer(cfg, _resolve_data(cfg))
    try:
        g = trainer.backend.nets["G"].state_dict()
        assert all(torch.equal(g[k], v) for k, v in state["G_ema"].items())
        d = trainer.backend.nets["D"].state_dict()
        assert not all(torch.equal(d[k], v) for k, v in state["D"].items())  # fresh
    finally:
        trainer.close()

    capsys.readouterr()
    args = [f"run.dir={run}", f"init.from={src}", "train.steps=1"]
    assert train(*args) == 0
    assert f"new run from init.from={src}" in capsys.readouterr().out
    assert train(*args[:-1], "train.steps=2") == 0  # the same run, requeued: resumes
    assert "resumed from" in capsys.readouterr().out

    for bad, expected in (
            ([f"run.dir={src}", f"init.from={run}"], "already has checkpoints"),
            ([f"run.dir={tmp_path / 'x'}", f"init.from={src}", f"resume={src}"],
             "both name weights"),
            ([f"run.dir={tmp_path / 'y'}", f"init.from={src}", "model.g_width=16"],
             r"its G does not fit .*\[.*\] there vs \[.*\] here"),
            ([f"run.dir={tmp_path / 'z'}", f"init.from={tmp_path / 'missing'}"],
             "no such file or directory")):
        assert train(*bad) == 2, bad
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("dgan: error: "), err
        assert re.search(expected, err), err


def test_init_from_a_snapshot_of_another_shape_names_what_it_needs(snapshot, stacked, tmp_path):
    path, _, _ = snapshot
    cfg = sg2_config(tmp_path / "run", stacked, "model.conditional=false", f"init.from={path}",
                     "model.channel_max=16")
    with pytest.raises(InitFromError) as e:
        Trainer(cfg, _resolve_data(cfg))
    message = str(e.value)
    assert "\n" not in message and "[32, 32, 3, 3] there vs [16, 16, 3, 3] here" in message
    assert "model.channel_base=256 model.channel_max=32" in message
