"""Estimators of the Fréchet distance at a fixed sample size, beside its noise floor.

FD is biased upwards by the finite sample, by an amount that shrinks with the sample size, so a
model's FD is only comparable with a floor measured at the same size: the FD between real
training subsets and the held-out set. These take features (N, D) and return lists of
subset FDs or a standard error; pure numpy. ``ratio_sem`` gives the standard error of any
figure over its floor (FD/floor, SWD/floor), the headline that ranks models.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from diffusion_core.evaluation.metrics import (
    frechet_distance_from_features,
    subset_statistics,
)


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


def ratio_sem(figure_sem: float | None, floor_draws: Sequence[float]) -> float | None:
    """Standard error of figure / floor, the floor being the mean of ``floor_draws``.

    Figures that are ranked against each other were measured the same way, so they share
    their floor (same real sets, size and seed): only the figure's own error separates them,
    and it is divided by the floor. That error is ``figure_sem`` when the figure averages
    independent chunks; without one (a single draw of n samples, as SWD or an FD whose
    samples hold one chunk), the spread of the floor's draws, which is the spread of one draw
    of n real examples. None when neither exists or the floor is not positive."""
    draws = np.asarray(floor_draws, dtype=np.float64).ravel()
    if draws.size == 0 or not np.isfinite(draws).all():
        raise ValueError(f"floor_draws must be a non-empty list of finite values, got {floor_draws!r}")
    floor = float(draws.mean())
    if figure_sem is None:
        figure_sem = float(draws.std(ddof=1)) if draws.size > 1 else None
    if figure_sem is None or floor <= 0:
        return None
    return float(figure_sem) / floor
