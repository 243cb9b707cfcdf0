"""Frechet distance, KID, precision/recall, rank splitting, seeding and the stats cache."""

import numpy as np
import pytest
import torch

from dgan.metrics import (
    FeatureStats,
    feature_stats,
    frechet_distance,
    frechet_distance_from_stats,
    kernel_inception_distance,
    knn_radii,
    load_real_stats,
    precision_recall,
    real_stats_key,
    sample_latents,
    sample_seed,
    save_real_stats,
    split_count,
    split_range,
    to_model_images,
)


def gaussian(n: int, mean: torch.Tensor, std: torch.Tensor, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, mean.numel(), generator=gen, dtype=torch.float64) * std + mean


def test_fd_of_a_set_with_itself_is_zero():
    x = gaussian(500, torch.zeros(16), torch.ones(16), 0)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_fd_matches_closed_form_for_diagonal_gaussians():
    f64 = torch.float64
    m1, m2 = torch.tensor([0.0, 1.0, -2.0], dtype=f64), torch.tensor([0.5, 1.0, 1.0], dtype=f64)
    v1, v2 = torch.tensor([1.0, 4.0, 0.25], dtype=f64), torch.tensor([2.0, 1.0, 0.25], dtype=f64)
    a = FeatureStats(m1, torch.diag(v1), 10)
    b = FeatureStats(m2, torch.diag(v2), 10)
    closed = ((m1 - m2) ** 2).sum() + ((v1.sqrt() - v2.sqrt()) ** 2).sum()
    assert frechet_distance_from_stats(a, b) == pytest.approx(float(closed), rel=1e-10)
    # The same from samples: estimation error shrinks with N.
    xa = gaussian(200_000, m1, v1.sqrt(), 1)
    xb = gaussian(200_000, m2, v2.sqrt(), 2)
    assert frechet_distance(xa, xb) == pytest.approx(float(closed), rel=0.02)


def test_fd_matches_an_independent_formula_for_full_covariances():
    gen = torch.Generator().manual_seed(3)
    d = 6
    a1 = torch.randn(d, d, generator=gen, dtype=torch.float64)
    a2 = torch.randn(d, d, generator=gen, dtype=torch.float64)
    s1, s2 = a1 @ a1.T + 0.1 * torch.eye(d), a2 @ a2.T + 0.1 * torch.eye(d)
    mu1, mu2 = torch.randn(d, generator=gen), torch.randn(d, generator=gen)
    # Reference: eigenvalues of the non-symmetric product, via numpy.
    eig = np.linalg.eigvals(s1.numpy() @ s2.numpy())
    reference = (
        float(((mu1 - mu2) ** 2).sum()) + float(s1.trace() + s2.trace())
        - 2 * np.sqrt(eig.real.clip(min=0)).sum()
    )
    got = frechet_distance_from_stats(
        FeatureStats(mu1.double(), s1, 2), FeatureStats(mu2.double(), s2, 2)
    )
    assert got == pytest.approx(reference, rel=1e-8)


def test_fd_is_finite_with_singular_covariances():
    # N < D: both covariances are rank deficient, as with few samples of 2048-d features.
    x = gaussian(20, torch.zeros(64), torch.ones(64), 4)
    y = gaussian(20, torch.ones(64), torch.ones(64), 5)
    value = frechet_distance(x, y)
    assert np.isfinite(value) and value > 0
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_kid_identical_vs_shifted():
    x = gaussian(2000, torch.zeros(32), torch.ones(32), 6)
    y = gaussian(2000, torch.zeros(32), torch.ones(32), 7)
    shifted = y + 1.0
    same_mean, same_std = kernel_inception_distance(x, y, num_subsets=20, subset_size=500)
    far_mean, _ = kernel_inception_distance(x, shifted, num_subsets=20, subset_size=500)
    assert abs(same_mean) < 3 * same_std + 1e-3
    assert far_mean > 50 * max(same_std, 1e-3)


def test_kid_is_unbiased():
    # Many tiny subsets of two samples from one distribution: an unbiased estimator
    # averages to 0, the biased (V-statistic) one to a clearly positive value.
    x = gaussian(4000, torch.zeros(8), torch.ones(8), 8)
    y = gaussian(4000, torch.zeros(8), torch.ones(8), 9)
    mean, std = kernel_inception_distance(x, y, num_subsets=400, subset_size=10)
    assert abs(mean) < 4 * std / np.sqrt(400)


def test_kid_reproducible_by_seed():
    x = gaussian(300, torch.zeros(4), torch.ones(4), 10)
    y = gaussian(300, torch.ones(4), torch.ones(4), 11)
    assert kernel_inception_distance(x, y, 5, 100, seed=1) == kernel_inception_distance(
        x, y, 5, 100, seed=1
    )


def test_precision_recall_self_and_disjoint():
    x = gaussian(600, torch.zeros(8), torch.ones(8), 12)
    p, r = precision_recall(x, x.clone())
    assert p == pytest.approx(1.0) and r == pytest.approx(1.0)
    far = gaussian(600, torch.full((8,), 100.0), torch.ones(8), 13)
    p, r = precision_recall(x, far)
    assert p == 0.0 and r == 0.0


def test_precision_recall_partial_overlap_and_batching():
    real = gaussian(800, torch.zeros(4), torch.ones(4), 14)
    # Half the fakes on the real manifold, half far away: precision ~0.5.
    fake = torch.cat([gaussian(400, torch.zeros(4), torch.ones(4), 15),
                      gaussian(400, torch.full((4,), 50.0), torch.ones(4), 16)])
    p, r = precision_recall(real, fake)
    assert 0.4 < p < 0.55
    # Tiny row blocks must give exactly the same answer as one block.
    assert precision_recall(real, fake, max_elements=1000) == (p, r)
    assert torch.allclose(knn_radii(real, 3, max_elements=999), knn_radii(real, 3), atol=1e-5)


def test_split_range_tiles_and_is_balanced():
    for n, world in [(10, 3), (2, 4), (26_000, 7), (0, 2)]:
        parts = [split_range(n, r, world) for r in range(world)]
        covered = [i for start, count in parts for i in range(start, start + count)]
        assert covered == list(range(n))
        counts = [split_count(n, r, world) for r in range(world)]
        assert max(counts) - min(counts) <= 1


def test_latents_depend_only_on_global_index():
    whole = sample_latents(7, 0, 10, (3,))
    pieces = torch.cat([sample_latents(7, 0, 4, (3,)), sample_latents(7, 4, 6, (3,))])
    assert torch.equal(whole, pieces)
    assert not torch.equal(sample_latents(8, 0, 10, (3,)), whole)
    assert len({sample_seed(0, i) for i in range(1000)}) == 1000


def test_stats_cache_roundtrip(tmp_path, monkeypatch):
    monkeypatch.setenv("DGAN_CACHE", str(tmp_path))
    shard = tmp_path / "shard-000.tar"
    shard.write_bytes(b"x" * 10)
    key = real_stats_key([shard], "netA", 32, 100)
    assert key == real_stats_key([str(shard)], "netA", 32, 100)
    assert key != real_stats_key([shard], "netB", 32, 100)
    assert key != real_stats_key([shard], "netA", 64, 100)
    assert key != real_stats_key([shard], "netA", 32, 200)
    assert key != real_stats_key("builtin:mnist", "netA", 32, 100)
    shard.write_bytes(b"x" * 11)  # a rewritten shard of another size is another dataset
    assert key != real_stats_key([shard], "netA", 32, 100)

    feats = gaussian(50, torch.zeros(5), torch.ones(5), 17).float()
    assert load_real_stats(key) is None
    save_real_stats(key, feature_stats(feats))
    assert load_real_stats(key, need_features=True) is None  # stored without features
    path = save_real_stats(key, feature_stats(feats), feats)
    stats, loaded = load_real_stats(key, need_features=True)
    assert torch.equal(loaded, feats) and stats.n == 50
    assert torch.allclose(stats.sigma, feature_stats(feats).sigma)
    assert path.parent == tmp_path / "real-stats"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left


def test_to_model_images_conventions():
    u8 = torch.tensor([0, 255], dtype=torch.uint8).reshape(1, 1, 1, 2).expand(2, 4, 4, 2)
    x = to_model_images(u8[..., :1].contiguous())  # (N, H, W, 1) channels-last
    assert x.shape == (2, 1, 4, 4) and x.min() == -1.0
    assert to_model_images(torch.zeros(3, 28, 28, dtype=torch.uint8)).shape == (3, 1, 28, 28)
    assert to_model_images(torch.zeros(3, 3, 8, 8)).dtype == torch.float32
