"""Metrics that never mislead: digit metrics only on digits, real-statistics cache keyed
by the feature net's weights, Inception in fp32 under any autocast, and evaluation that
shows its progress and time."""

import io
import json

import numpy as np
import pytest
import torch

from dgan.cli import _resolve_data, main
from dgan.config import load_config
from dgan.data.builtin import make_builtin
from dgan.data.sources import resolve_source
from dgan.metrics import WEIGHTS_ENV, evaluate, sample_latents
from dgan.metrics.cache import cache_root, real_stats_key
from dgan.metrics.digits import DigitClassifier, DigitCNN
from dgan.metrics.inception import InceptionV3FID, InceptionV3Network
from dgan.metrics.run_eval import select_metrics

from test_train import fit, small_config


@pytest.fixture
def no_inception(monkeypatch, tmp_path):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("DGAN_CACHE", str(tmp_path / "cache"))  # no weights file there either


def noise_shards(directory):
    """Shards of 28x28 grey noise made by `dgan data make`: a user's data, not digits."""
    images = np.random.default_rng(0).integers(0, 256, (64, 28, 28), dtype=np.uint8)
    np.savez(directory / "noise.npz", images=images)
    assert main(["data", "make", str(directory / "noise.npz"), str(directory / "shards"),
                 "--workers", "0"]) == 0
    return directory / "shards"


def test_which_metrics_run_on_which_data(tmp_path, no_inception):
    photos = noise_shards(tmp_path)
    make_builtin("mnist", tmp_path / "digits", resolution=28, per_shard=5000)
    metrics = ["fd", "kid", "coverage", "fd_digits", "modes"]

    def select(path, *extra, inception=False):
        cfg = load_config(None, [f"data.path={path}", *extra])
        return select_metrics(cfg, _resolve_data(cfg), metrics, inception)

    chosen, why = select(photos)
    assert chosen == []
    assert why.startswith("skipped fd, kid, coverage, fd_digits, modes: data.path ")
    assert "--inception-weights PATH" in why and WEIGHTS_ENV in why
    assert "eval.digit_metrics=true" in why and "\n" not in why
    # With the Inception weights fd/kid are FID/KID; digit classes are still left out.
    chosen, why = select(photos, inception=True)
    assert chosen == ["fd", "kid"] and "--inception-weights" not in why
    assert select(photos, "eval.digit_metrics=true") == (metrics, None)  # explicit opt-in
    # Built-in digits: by name, or by the index of shards written by `data make --builtin`.
    assert select("builtin:mnist") == (metrics, None)
    assert resolve_source(str(tmp_path / "digits")).builtin == "mnist"
    assert select(tmp_path / "digits") == (metrics, None)
    chosen, why = select(tmp_path / "digits", "eval.digit_metrics=false")
    assert chosen == [] and "eval.digit_metrics=false" in why
    assert main(["train", "eval.digit_metrics=maybe", f"run.dir={tmp_path}/r"]) == 2


@pytest.mark.slow
def test_run_on_non_digit_data_skips_digit_metrics(tmp_path, no_inception, capsys):
    photos = noise_shards(tmp_path)
    run = tmp_path / "run"
    capsys.readouterr()
    fit(small_config(run, f"data.path={photos}", "train.steps=4", "log.every=2",
                     "checkpoint.every=4", "eval.every=2", "eval.n=20",
                     "eval.metrics=[fd,coverage]"))
    err = capsys.readouterr().err
    # one line, once for the run's two evaluations, and no digit numbers in the log
    assert err.count("dgan: eval: skipped fd, coverage: ") == 1
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert not any(k.startswith("metrics/") for r in records for k in r)

    assert main(["eval", "--run", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dgan: error: nothing to evaluate: skipped fd, coverage:")
    assert err.count("\n") == 1 and "--inception-weights PATH" in err
    assert main(["eval", "--run", str(run), "--inception-weights", str(tmp_path / "no.pth")]) == 2
    assert "Inception weights not found" in capsys.readouterr().err
    # explicit opt-in (the user says the data are digits): computed, with progress lines
    assert main(["eval", "--run", str(run), "--digit-metrics", "true", "--n", "20",
                 "--metrics", "coverage"]) == 0
    out, err = capsys.readouterr()
    assert "coverage (0..9)" in out
    assert "dgan: eval: coverage on 20 samples in " in err


def _digits(start, count):
    return torch.tanh(sample_latents(5, start, count, (784,))).reshape(count, 1, 28, 28)


def test_real_stats_cache_is_keyed_by_the_classifier_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("DGAN_CACHE", str(tmp_path))
    real = torch.rand(20, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
    torch.manual_seed(0)
    first = DigitClassifier(DigitCNN(), 0.0)

    def fd(classifier, real_data):
        return evaluate(_digits, real_data, ["fd_digits"], n=20, cache_key="test-set",
                        digit_classifier=classifier)["fd_digits"]

    value = fd(first, real)
    assert fd(first, None) == pytest.approx(value)  # same weights: real stats from the cache
    other = DigitCNN()
    other.load_state_dict(first.net.state_dict())
    with torch.no_grad():
        other.conv1.weight[0, 0, 0, 0] += 0.5
    with pytest.raises(ValueError, match="real data is needed"):  # other weights: a miss
        fd(DigitClassifier(other, 0.0), None)
    assert len(list((cache_root() / "real-stats").glob("*.npz"))) == 1


def test_inception_cache_key_changes_with_the_weights_file(tmp_path):
    torch.manual_seed(0)
    state = InceptionV3Network().state_dict()
    torch.save(state, tmp_path / "a.pth")
    torch.save(state, tmp_path / "a_copy.pth")
    state["Mixed_7c.branch_pool.conv.weight"][0, 0] += 1.0
    torch.save(state, tmp_path / "b.pth")
    names = [InceptionV3FID(weights=tmp_path / f, check_hash=False).name
             for f in ("a.pth", "a_copy.pth", "b.pth")]
    assert names[0] == names[1] != names[2]
    assert all(n.startswith("inception_v3_fid-") for n in names)
    keys = {real_stats_key("data", n, 64, 100) for n in names}
    assert len(keys) == 2


def test_inception_ignores_an_ambient_bf16_autocast():
    torch.manual_seed(0)
    net = InceptionV3FID(random_init=True)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    plain = net(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = net(x)
    assert under.dtype == torch.float32
    assert ((under - plain).norm() / plain.norm()).item() < 1e-6


class TinyFeatures:
    name = "tiny"
    dim = 4

    def __call__(self, images):
        return images.flatten(1)[:, :4]


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("terminal", [False, True])
def test_evaluation_shows_progress_and_its_time(terminal, monkeypatch):
    stream = FakeTerminal() if terminal else io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    real = torch.rand(30, 1, 8, 8) * 2 - 1

    def gen(start, count):
        return torch.tanh(sample_latents(3, start, count, (64,))).reshape(count, 1, 8, 8)

    evaluate(gen, real, ["fd"], n=30, feature_net=TinyFeatures(), batch_size=8, progress=True)
    lines = stream.getvalue().replace("\r", "\n").splitlines()
    last = lines[-1]
    assert last.startswith("dgan: eval: fd on 30 samples in ") and "samples " in last
    assert "real data " in last
    if terminal:
        assert any(line.startswith("eval: samples: ") and "/30 [" in line for line in lines)
        assert any(line.startswith("eval: real data: ") for line in lines)  # tqdm bars
    else:
        assert lines[0] == "dgan: eval: fd on 30 samples ..." and len(lines) == 2
    quiet = io.StringIO()
    monkeypatch.setattr("sys.stderr", quiet)
    evaluate(gen, real, ["fd"], n=30, feature_net=TinyFeatures())
    assert quiet.getvalue() == ""  # the Python API is quiet unless asked
