"""Training tasks by name (`task.name`): one file each, see dgan.tasks.base.

`task.name` null means the task of `model.name` (dcgan -> dcgan, stylegan2 -> stylegan2,
pix2pix -> pix2pix, cyclegan -> cyclegan, esrgan -> sr), so configs written before tasks
existed keep working.
"""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf

from dgan.tasks.base import Batch, Phase, Task, one_hot

__all__ = ["Batch", "Phase", "Task", "build_task", "one_hot", "register", "task_class",
           "task_name", "validate_task"]

TASKS: dict[str, type[Task]] = {}
# imported on first lookup
_MODULES = ("dgan.tasks.dcgan", "dgan.tasks.stylegan2", "dgan.tasks.pix2pix",
            "dgan.tasks.cyclegan", "dgan.tasks.sr")
# model.name -> its task where the names differ
MODEL_TASKS = {"esrgan": "sr"}


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: make `cls` available as task.name=cls.name."""
    TASKS[cls.name] = cls
    return cls


def _load() -> dict[str, type[Task]]:
    import importlib

    for module in _MODULES:
        importlib.import_module(module)
    return TASKS


def task_name(cfg: DictConfig) -> str:
    """`task.name`, or the task of `model.name` when it is null."""
    name = OmegaConf.select(cfg, "task.name")
    if name is not None:
        return str(name)
    return MODEL_TASKS.get(str(cfg.model.name), str(cfg.model.name))


def task_class(cfg: DictConfig) -> type[Task]:
    tasks = _load()
    name = task_name(cfg)
    if name not in tasks:
        from dgan.config import ConfigError

        raise ConfigError(f"bad value for 'task.name': {name!r}; expected one of {sorted(tasks)}")
    return tasks[name]


def build_task(cfg: DictConfig, c_dim: int = 0) -> Task:
    return task_class(cfg)(cfg, c_dim)


def validate_task(cfg: DictConfig, defaults: DictConfig,
                  error: Callable[[str], Exception]) -> None:
    """Raise `error(line)` for the first problem of `cfg` with its task (see
    Task.validate_config)."""
    cls = task_class(cfg)
    others = {name: t.own_keys for name, t in _load().items() if name != cls.name}
    problems = cls.validate_config(cfg, defaults, others)
    if problems:
        raise error(problems[0])
