"""The task interface (dgan.tasks): names, config ownership, and the one generic loop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dgan import checkpoint
from dgan.cli import _resolve_data
from dgan.config import ConfigError, load_config
from dgan.engine.trainer import Trainer
from dgan.tasks import TASKS, Phase, register, task_name
from dgan.tasks.dcgan import DCGAN

SG2 = ["model.name=stylegan2", "data.resolution=32"]


def test_task_name_defaults_to_the_model_and_unknown_names_are_one_line():
    assert task_name(load_config()) == "dcgan"
    assert task_name(load_config(None, SG2)) == "stylegan2"
    assert task_name(load_config(None, ["task.name=dcgan"])) == "dcgan"
    with pytest.raises(ConfigError, match=r"^bad value for 'task.name': 'pix2pux'; expected "):
        load_config(None, ["task.name=pix2pux"])
    with pytest.raises(ConfigError, match=r"task.name=stylegan2 trains model.name in "):
        load_config(None, ["task.name=stylegan2"])  # model.name is dcgan


@pytest.mark.parametrize("overrides, key, task", [
    (["model.w_dim=256"], "model.w_dim", "dcgan"),
    (["loss.pl_weight=2"], "loss.pl_weight", "dcgan"),
    (["train.ema_kimg=20"], "train.ema_kimg", "dcgan"),
    ([*SG2, "model.g_width=64"], "model.g_width", "stylegan2"),
    ([*SG2, "train.ema_beta=0.99"], "train.ema_beta", "stylegan2"),
])
def test_a_key_that_does_nothing_for_the_task_is_an_error_naming_it(overrides, key, task):
    with pytest.raises(ConfigError, match=rf"'{key}'=\S+ does nothing for task.name={task} "):
        load_config(None, overrides)


def test_grad_accum_and_compile_are_refused_by_the_tasks_that_cannot_take_them():
    assert load_config(None, ["train.grad_accum=2"]).train.grad_accum == 2
    with pytest.raises(ConfigError, match=r"train.grad_accum.*task.name=stylegan2"):
        load_config(None, [*SG2, "train.grad_accum=2"])
    with pytest.raises(ConfigError, match=r"train.compile=true .*task.name=dcgan"):
        load_config(None, ["train.compile=true"])


def test_the_shipped_configs_still_load():
    for path in sorted((Path(__file__).parent.parent / "configs").glob("*.yaml")):
        load_config(str(path))


def test_the_engine_has_no_per_model_branches():
    engine = Path(__file__).parent.parent / "dgan" / "engine"
    hits = [f"{p}:{i}" for p in engine.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if "model.name" in line]
    assert hits == []


class EveryOtherG(DCGAN):
    """A new task in a few lines: D every step, G every second step, a state of its own."""

    name = "test_every_other_g"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.g_steps = 0

    def phases(self) -> list[Phase]:
        def g_phase(mb):
            self.g_steps += 1
            return self.g_phase(mb)
        return [Phase("D", "D", 1, self.d_phase), Phase("G", "G", 2, g_phase)]

    def state_dict(self):
        return {"g_steps": self.g_steps}

    def load_state_dict(self, state):
        self.g_steps = int(state["g_steps"])


@pytest.fixture
def every_other_g():
    register(EveryOtherG)
    yield
    TASKS.pop(EveryOtherG.name)


def test_a_registered_task_runs_on_the_loop_with_its_intervals_and_state(tmp_path,
                                                                          every_other_g):
    cfg = load_config(None, [f"run.dir={tmp_path}", "task.name=test_every_other_g",
                             "train.batch_size=8", "train.steps=5", "checkpoint.every=4",
                             "log.every=5", "log.progress=false", "data.workers=0",
                             "log.grid=4", "model.g_width=8", "model.d_width=8",
                             "model.z_dim=8", "train.grad_accum=2"])
    trainer = Trainer(cfg, _resolve_data(cfg))
    g0 = [p.detach().clone() for p in trainer.backend.nets["G"].parameters()]
    d_steps = []
    step = trainer.backend.step
    trainer.backend.step = lambda group: d_steps.append(group) or step(group)
    assert trainer.fit() == 0
    assert trainer.task.g_steps == 3 * 2  # steps 0, 2, 4; two micro-batches each
    assert d_steps == ["D", "G", "D", "D", "G", "D", "D", "G"]
    assert any(not torch.equal(a, b) for a, b in zip(g0, trainer.backend.nets["G"].parameters()))
    state = checkpoint.load_latest(tmp_path)[1]
    assert state["task"] == {"g_steps": 6} and state["step"] == 5
    assert {"G", "D", "G_ema", "opt_G", "opt_D"} <= set(state)
    again = Trainer(cfg, _resolve_data(cfg))
    again.resume()
    assert again.task.g_steps == 6 and again.step == 5
    again.checkpointer.close()
