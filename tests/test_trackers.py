"""W&B and MLflow through accelerate's trackers (`log.trackers`, #19): the same scalars,
sample grids and the resolved config as TensorBoard, offline in the run directory, and one
tracker run per training across resumes."""

from __future__ import annotations

import glob
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from dgan import trackers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["train.steps=4", "train.batch_size=4", "data.workers=0", "log.every=2", "log.grid=4",
        "checkpoint.every=4", "model.g_width=8", "model.d_width=8", "log.progress=lines"]


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a `dgan train` subprocess: no W&B / MLflow settings of the
    machine running the tests (HOME too: no ~/.netrc API key)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_"))}
    env.update(PYTHONPATH=ROOT, OMP_NUM_THREADS="1", HOME=str(home), **extra)
    return env


def train(run_dir: Path, env: dict[str, str], *extra: str) -> str:
    out = subprocess.run([sys.executable, "-m", "dgan", "train", f"run.dir={run_dir}", *TINY,
                          *extra], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


# -- W&B ------------------------------------------------------------------------------------
def wandb_records(path: str) -> Iterator[Any]:
    """The records of an offline run's .wandb file: W&B's LevelDB-style log (a 7-byte file
    header, 32 KiB blocks of records each with a 7-byte header: crc32, length, type) of
    protobuf Records."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", data[:7]
    pos, block, chunks = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, or the last piece of a record
            record = pb.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def wandb_run(path: str) -> dict[str, Any]:
    """run id, config and history ({step: {key: value}}) of one offline run file."""
    run: dict[str, Any] = {"config": {}, "history": {}, "images": {}}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run["id"] = record.run.run_id
        elif kind == "config":
            run["config"].update({u.key: json.loads(u.value_json) for u in record.config.update})
        elif kind == "history":
            step = run["history"].setdefault(record.history.step.num, {})
            for item in record.history.item:
                keys = list(item.nested_key) or [item.key]
                if len(keys) == 1:
                    step[keys[0]] = json.loads(item.value_json)
                elif keys[1] == "_type":
                    run["images"].setdefault(record.history.step.num, {})[keys[0]] = (
                        json.loads(item.value_json))
    return run


def test_wandb_offline_gets_the_scalars_images_and_config_and_a_resume_continues_the_run(
        tmp_path):
    pytest.importorskip("wandb")
    run_dir = tmp_path / "run"
    # no WANDB_MODE and no API key: offline, said once, files in the run directory
    out = train(run_dir, clean_env(tmp_path), "log.trackers=[tensorboard,wandb]")
    assert "dgan: wandb: WANDB_MODE is unset and no API key found" in out
    ids = json.loads((run_dir / "trackers.json").read_text())
    files = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1 and files[0].endswith(f"run-{ids['wandb']['id']}.wandb")
    first = wandb_run(files[0])
    assert first["id"] == ids["wandb"]["id"]
    assert first["config"]["train.batch_size"] == 4 and first["config"]["log.project"] == "dgan"
    assert sorted(first["history"]) == [2, 4]
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    for record in records:  # the same tags and values as log.jsonl (and TensorBoard)
        logged = first["history"][record["step"]]
        assert {"loss/G", "loss/D", "lr/G", "perf/img_per_s"} <= set(logged)
        assert logged["loss/G"] == pytest.approx(record["loss/G"], abs=1e-5)
    assert first["images"][2]["samples/G_ema"] == "images/separated"
    assert "samples/G_ema_by_class/0_0" in first["images"][4]
    assert glob.glob(str(run_dir / "wandb" / "offline-run-*" / "files" / "media" / "images" /
                         "samples" / "G_ema_2_*.png"))
    assert (run_dir / "tb").is_dir()  # TensorBoard still written beside it

    out = train(run_dir, clean_env(tmp_path, WANDB_MODE="offline"),
                "log.trackers=[tensorboard,wandb]", "train.steps=6")
    assert "resumed from" in out and "no API key found" not in out  # WANDB_MODE respected
    files = sorted(glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb")))
    assert len(files) == 2  # one offline directory per start, both of the same run
    second = wandb_run(files[1])  # directories are named by start time
    assert second["id"] == first["id"]
    assert sorted(second["history"]) == [6] and second["config"]["train.steps"] == 6


# -- MLflow ---------------------------------------------------------------------------------
def test_mlflow_file_store_gets_the_scalars_images_and_params_across_a_preemption(
        tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    import mlflow

    from dgan.cli import _resolve_data
    from dgan.config import load_config
    from dgan.engine.preempt import REQUEUE_EXIT_CODE, PreemptionFlag
    from dgan.engine.trainer import Trainer

    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # for this test's own client
    run_dir = tmp_path / "run"
    # in-process, preempted after step 1 (as if signalled): the run is ended, as KILLED
    cfg = load_config(None, [f"run.dir={run_dir}", *TINY, "log.every=1", "log.trackers=[mlflow]"])
    flag = PreemptionFlag()
    flag.signal_name = "SIGTERM"
    trainer = Trainer(cfg, _resolve_data(cfg))
    try:
        assert trainer.fit(flag) == REQUEUE_EXIT_CODE
    finally:
        trainer.close()
    assert mlflow.active_run() is None
    ids = json.loads((run_dir / "trackers.json").read_text())["mlflow"]
    assert ids["tracking_uri"] == f"file:{run_dir}/mlruns"
    client = mlflow.MlflowClient(tracking_uri=ids["tracking_uri"])
    assert client.get_run(ids["run_id"]).info.status == "KILLED"
    assert not (run_dir / "tb").exists()  # tensorboard not in log.trackers

    out = train(run_dir, clean_env(tmp_path), "log.trackers=[mlflow]")
    assert "resumed from" in out
    assert json.loads((run_dir / "trackers.json").read_text())["mlflow"] == ids
    run = client.get_run(ids["run_id"])  # the same run, continued
    assert run.info.status == "FINISHED"
    assert run.info.experiment_id == client.get_experiment_by_name("dgan").experiment_id
    assert [r.info.run_id for r in client.search_runs([run.info.experiment_id])] == [ids["run_id"]]
    for key in ("loss/G", "loss/D", "lr/D", "progress/kimg"):
        assert [m.step for m in client.get_metric_history(ids["run_id"], key)] == [1, 2, 4]
    kimg = client.get_metric_history(ids["run_id"], "progress/kimg")
    assert [m.value for m in kimg] == pytest.approx([0.004, 0.008, 0.016])
    params = run.data.params
    assert params["train.batch_size"] == "4" and params["model.g_width"] == "8"
    assert params["log.every"] == "1"  # params keep their first values ...
    assert "params keep their first values (MLflow cannot change them): log.every" in out
    # ... and every start's resolved config is an artifact
    configs = [a.path for a in client.list_artifacts(ids["run_id"], "config")]
    assert configs == ["config/config-00000000.yaml", "config/config-00000001.yaml"]
    grids = [a.path for a in client.list_artifacts(ids["run_id"], "samples/G_ema")]
    assert grids == [f"samples/G_ema/grid-0000000{s}.png" for s in (1, 2, 4)]


# -- errors ---------------------------------------------------------------------------------
def test_unknown_tracker_is_a_one_line_config_error(tmp_path, capsys):
    from dgan.cli import main

    assert main(["train", f"run.dir={tmp_path / 'run'}", "log.trackers=[tensorboard,neptune]"]) == 2
    err = capsys.readouterr().err
    assert err == ("dgan: error: bad value in 'log.trackers': 'neptune'; expected any of "
                   "['tensorboard', 'wandb', 'mlflow']\n")
    assert not (tmp_path / "run").exists()
    assert main(["train", "--print-config", "log.trackers=[wandb,wandb]"]) == 2
    assert "'wandb' is listed twice" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["wandb", "mlflow"])
def test_missing_tracker_package_is_a_one_line_error_before_any_work(tmp_path, capsys,
                                                                     monkeypatch, name):
    from dgan.cli import main

    checked = []
    monkeypatch.setattr(trackers, "package_available",
                        lambda n: checked.append(n) or n == "tensorboard")
    run_dir = tmp_path / "run"
    assert main(["train", f"run.dir={run_dir}", *TINY, f"log.trackers=[tensorboard,{name}]"]) == 2
    assert capsys.readouterr().err == (
        f"dgan: error: log.trackers includes {name}, but the {name} package is not installed; "
        f"pip install 'dgan[{name}]'\n")
    assert checked == ["tensorboard", name]
    assert not run_dir.exists()


def test_availability_is_accelerates_check(monkeypatch):
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    monkeypatch.setattr(accelerate.utils, "is_mlflow_available", lambda: True)
    assert not trackers.package_available("wandb")
    assert trackers.package_available("mlflow") and trackers.package_available("tensorboard")


def test_mlflow_skinny_counts_as_mlflow():
    pytest.importorskip("mlflow")
    from accelerate.utils import is_mlflow_available

    assert is_mlflow_available()


def test_flatten_and_a_junk_ids_file(tmp_path):
    assert trackers.flatten({"a": {"b": 1, "c": {"d": None}}, "e": [1, 2]}) == {
        "a.b": 1, "a.c.d": None, "e": [1, 2]}
    (tmp_path / "trackers.json").write_text("__import__('os').system('false')")
    assert trackers.read_ids(str(tmp_path)) == {}
    (tmp_path / "trackers.json").write_text('{"wandb": {"id": "abc", "x": 1}, "mlflow": 3}')
    assert trackers.read_ids(str(tmp_path)) == {"wandb": {"id": "abc"}}
