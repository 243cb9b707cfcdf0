"""Distribution distances between two feature sets: Frechet distance, KID, precision/recall.

All functions take plain feature matrices (N, D) of any float dtype on any device and
return Python floats. They know nothing about images, ranks or caches; see
`dgan.metrics.evaluate` for the whole pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class FeatureStats:
    """First and second moments of a feature set, float64.

    mu: (D,) mean. sigma: (D, D) unbiased covariance. n: number of samples behind them.
    """

    mu: Tensor
    sigma: Tensor
    n: int


def feature_stats(features: Tensor) -> FeatureStats:
    """Mean and unbiased covariance of `features` (N, D), computed in float64.

    float64 because FID-scale covariances (2048x2048 from 50k samples) lose several
    digits in float32, and the Frechet distance is a small difference of large traces.
    """
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need features of shape (N>=2, D), got {tuple(features.shape)}")
    x = features.detach().to(torch.float64)
    mu = x.mean(dim=0)
    xc = x - mu
    sigma = xc.T @ xc / (x.shape[0] - 1)
    return FeatureStats(mu=mu, sigma=sigma, n=int(x.shape[0]))


def _sqrt_psd(a: Tensor) -> Tensor:
    """Symmetric square root of a symmetric PSD matrix; tiny negative eigenvalues
    from rounding are clamped to zero so near-singular covariances stay finite."""
    evals, evecs = torch.linalg.eigh((a + a.T) / 2)
    return (evecs * evals.clamp(min=0).sqrt()) @ evecs.T


def trace_sqrt_product(sigma1: Tensor, sigma2: Tensor) -> Tensor:
    """tr(sqrt(sigma1 @ sigma2)) for symmetric PSD matrices, as a float64 scalar.

    sigma1 @ sigma2 is not symmetric, but it is similar to the symmetric PSD matrix
    sqrt(s1) @ s2 @ sqrt(s1), so both have the same (non-negative) eigenvalues; using
    `eigvalsh` on the symmetric one avoids the complex parts and NaNs that a general
    matrix square root produces when a covariance is rank deficient (N < D).
    """
    s1 = sigma1.to(torch.float64)
    s2 = sigma2.to(torch.float64)
    root1 = _sqrt_psd(s1)
    m = root1 @ s2 @ root1
    evals = torch.linalg.eigvalsh((m + m.T) / 2)
    return evals.clamp(min=0).sqrt().sum()


def frechet_distance_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    """Frechet distance between Gaussians N(a.mu, a.sigma) and N(b.mu, b.sigma):
    |mu_a - mu_b|^2 + tr(sigma_a) + tr(sigma_b) - 2 tr(sqrt(sigma_a sigma_b))."""
    mu1, mu2 = a.mu.to(torch.float64), b.mu.to(torch.float64).to(a.mu.device)
    s1, s2 = a.sigma.to(torch.float64), b.sigma.to(torch.float64).to(a.sigma.device)
    mean_term = (mu1 - mu2).square().sum()
    value = mean_term + s1.trace() + s2.trace() - 2 * trace_sqrt_product(s1, s2)
    # The exact value is >= 0; rounding can push identical sets a hair below zero.
    return max(float(value), 0.0)


def frechet_distance(features_a: Tensor, features_b: Tensor) -> float:
    """Frechet distance between two feature sets (N_a, D) and (N_b, D)."""
    return frechet_distance_from_stats(feature_stats(features_a), feature_stats(features_b))


def kernel_inception_distance(
    features_a: Tensor,
    features_b: Tensor,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID: unbiased MMD^2 with the kernel k(x, y) = (x.y / D + 1)^3 (Binkowski et al. 2018).

    features_a: (N_a, D), features_b: (N_b, D). Each of `num_subsets` rounds draws
    m = min(subset_size, N_a, N_b) rows from each set without replacement; the result
    is the (mean, std) over rounds of the unbiased estimate. Subsets are drawn from a
    generator seeded with `seed`, so the value is reproducible. Computed in float64.
    Returns (mean, std); the mean can be slightly negative when the sets match.
    """
    a = features_a.detach().to(torch.float64)
    b = features_b.detach().to(torch.float64).to(a.device)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dims differ: {a.shape[1]} vs {b.shape[1]}")
    m = min(subset_size, a.shape[0], b.shape[0])
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    dim = a.shape[1]
    gen = torch.Generator().manual_seed(seed)
    estimates = torch.empty(num_subsets, dtype=torch.float64)
    off_diag = m * (m - 1)
    for i in range(num_subsets):
        x = a[torch.randperm(a.shape[0], generator=gen)[:m].to(a.device)]
        y = b[torch.randperm(b.shape[0], generator=gen)[:m].to(b.device)]
        k_xx = (x @ x.T / dim + 1) ** 3
        k_yy = (y @ y.T / dim + 1) ** 3
        k_xy = (x @ y.T / dim + 1) ** 3
        # Unbiased: the diagonals k(x_i, x_i) are left out of the within-set terms.
        within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum())
        estimates[i] = within / off_diag - 2 * k_xy.mean()
    std = float(estimates.std()) if num_subsets > 1 else 0.0
    return float(estimates.mean()), std


def _row_batch(n_cols: int, max_elements: int) -> int:
    return max(1, max_elements // max(1, n_cols))


def knn_radii(features: Tensor, k: int = 3, max_elements: int = 2**25) -> Tensor:
    """Distance from each row of `features` (N, D) to its k-th nearest other row, (N,).

    Computed in row blocks so at most `max_elements` distances exist at once
    (2^25 float32 = 128 MiB), which keeps 50k x 50k problems in bounded memory.
    """
    n = features.shape[0]
    if n <= k:
        raise ValueError(f"need more than k={k} samples, got {n}")
    x = features.detach().float()
    radii = torch.empty(n, dtype=torch.float32, device=x.device)
    step = _row_batch(n, max_elements)
    for lo in range(0, n, step):
        d = torch.cdist(x[lo : lo + step], x)
        # k + 1 smallest because each row's distance to itself (0) is among them.
        radii[lo : lo + step] = d.topk(k + 1, dim=1, largest=False).values[:, k]
    return radii


def _share_inside(queries: Tensor, ref: Tensor, ref_radii: Tensor, max_elements: int) -> float:
    """Share of `queries` rows that lie inside at least one ball (ref_j, ref_radii_j)."""
    q = queries.detach().float()
    r = ref.detach().float().to(q.device)
    radii = ref_radii.to(q.device)
    inside = 0
    step = _row_batch(r.shape[0], max_elements)
    for lo in range(0, q.shape[0], step):
        d = torch.cdist(q[lo : lo + step], r)
        inside += int((d <= radii[None, :]).any(dim=1).sum())
    return inside / q.shape[0]


def precision_recall(
    real: Tensor, fake: Tensor, k: int = 3, max_elements: int = 2**25
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) from features.

    real: (N_r, D), fake: (N_f, D). Each set's manifold is the union of balls around
    its samples with radius = distance to the k-th nearest neighbour in the same set.
    Precision = share of fake samples inside the real manifold; recall = share of real
    samples inside the fake manifold. Memory is bounded by `max_elements` distances.
    """
    real_radii = knn_radii(real, k, max_elements)
    fake_radii = knn_radii(fake, k, max_elements)
    precision = _share_inside(fake, real, real_radii, max_elements)
    recall = _share_inside(real, fake, fake_radii, max_elements)
    return precision, recall
