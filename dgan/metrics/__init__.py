"""Evaluation metrics for GANs: FID/KID/precision-recall with a pluggable feature net,
an offline digit classifier (digit FD, class coverage, confident share) and the
Stacked MNIST mode count. See docs/metrics.md."""

from dgan.metrics.cache import cache_dir, load_real_stats, real_stats_key, save_real_stats
from dgan.metrics.core import (
    FeatureStats,
    feature_stats,
    frechet_distance,
    frechet_distance_from_stats,
    kernel_inception_distance,
    knn_radii,
    precision_recall,
)
from dgan.metrics.digits import (
    DigitClassifier,
    DigitFeatures,
    class_histogram,
    coverage_metrics,
    kl_from_uniform,
)
from dgan.metrics.distributed import (
    gather_features,
    rank_and_world,
    sample_latents,
    sample_seed,
    split_count,
    split_range,
)
from dgan.metrics.evaluate import METRICS, evaluate, format_table
from dgan.metrics.feature_net import FeatureNet, to_model_images
from dgan.metrics.inception import (
    WEIGHTS_ENV,
    WEIGHTS_FILE,
    InceptionV3FID,
    InceptionWeightsMissing,
    inception_available,
)
from dgan.data.builtin import stacked_mnist
from dgan.metrics.stacked import count_modes, modes_from_digits

__all__ = [
    "METRICS",
    "WEIGHTS_ENV",
    "WEIGHTS_FILE",
    "DigitClassifier",
    "DigitFeatures",
    "FeatureNet",
    "FeatureStats",
    "InceptionV3FID",
    "InceptionWeightsMissing",
    "cache_dir",
    "class_histogram",
    "count_modes",
    "coverage_metrics",
    "evaluate",
    "feature_stats",
    "format_table",
    "frechet_distance",
    "frechet_distance_from_stats",
    "gather_features",
    "inception_available",
    "kernel_inception_distance",
    "kl_from_uniform",
    "knn_radii",
    "load_real_stats",
    "modes_from_digits",
    "precision_recall",
    "rank_and_world",
    "real_stats_key",
    "sample_latents",
    "sample_seed",
    "save_real_stats",
    "split_count",
    "split_range",
    "stacked_mnist",
    "to_model_images",
]
