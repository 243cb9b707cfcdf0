"""The offline digit classifier, digit metrics, Stacked MNIST and evaluate() end to end.

One classifier is trained per test module into a temporary cache (about 10 s on CPU).
"""

import numpy as np
import pytest
import torch

from dgan.metrics import (
    DigitClassifier,
    count_modes,
    evaluate,
    format_table,
    stacked_mnist,
    to_model_images,
)
from dgan.metrics.digits import classifier_path, heldout_accuracy, load_mnist5k


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("dgan-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DGAN_CACHE", str(root))
        mp.delenv("DGAN_INCEPTION_WEIGHTS", raising=False)
        yield root


@pytest.fixture(scope="module")
def classifier(cache):
    return DigitClassifier.load_or_train()


@pytest.fixture(scope="module")
def mnist_halves():
    images, _ = load_mnist5k()
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    x = torch.from_numpy(images)[perm]
    return x[:2500], x[2500:]


def test_classifier_reaches_97_percent_and_is_cached(classifier, cache, capsys):
    assert heldout_accuracy(classifier.net) >= 0.97
    assert classifier.accuracy == pytest.approx(heldout_accuracy(classifier.net), abs=1e-4)
    assert classifier_path(cache).exists()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    again = DigitClassifier.load_or_train()
    assert torch.equal(torch.rand(3), expected)  # the caller's RNG stream is untouched
    assert "trained" not in capsys.readouterr().out  # loaded, not retrained
    for a, b in zip(classifier.net.state_dict().values(), again.net.state_dict().values()):
        assert torch.equal(a, b)


def test_classifier_accepts_28_32_and_three_channels(classifier):
    images, labels = stacked_mnist(200, seed=1)
    digits = torch.tensor([[lab // 100, lab // 10 % 10, lab % 10] for lab in labels])
    for res in (28, 32, 64):
        imgs, _ = stacked_mnist(200, seed=1, resolution=res)
        pred = classifier.predict(to_model_images(torch.from_numpy(imgs)))
        assert pred.shape == (200, 3)
        assert (pred == digits).float().mean() > 0.95, res
    assert images.dtype == np.uint8 and images.shape == (200, 28, 28, 3)
    assert labels.dtype == np.int64 and labels.min() >= 0 and labels.max() < 1000
    x = to_model_images(torch.from_numpy(images))
    assert classifier.embed(x).shape == (200, 3 * 128)
    assert classifier.probs(x[:, :1]).shape == (200, 1, 10)


def test_real_mnist_halves_small_digit_fd_and_uniform_coverage(classifier, mnist_halves, cache):
    a, b = mnist_halves
    real_gen = lambda start, count: to_model_images(a[start : start + count])  # noqa: E731
    noise_gen = lambda start, count: torch.rand(count, 1, 28, 28) * 2 - 1  # noqa: E731
    metrics = ["fd", "kid", "pr", "fd_digits", "coverage"]
    with pytest.warns(UserWarning, match="digit classifier"):
        res = evaluate(real_gen, b, metrics, n=2500, cache_key="test:mnist-b",
                       digit_classifier=classifier)  # fmt: skip
    # Without Inception weights nothing may be called FID.
    assert "fid" not in res and "kid" not in res and "precision" not in res
    # real=None: the real statistics must come from the cache written just above.
    noise = evaluate(noise_gen, None, ["fd_digits"], n=2500, cache_key="test:mnist-b",
                     digit_classifier=classifier)  # fmt: skip
    print(format_table(res))
    assert res["fd_digits"] < 0.01 * noise["fd_digits"]
    assert res["precision_digits"] > 0.8 and res["recall_digits"] > 0.8
    assert res["classes_covered"] == 10
    assert res["coverage_min"] > 0.08 and res["coverage_kl"] < 0.01
    assert res["confident"] > 0.9
    assert sum(res[f"coverage/{i}"] for i in range(10)) == pytest.approx(1.0)
    table = format_table(res)
    assert "fd_digits" in table and "coverage (0..9)" in table
    assert len(list((cache / "real-stats").glob("*.npz"))) == 1


def test_mode_count_on_real_stacked_digits(classifier):
    images, _ = stacked_mnist(26_000, seed=2)
    found = count_modes(images, classifier)
    print(f"real Stacked MNIST: {found['modes']} modes, KL {found['kl']:.4f}")
    assert found["modes"] >= 990 and found["kl"] < 0.1
    assert found["histogram"].sum() == 26_000
    # A generator stuck on one R digit covers at most 100 modes.
    collapsed = images[:5000].copy()
    collapsed[..., 0] = images[0, ..., 0]
    stuck = count_modes(collapsed, classifier)
    assert stuck["modes"] <= 100 and stuck["kl"] > 2.0


def test_evaluate_modes_from_a_generator(classifier):
    images, _ = stacked_mnist(3000, seed=3, resolution=32)
    x = torch.from_numpy(images)
    gen = lambda start, count: to_model_images(x[start : start + count])  # noqa: E731
    res = evaluate(gen, None, ["modes", "coverage"], n=3000, digit_classifier=classifier)
    direct = count_modes(images, classifier)
    assert res["modes"] == direct["modes"] and res["modes_kl"] == pytest.approx(direct["kl"])
    assert res["classes_covered"] == 10
