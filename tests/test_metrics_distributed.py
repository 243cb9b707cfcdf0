"""Feature gathering and evaluate() on 2 gloo processes equal the 1-process result."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dgan.metrics import evaluate, gather_features, sample_latents
from dgan.metrics.distributed import broadcast_module

METRICS = ["fd", "kid", "pr"]


class TinyFeatures:
    """A fixed random conv embedding; stands in for Inception to keep the test fast."""

    name = "tiny"
    dim = 16

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        self.weight = torch.randn(16, 1, 3, 3, generator=gen)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = torch.nn.functional.conv2d(images, self.weight).relu()
        return out.mean(dim=(2, 3))


def generate(start: int, count: int) -> torch.Tensor:
    """A fixed 'generator': each sample depends only on its global index."""
    z = sample_latents(seed=5, start=start, count=count, shape=(64,))
    return torch.tanh(z).reshape(count, 1, 8, 8)


def real_images() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(41, 1, 8, 8, generator=gen) * 2 - 1


def run_evaluate(cache_key, real):
    return evaluate(
        generate, real, METRICS, n=37, n_real=41, feature_net=TinyFeatures(),
        cache_key=cache_key, batch_size=4, kid_subsets=5, kid_subset_size=10,
    )  # fmt: skip


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)  # fmt: skip
    try:
        # Uneven counts, including a rank with no rows at all.
        rows = {0: 3, 1: 5}[rank]
        local = torch.arange(rows * 4, dtype=torch.float32).reshape(rows, 4) + 100 * rank
        uneven = gather_features(local)
        empty = gather_features(local if rank == 0 else local[:0])
        torch.manual_seed(rank)
        module = torch.nn.Linear(3, 2)
        broadcast_module(module)
        first = run_evaluate("test:tiny", real_images())
        cached = run_evaluate("test:tiny", None)  # real statistics from rank 0's cache
        torch.save(
            {"uneven": uneven, "empty": empty, "weight": module.weight.detach(),
             "first": first, "cached": cached},
            f"{out_dir}/rank{rank}.pt",
        )  # fmt: skip
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(tmp_path, monkeypatch):
    monkeypatch.setenv("DGAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    out = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]

    expected = torch.cat([
        torch.arange(12, dtype=torch.float32).reshape(3, 4),
        torch.arange(20, dtype=torch.float32).reshape(5, 4) + 100,
    ])  # fmt: skip
    for rank_out in out:
        assert torch.equal(rank_out["uneven"], expected)
        assert torch.equal(rank_out["empty"], expected[:3])
    torch.manual_seed(0)
    assert torch.equal(out[1]["weight"], torch.nn.Linear(3, 2).weight.detach())

    monkeypatch.setenv("DGAN_CACHE", str(tmp_path / "cache-single"))
    single = run_evaluate(None, real_images())
    assert set(single) == {"fd_tiny", "kid_tiny", "kid_tiny_std", "precision_tiny", "recall_tiny"}
    for rank_out in out:
        for result in (rank_out["first"], rank_out["cached"]):
            assert result.keys() == single.keys()
            for key, value in single.items():
                assert result[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
