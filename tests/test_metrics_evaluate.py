"""evaluate(): real data as tensor or iterable, key naming, errors, the table."""

import pytest
import torch

from dgan.metrics import evaluate, format_table, sample_latents


class TinyFeatures:
    """A fixed random conv embedding standing in for Inception."""

    name = "tiny"
    dim = 8

    def __init__(self) -> None:
        self.weight = torch.randn(8, 1, 3, 3, generator=torch.Generator().manual_seed(0))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(images, self.weight).relu().mean(dim=(2, 3))


def generate(start: int, count: int) -> torch.Tensor:
    return torch.tanh(sample_latents(3, start, count, (64,))).reshape(count, 1, 8, 8)


REAL = torch.rand(60, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1


def run(real, **kw):
    return evaluate(generate, real, ["fd", "kid", "pr"], n=50, feature_net=TinyFeatures(),
                    kid_subsets=4, kid_subset_size=20, **kw)  # fmt: skip


def test_real_as_tensor_or_iterable_of_labelled_batches_agree():
    from_tensor = run(REAL, n_real=50)
    batches = [(REAL[i : i + 16], torch.zeros(16)) for i in range(0, 60, 16)]
    from_iter = run(iter(batches), n_real=50)  # only the first 50 real images count
    assert from_tensor.keys() == from_iter.keys()
    for key in from_tensor:
        assert from_iter[key] == pytest.approx(from_tensor[key], rel=1e-6, abs=1e-9)


def test_batch_size_does_not_change_the_result():
    a, b = run(REAL, batch_size=7), run(REAL, batch_size=64)
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-9)


def test_uint8_real_images_are_scaled():
    u8 = ((REAL + 1) * 127.5).round().to(torch.uint8)
    a, b = run(REAL), run(u8)
    assert b["fd_tiny"] == pytest.approx(a["fd_tiny"], rel=0.05)


def test_keys_name_the_feature_net_and_errors_are_clear():
    res = run(REAL)
    assert set(res) == {"fd_tiny", "kid_tiny", "kid_tiny_std", "precision_tiny", "recall_tiny"}
    with pytest.raises(ValueError, match="unknown metrics"):
        evaluate(generate, REAL, ["fid"], n=10)
    class UniformClassifier:
        def probs(self, images):
            return torch.full((images.shape[0], images.shape[1], 10), 0.1)

    with pytest.raises(ValueError, match="3-channel"):
        evaluate(generate, None, ["modes"], n=10, digit_classifier=UniformClassifier())


def test_format_table():
    table = format_table({"fid": 12.345678, "kid": 0.00012, "modes": 998.0,
                          **{f"coverage/{i}": 0.1 for i in range(10)}})  # fmt: skip
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "value"]
    assert any(line.split() == ["fid", "12.3457"] for line in lines)
    assert any(line.split() == ["kid", "1.200e-04"] for line in lines)
    assert any(line.split() == ["modes", "998"] for line in lines)
    assert any(line.startswith("coverage (0..9)") for line in lines)
