"""Experiment trackers besides TensorBoard (`log.trackers`): W&B and MLflow, through
accelerate's tracker classes (accelerate.tracking.WandBTracker, MLflowTracker).

Each gets what TensorBoard gets: the scalars (same tags and steps), the sample grids as
images, and the resolved config, flattened to dotted keys (``train.batch_size``), as the
run's hyperparameters. Only the main process builds them (dgan.logging.RunLogger).

Both default to the run directory, so that they work without a network: W&B writes under
``<run.dir>/wandb`` (offline when WANDB_MODE is unset and no API key is found), MLflow to
the file store ``<run.dir>/mlruns`` unless MLFLOW_TRACKING_URI is set. The run ids are kept
in ``<run.dir>/trackers.json`` (plain JSON), so that a resumed training continues the same
W&B and MLflow run.
"""

from __future__ import annotations

import json
import netrc
import os
from typing import Any, Callable, Mapping, Optional, Sequence
from urllib.parse import urlparse

import numpy as np

from dgan.config import TRACKERS, ConfigError

__all__ = ["TRACKERS", "check_trackers", "flatten", "open_sinks", "package_available"]

IDS_FILE = "trackers.json"
# a sink's close(outcome): finished, preempted (saved, to be requeued) or failed


def package_available(name: str) -> bool:
    """Whether the package tracker `name` needs is installed (accelerate's own checks:
    mlflow-skinny counts as mlflow). TensorBoard is a dependency of dgan."""
    from accelerate.utils import is_mlflow_available, is_wandb_available

    return {"tensorboard": lambda: True, "wandb": is_wandb_available,
            "mlflow": is_mlflow_available}[name]()


def check_trackers(names: Sequence[str]) -> None:
    """ConfigError (one line) for a tracker whose package is missing; run before any work."""
    for name in names:
        if name in TRACKERS and not package_available(name):
            raise ConfigError(f"log.trackers includes {name}, but the {name} package is not "
                              f"installed; pip install 'dgan[{name}]'")


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> one dict of dotted keys; other values (lists included) as they are."""
    if not isinstance(node, Mapping):
        return {prefix.rstrip("."): node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(flatten(value, f"{prefix}{key}."))
    return flat


def read_ids(run_dir: str) -> dict[str, dict[str, str]]:
    """The tracker run ids saved in run_dir (trackers.json); {} when absent or unreadable."""
    try:
        with open(os.path.join(run_dir, IDS_FILE)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: {kk: vv for kk, vv in v.items() if isinstance(vv, str)}
            for k, v in data.items() if isinstance(v, dict)}


def write_ids(run_dir: str, ids: dict[str, dict[str, str]]) -> None:
    path = os.path.join(run_dir, IDS_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(ids, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(path + ".tmp", path)


def _accelerate_state() -> None:
    # accelerate's trackers log through accelerate's logger, which needs its state; the
    # ddp backend made it already (Accelerator), the deepspeed one did not
    from accelerate.state import PartialState

    PartialState()


def _wandb_api_key_known() -> bool:
    """WANDB_API_KEY set, or `wandb login` wrote the host's key to ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host or "api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbSink:
    """W&B through accelerate's WandBTracker; files under <run_dir>/wandb."""

    name = "wandb"

    def __init__(self, run_dir: str, project: str, run_name: str, run_id: Optional[str],
                 say: Callable[[str], None]) -> None:
        from accelerate.tracking import WandBTracker

        kwargs: dict[str, Any] = {"dir": run_dir, "name": run_name}
        if run_id:
            kwargs.update(id=run_id, resume="allow")
        if not os.environ.get("WANDB_MODE") and not _wandb_api_key_known():
            kwargs["mode"] = "offline"
            say(f"dgan: wandb: WANDB_MODE is unset and no API key found (WANDB_API_KEY, wandb "
                f"login): logging offline to {os.path.join(run_dir, 'wandb')}; `wandb sync` "
                "uploads it later")
        _accelerate_state()
        self.tracker = WandBTracker(project, **kwargs)
        self.tracker.main_process_only = False  # only the main process builds sinks
        self.tracker.start()
        self.ids = {"id": str(self.tracker.tracker.id)}

    def config(self, step: int, text: str, params: dict[str, Any]) -> None:
        self.tracker.store_init_configuration(params)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.tracker.log({k: float(v) for k, v in values.items()}, step=step)

    def images(self, step: int, grids: dict[str, np.ndarray]) -> None:
        self.tracker.log_images({tag: [g[..., 0] if g.shape[-1] == 1 else g]
                                 for tag, g in grids.items()}, step=step)

    def close(self, outcome: str) -> None:
        run = self.tracker.tracker
        if outcome == "preempted" and hasattr(run, "mark_preempting"):
            run.mark_preempting()
        if outcome == "failed":
            run.finish(exit_code=1)
        else:
            self.tracker.finish()


class MlflowSink:
    """MLflow through accelerate's MLflowTracker; file:<run_dir>/mlruns unless
    MLFLOW_TRACKING_URI is set. Sample grids are artifacts <tag>/grid-<step>.png."""

    name = "mlflow"

    def __init__(self, run_dir: str, project: str, run_name: str, saved: dict[str, str],
                 say: Callable[[str], None]) -> None:
        import mlflow
        from accelerate.tracking import MLflowTracker

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = "file:" + os.path.join(os.path.abspath(run_dir), "mlruns")
            # MLflow 3 refuses the file store unless asked for; it is dgan's offline default
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(uri)
        run_id = saved.get("run_id") if saved.get("tracking_uri") == uri else None
        if saved.get("run_id") and run_id is None:
            say(f"dgan: mlflow: the saved run {saved['run_id']} is in another tracking store "
                f"({saved.get('tracking_uri')}); starting a new run in {uri}")
        _accelerate_state()
        self.tracker = MLflowTracker(experiment_name=project, run_id=run_id, run_name=run_name)
        self.tracker.main_process_only = False  # only the main process builds sinks
        self.tracker.start()
        self.mlflow = mlflow
        self.say = say
        self.ids = {"run_id": self.tracker.tracker.info.run_id, "tracking_uri": uri}

    def config(self, step: int, text: str, params: dict[str, Any]) -> None:
        # MLflow params cannot change: a resumed run keeps the values it started with (and
        # each start's config is an artifact config/config-<step>.yaml)
        old = self.mlflow.get_run(self.ids["run_id"]).data.params
        changed = sorted(k for k, v in params.items() if k in old and old[k] != str(v))
        if changed:
            self.say(f"dgan: mlflow: params keep their first values (MLflow cannot change them): "
                     f"{', '.join(changed)}; see config/config-{step:08d}.yaml in the artifacts")
        self.tracker.store_init_configuration({k: v for k, v in params.items() if k not in old})
        self.mlflow.log_text(text, f"config/config-{step:08d}.yaml")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.tracker.log({k: float(v) for k, v in values.items()}, step=step)

    def images(self, step: int, grids: dict[str, np.ndarray]) -> None:
        for tag, grid in grids.items():
            self.mlflow.log_image(grid[..., 0] if grid.shape[-1] == 1 else grid,
                                  artifact_file=f"{tag}/grid-{step:08d}.png")

    def close(self, outcome: str) -> None:
        if outcome == "finished":
            self.tracker.finish()
        else:
            self.mlflow.end_run(status="KILLED" if outcome == "preempted" else "FAILED")


def open_sinks(names: Sequence[str], run_dir: str, *, project: str, run_name: str,
               resume: bool, say: Callable[[str], None]) -> list[Any]:
    """Start the W&B / MLflow runs of `names` (TensorBoard is dgan.logging's own writer).
    `resume`: the training continues a checkpoint of run_dir, so the runs saved in
    trackers.json continue too; otherwise new runs start. Their ids are saved."""
    check_trackers(names)
    saved = read_ids(run_dir) if resume else {}
    sinks: list[Any] = []
    try:
        for name in names:
            if name == "wandb":
                sinks.append(WandbSink(run_dir, project, run_name,
                                       saved.get("wandb", {}).get("id"), say))
            elif name == "mlflow":
                sinks.append(MlflowSink(run_dir, project, run_name, saved.get("mlflow", {}),
                                        say))
    except BaseException:
        for sink in sinks:
            sink.close("failed")
        raise
    if sinks:
        write_ids(run_dir, {**read_ids(run_dir), **{s.name: s.ids for s in sinks}})
    return sinks
