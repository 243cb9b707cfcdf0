import json
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch

from dgan.cli import main
from dgan.data.builtin import load_mnist
from dgan.data.shards import read_index, sha256_file
from dgan.data.sources import DataPathError, resolve_source
from dgan.data.stream import DataStream, ShardStream


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("mnist")
    assert main(["data", "make", "--builtin", "mnist", str(out), "--per-shard", "700"]) == 0
    return out


def test_make_builtin_writes_shards_and_index(mnist_dir):
    index = read_index(mnist_dir)
    assert index["total"] == 5000 and index["resolution"] == 28 and index["channels"] == 1
    assert index["labels"] == [str(d) for d in range(10)]
    assert [s["count"] for s in index["shards"]] == [700] * 7 + [100]
    first = index["shards"][0]
    assert sha256_file(mnist_dir / first["name"]) == first["sha256"]
    with tarfile.open(mnist_dir / first["name"]) as tar:
        names = tar.getnames()
    assert sorted(names[:2]) == ["000000000.cls", "000000000.png"]


def test_stream_delivers_every_real_digit_in_range(mnist_dir):
    stream = DataStream(resolve_source(str(mnist_dir)), batch_size=100, resolution=28,
                        channels=1, seed=0, rank=0, world_size=1, workers=0,
                        shuffle_buffer=500, xflip=False)
    images, labels = zip(*[next(stream) for _ in range(50)])
    images, labels = torch.cat(images), torch.cat(labels)
    assert images.dtype == torch.float32 and images.shape == (5000, 1, 28, 28)
    assert images.min() == -1 and images.max() == 1
    # one resampled epoch of this single slot = every sample once, labels balanced
    assert Counter(labels.tolist()) == {d: 500 for d in range(10)}
    ref, _ = load_mnist()
    assert np.isclose(images.mean().item(), ref.mean() / 127.5 - 1, atol=1e-4)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_exactly(mnist_dir, workers):
    def stream():
        return DataStream(resolve_source(str(mnist_dir)), batch_size=32, resolution=28,
                          channels=1, seed=3, rank=0, world_size=1, workers=workers,
                          shuffle_buffer=300, xflip=True)

    whole = stream()
    all_batches = [next(whole)[0] for _ in range(12)]
    first = stream()
    for _ in range(7):
        next(first)
    state = first.state_dict()
    resumed = stream()
    resumed.load_state_dict(json.loads(json.dumps(state)))
    rest = [next(resumed)[0] for _ in range(5)]
    for a, b in zip(all_batches[7:], rest):
        assert torch.equal(a, b)


def test_single_pass_split_covers_every_sample_once(mnist_dir):
    source = resolve_source(str(mnist_dir))
    keys = []
    for rank in range(2):
        for worker in range(2):
            s = ShardStream(source, batch_size=50, resolution=28, channels=1, rank=rank,
                            world_size=2, workers=2, resampled=False, drop_last=False)
            slot = rank * 2 + worker
            keys += [sample["__key__"] for sample, _ in s._shuffled(slot, 4, 0)]
    assert len(keys) == 5000 and len(set(keys)) == 5000


def test_too_few_shards_for_single_pass_is_a_clear_error(mnist_dir):
    with pytest.raises(ValueError, match="8 shards for 4 ranks x 3 workers"):
        ShardStream(resolve_source(str(mnist_dir)), batch_size=8, resolution=28, channels=1,
                    world_size=4, workers=3, resampled=False)


def test_bad_paths_name_the_path(tmp_path):
    with pytest.raises(DataPathError, match="/nonexistent"):
        resolve_source("/nonexistent")
    with pytest.raises(DataPathError, match=str(tmp_path)):
        resolve_source(str(tmp_path))
