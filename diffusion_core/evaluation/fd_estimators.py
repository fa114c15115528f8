"""Estimators of the Fréchet distance at a fixed sample size, beside its noise floor.

FD is biased upwards by the finite sample, by an amount that shrinks with the sample size, so a
model's FD is only comparable with a floor measured at the same size: the FD between real
training subsets and the held-out set. These take features (N, D) and return lists of
subset FDs or a standard error; pure numpy. The headline's interval (FD/floor with its
floor) is ``intervals``'s.
"""
from __future__ import annotations

import numpy as np

from diffusion_core.evaluation.frechet import frechet_distance_from_features
from diffusion_core.evaluation.metrics import subset_statistics


def fd_draws(pool: np.ndarray, test_features: np.ndarray, n: int, seed: int, draws: int | None = None,
              replace: bool = False) -> list[float]:
    """FD of random n-subsets of the pool's features against the held-out set: of train
    features, the floor; of sample features, the model's FD at the floor's size. With
    `replace` on train, a model that reproduced its training data exactly, which inherits
    that set's own sampling error (so it scores above the floor). By default
    enough draws (at least 64) that each pool member is in about 20 of them, so a larger
    pool is not read through a fixed number of subsets."""
    if draws is None:
        draws = max(64, 20 * len(pool) // n)
    return subset_statistics(frechet_distance_from_features, pool, test_features, n, draws, seed,
                             replace)


def fd_chunks_sem(fake_features: np.ndarray, test_features: np.ndarray, n: int) -> float | None:
    """Standard error of the mean FD over disjoint n-sample chunks of the samples: a bound on
    that of the random-subset mean, which averages the same estimator over orderings."""
    chunks = [frechet_distance_from_features(fake_features[i:i + n], test_features)
              for i in range(0, len(fake_features) - n + 1, n)]
    return float(np.std(chunks, ddof=1) / len(chunks) ** 0.5) if len(chunks) > 1 else None
