import os

import pytest

from dgan.config import ConfigError, load_config


def test_defaults_and_run_dir():
    cfg = load_config()
    assert cfg.run.dir == "runs/quickstart"
    assert cfg.train.precision == "fp32"
    assert cfg.backend.name == "ddp"


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "exp1.yaml"
    path.write_text("train:\n  batch_size: 16\n  steps: 7\n")
    cfg = load_config(str(path), ["train.steps=9", "run.seed=3"])
    assert (cfg.train.batch_size, cfg.train.steps, cfg.run.seed) == (16, 9, 3)
    assert cfg.run.dir == "runs/exp1"


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"train\.batch_sise.*did you mean train\.batch_size"):
        load_config(None, ["train.batch_sise=8"])


def test_unknown_key_in_yaml_names_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lr_gg: 0.1\n")
    with pytest.raises(ConfigError, match=r"optim\.lr_gg.*bad\.yaml.*optim\.lr_g"):
        load_config(str(path))


@pytest.mark.parametrize("override, pattern", [
    ("train.batch_size=abc", r"train\.batch_size.*abc.*expected int"),
    ("log.progress=maybe", r"log\.progress.*maybe.*auto.*bar.*lines.*off"),
    ("train.precision=fp8", r"train\.precision.*fp8.*fp32.*bf16.*fp16"),
    ("train.steps=0", r"train\.steps.*expected > 0"),
    ("data.resolution=48", r"data\.resolution.*48"),
    ("optim.lr_d=nan", r"'optim\.lr_d': nan; expected a finite number"),
    ("optim.lr_d=inf", r"'optim\.lr_d': inf; expected a finite number"),
    ("optim.lr_g=-inf", r"'optim\.lr_g': -inf; expected a finite number"),
    ("optim.lr_g=-0.1", r"'optim\.lr_g': -0\.1; expected > 0"),
    ("loss.r1_gamma=nan", r"'loss\.r1_gamma': nan; expected a finite number"),
    ("optim.beta1=5", r"'optim\.beta1': 5\.0; expected \[0, 1\)"),
    ("optim.beta2=1", r"'optim\.beta2': 1\.0; expected \[0, 1\)"),
    ("optim.beta1=-0.5", r"'optim\.beta1': -0\.5; expected \[0, 1\)"),
    ("train.max_bad_steps=-1", r"train\.max_bad_steps.*expected >= 0"),
])
def test_bad_values_name_key_value_and_expectation(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, [override])


def test_run_dir_must_not_be_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match=r"'run\.dir': .*/f exists and is not a directory"):
        load_config(None, [f"run.dir={tmp_path / 'f'}"])
    assert load_config(None, [f"run.dir={tmp_path / 'new'}"]).run.dir


def test_override_without_equals():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.steps"])


def test_every_shipped_config_loads():
    from pathlib import Path

    configs = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        load_config(str(path))


def test_compile_cache_must_be_a_directory(tmp_path):
    assert load_config().train.compile_cache is None  # <run.dir>/compile_cache
    (tmp_path / "f").write_text("x")
    sg2 = ["model.name=stylegan2", "data.resolution=32"]  # the task that reads the key
    for bad in (str(tmp_path / "f"), "''"):
        with pytest.raises(ConfigError, match=r"train\.compile_cache.*expected a directory"):
            load_config(None, [*sg2, f"train.compile_cache={bad}"])
    assert load_config(None, [*sg2, f"train.compile_cache={tmp_path}/new"]).train.compile_cache


def test_compile_cache_goes_to_the_run_dir_unless_the_user_chose_one(tmp_path, monkeypatch):
    from dgan.tasks import stylegan2 as stylegan2_task
    from dgan.tasks.stylegan2 import use_compile_cache

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setattr(stylegan2_task, "_CACHE_SET_HERE", None)
    sg2 = ["model.name=stylegan2", "data.resolution=32"]
    run_a = load_config(None, [*sg2, f"run.dir={tmp_path}/a"])
    assert use_compile_cache(run_a) == str(tmp_path / "a" / "compile_cache")
    assert (tmp_path / "a" / "compile_cache").is_dir()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "a" / "compile_cache")
    # a second run in the same process moves it (the variable was set here, not by the user)
    chosen = load_config(None, [*sg2, f"run.dir={tmp_path}/b",
                                f"train.compile_cache={tmp_path}/c"])
    assert use_compile_cache(chosen) == str(tmp_path / "c")
    # torch's own default, which it writes into the variable on first use, is not a choice
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    assert use_compile_cache(run_a) == str(tmp_path / "a" / "compile_cache")
    # one the user exported is kept
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert use_compile_cache(chosen) == str(tmp_path / "mine")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


def test_compile_is_auto_by_default_and_only_for_stylegan2_on_ddp():
    import torch

    from dgan.config import resolve_compile

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert load_config().train.compile is None  # auto
    assert not resolve_compile(load_config(), cuda)  # dcgan: never
    sg2 = ["model.name=stylegan2", "data.resolution=32"]
    assert resolve_compile(load_config(None, sg2), cuda)
    assert not resolve_compile(load_config(None, sg2), cpu)
    ds = load_config(None, [*sg2, "backend.name=deepspeed", "loss.r1_gamma=0"])
    assert not resolve_compile(ds, cuda)  # auto with deepspeed: eager, no error
    assert resolve_compile(load_config(None, [*sg2, "train.compile=true"]), cpu)
    assert not resolve_compile(load_config(None, [*sg2, "train.compile=false"]), cuda)
    from pathlib import Path

    shipped = Path(__file__).parent.parent / "configs" / "stylegan2_256.yaml"
    assert load_config(str(shipped)).train.compile is None
    cfg = load_config(None, ["model.name=stylegan2", "data.resolution=32", "train.compile=true"])
    assert cfg.train.compile is True
    with pytest.raises(ConfigError, match=r"train\.compile.*task\.name=dcgan"):
        load_config(None, ["train.compile=true"])
    with pytest.raises(ConfigError, match=r"train\.compile.*backend\.name=deepspeed"):
        load_config(None, ["model.name=stylegan2", "data.resolution=32", "train.compile=true",
                           "backend.name=deepspeed"])


@pytest.mark.parametrize("asked, given, expected", [
    (None, None, "fp32"), ("no", None, "fp32"), ("bf16", None, "bf16"), ("fp16", None, "fp16"),
    ("no", "bf16", "bf16"), ("bf16", "bf16", "bf16"), (None, "fp16", "fp16")])
def test_precision_follows_accelerate_launch_unless_given(monkeypatch, asked, given, expected):
    """`accelerate launch --mixed_precision bf16` exports ACCELERATE_MIXED_PRECISION=bf16."""
    if asked is None:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", asked)
    overrides = [f"train.precision={given}"] if given else []
    assert load_config(None, overrides).train.precision == expected


def test_precision_given_both_ways_must_agree(monkeypatch, tmp_path):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with pytest.raises(ConfigError, match=r"train\.precision=fp32 but accelerate launch asked "
                       r"for --mixed_precision bf16"):
        load_config(None, ["train.precision=fp32"])
    path = tmp_path / "x.yaml"
    path.write_text("train:\n  precision: fp16\n")
    with pytest.raises(ConfigError, match=r"train\.precision=fp16 but"):
        load_config(str(path))
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    with pytest.raises(ConfigError, match="--mixed_precision fp8"):
        load_config(None, [])
