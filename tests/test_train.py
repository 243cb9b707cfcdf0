import json
import os

import pytest
import torch

from dgan import checkpoint
from dgan.cli import _resolve_data
from dgan.config import load_config
from dgan.engine.trainer import Trainer


def small_config(run_dir, *extra):
    return load_config(None, [f"run.dir={run_dir}", "train.batch_size=16", "train.steps=12",
                              "log.every=6", "checkpoint.every=6", "log.progress=false",
                              "data.workers=0", "log.grid=16", *extra])


def fit(cfg):
    trainer = Trainer(cfg, _resolve_data(cfg))
    trainer.fit()
    return trainer


def flat_state(trainer):
    s = trainer.state_dict()
    out = {}
    for net in ("G", "D", "G_ema"):
        out.update({f"{net}.{k}": v for k, v in s[net].items()})
    for opt in ("opt_G", "opt_D"):
        for pid, st in s[opt]["state"].items():
            out.update({f"{opt}.{pid}.{k}": v for k, v in st.items() if torch.is_tensor(v)})
    return out


def test_short_run_trains_and_writes_everything(tmp_path):
    cfg = small_config(tmp_path / "run")
    trainer = Trainer(cfg, _resolve_data(cfg))
    g0 = {k: v.clone() for k, v in trainer.backend.nets["G"].state_dict().items()}
    d0 = {k: v.clone() for k, v in trainer.backend.nets["D"].state_dict().items()}
    trainer.fit()
    g1, d1 = trainer.backend.nets["G"].state_dict(), trainer.backend.nets["D"].state_dict()
    assert any(not torch.equal(g0[k], g1[k]) for k in g0 if g0[k].is_floating_point())
    assert any(not torch.equal(d0[k], d1[k]) for k in d0)
    run = tmp_path / "run"
    assert sorted(os.listdir(run / "samples")) == ["grid-00000006.png", "grid-00000012.png"]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(run / "tb"))
    assert "batch_size: 16" in (run / "config.yaml").read_text()
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [6, 12]
    for key in ("loss/D", "loss/G", "D/real", "D/fake", "perf/img_per_s", "progress/images_seen"):
        assert key in records[-1]
    assert records[-1]["progress/images_seen"] == 12 * 16
    path, state = checkpoint.load_latest(run)
    assert path.name == "step-00000012" and state["step"] == 12
    assert state["world_size"] == 1 and state["backend_name"] == "ddp"


def test_tensorboard_has_scalars_and_images(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fit(small_config(tmp_path / "run"))
    acc = EventAccumulator(str(tmp_path / "run" / "tb"))
    acc.Reload()
    assert {"loss/D", "loss/G", "D/real", "D/fake", "perf/img_per_s"} <= set(acc.Tags()["scalars"])
    assert len(acc.Images("samples/G_ema")) == 2


@pytest.mark.parametrize("r1", ["0", "1.0"])
def test_interrupted_run_resumes_exactly(tmp_path, monkeypatch, r1):
    straight = fit(small_config(tmp_path / "a", f"loss.r1_gamma={r1}"))

    original = Trainer.train_step

    def crash_at_step_9(self, *batch):
        if self.step == 9:
            raise RuntimeError("simulated crash")
        return original(self, *batch)

    cfg = small_config(tmp_path / "b", f"loss.r1_gamma={r1}")
    monkeypatch.setattr(Trainer, "train_step", crash_at_step_9)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(cfg)
    monkeypatch.setattr(Trainer, "train_step", original)
    assert checkpoint.load_latest(tmp_path / "b")[1]["step"] == 6
    resumed = fit(cfg)
    assert resumed.step == 12 and resumed.images_seen == straight.images_seen
    a, b = flat_state(straight), flat_state(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_finished_run_is_not_retrained(tmp_path):
    cfg = small_config(tmp_path / "run")
    fit(cfg)
    meta = tmp_path / "run" / "checkpoints" / "step-00000012" / "meta.json"
    before = meta.stat().st_mtime_ns
    again = fit(cfg)
    assert again.step == 12
    assert meta.stat().st_mtime_ns == before


def test_resume_refuses_a_different_model(tmp_path):
    fit(small_config(tmp_path / "run"))
    with pytest.raises(ValueError, match="model.g_width"):
        fit(small_config(tmp_path / "run", "model.g_width=16", "train.steps=20"))


def test_torn_newest_checkpoint_falls_back(tmp_path):
    fit(small_config(tmp_path / "run"))
    newest = tmp_path / "run" / "checkpoints" / "step-00000012" / "__0_0.distcp"
    newest.write_bytes(newest.read_bytes()[:1000])
    path, state = checkpoint.load_latest(tmp_path / "run")
    assert path.name == "step-00000006" and state["step"] == 6


@pytest.mark.parametrize("tf32", [True, False])
def test_configure_cuda_sets_tf32_and_autotuning_on_cuda_only(tf32):
    from dgan.engine.trainer import configure_cuda

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.benchmark)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not tf32
        torch.backends.cudnn.benchmark = False
        configure_cuda(torch.device("cpu"), tf32)
        assert torch.backends.cudnn.allow_tf32 is (not tf32)
        assert torch.backends.cudnn.benchmark is False
        configure_cuda(torch.device("cuda"), tf32)  # only sets flags: no device needed
        assert torch.backends.cuda.matmul.allow_tf32 is tf32
        assert torch.backends.cudnn.allow_tf32 is tf32
        assert torch.backends.cudnn.benchmark is True
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = saved
