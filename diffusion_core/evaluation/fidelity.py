"""Sample-fidelity statistics on feature arrays: KID, precision/recall, memorization, and the
Fréchet distance of merged per-shard statistics. KID and precision/recall come with their
floors: the same statistic between real training data and the held-out set, at equal sizes.

Pure numpy/scipy in float64, like ``metrics``; the arrays usually come from a feature
extractor (the in-domain classifier or Inception-v3), one (N, D) row per sample. Statistics
are streamed per shard (``frechet.FeatureStats``) and merged, so an evaluation never needs
every feature on one worker; the pairwise statistics work on a bounded subset.
"""
from __future__ import annotations

from functools import reduce
from typing import Iterable

import numpy as np

from diffusion_core.evaluation.frechet import FeatureStats, frechet_distance
from diffusion_core.evaluation.metrics import as_samples, same_dim, sq_dists

Z95 = 1.959963984540054  # the two-sided 95% normal quantile

__all__ = [
    "merge_stats",
    "frechet_distance_from_stats",
    "kernel_inception_distance",
    "kid_with_floor",
    "precision_recall",
    "precision_recall_with_floor",
    "nearest_neighbour_distances",
    "memorization",
]


# --------------------------------------------------------------------------- Fréchet distance


def merge_stats(stats: Iterable[FeatureStats]) -> FeatureStats:
    """Exact merge of per-shard statistics (Chan et al. 1979), in the order given."""
    stats = list(stats)
    if not stats:
        raise ValueError("stats is empty: no shard statistics to merge")
    return reduce(FeatureStats.merge, stats)


def frechet_distance_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    """Fréchet distance (FID/FD, Heusel et al. 2017) between two merged feature statistics."""
    if a.dim != b.dim:
        raise ValueError(f"feature dims differ: a has {a.dim}, b has {b.dim}")
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)


# --------------------------------------------------------------------------- KID


def _poly_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with the cubic polynomial kernel k(a, b) = (aᵀb / d + 1)³."""
    d, m = x.shape[1], x.shape[0]
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    off_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    off_y = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(off_x + off_y - 2.0 * kxy.mean())


def _kid_values(real: np.ndarray, fake: np.ndarray, subsets: int, m: int, seed: int) -> list[float]:
    """Unbiased polynomial MMD² of ``subsets`` seeded pairs of m-subsets (without replacement)."""
    rng = np.random.default_rng(seed)
    return [_poly_mmd2_unbiased(real[rng.choice(real.shape[0], m, replace=False)],
                                fake[rng.choice(fake.shape[0], m, replace=False)])
            for _ in range(int(subsets))]


def _kid_sizes(subsets: int, subset_size: int, *sets: np.ndarray) -> tuple[int, int]:
    """The subset count and size of KID over ``sets``: the size is capped by the smallest set;
    one subset when every set is exactly that size (each subset would be the whole set)."""
    if int(subsets) < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    m = min(int(subset_size), *(x.shape[0] for x in sets))
    if m < 2:
        raise ValueError(f"subset_size must be >= 2, got {subset_size}")
    return (1 if all(x.shape[0] == m for x in sets) else int(subsets)), m


def kernel_inception_distance(real, fake, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> dict:
    """Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD² with the kernel
    (xᵀy/d + 1)³, averaged over ``subsets`` random subsets of ``subset_size`` from each set
    (drawn without replacement, seeded; one subset when both sets are that small). Returns
    ``kid`` (mean), ``kid_std`` and the sizes. Being unbiased, it is negative about half the
    time for equal distributions: read it beside ``kid_with_floor``'s floor, whose ``kid_low``
    and ``kid_high`` are kid ± 1.96·kid_std: the spread of one subset's estimate bounds that of
    their mean, so the interval is conservative."""
    real, fake = as_samples(real, "real"), as_samples(fake, "fake")
    same_dim(real, fake, "real", "fake")
    subsets, m = _kid_sizes(subsets, subset_size, real, fake)
    values = _kid_values(real, fake, subsets, m, seed)
    return {"kid": float(np.mean(values)), "kid_std": float(np.std(values)),
            "kid_subsets": int(subsets), "kid_subset_size": m}


def kid_with_floor(real, fake, train, subsets: int = 100, subset_size: int = 1000,
                   seed: int = 0) -> dict:
    """KID of ``fake`` against ``real`` (held-out) beside its floor: the same statistic, at the
    same subset size, between real ``train`` subsets and ``real``, i.e. what a model that
    samples the data exactly scores. Adds ``kid_floor`` (mean), ``kid_floor_std``,
    ``kid_floor_max`` and ``kid_within_floor``: the figure does not exceed the largest floor
    subset, so it cannot be told apart from real data."""
    real, fake = as_samples(real, "real"), as_samples(fake, "fake")
    train = as_samples(train, "train")
    same_dim(real, fake, "real", "fake")
    same_dim(real, train, "real", "train")
    m = _kid_sizes(subsets, subset_size, real, fake, train)[1]
    out = kernel_inception_distance(real, fake, subsets, m, seed)
    floors = _kid_values(real, train, _kid_sizes(subsets, m, real, train)[0], m, seed + 1)
    out.update(kid_floor=float(np.mean(floors)), kid_floor_std=float(np.std(floors)),
               kid_floor_max=float(np.max(floors)), kid_floor_subsets=len(floors),
               kid_low=out["kid"] - Z95 * out["kid_std"], kid_high=out["kid"] + Z95 * out["kid_std"])
    out["kid_within_floor"] = bool(out["kid"] <= out["kid_floor_max"])
    return out


# --------------------------------------------------------------------------- k-NN manifolds


def _kth_neighbour_radius(x: np.ndarray, k: int, chunk: int) -> np.ndarray:
    """Distance from each row of ``x`` to its k-th nearest other row."""
    sq = np.einsum("ij,ij->i", x, x)
    radii = np.empty(x.shape[0])
    for i0 in range(0, x.shape[0], chunk):
        d2 = sq_dists(x[i0:i0 + chunk], x, sq[i0:i0 + chunk], sq)
        # the k+1 smallest include the row itself (distance 0)
        radii[i0:i0 + chunk] = np.partition(d2, k, axis=1)[:, k]
    return np.sqrt(radii)


def _inside_manifold(queries: np.ndarray, support: np.ndarray, radii: np.ndarray,
                     chunk: int) -> np.ndarray:
    """For each query, whether it lies in some ball B(support_i, radii_i)."""
    sq_q, sq_s = np.einsum("ij,ij->i", queries, queries), np.einsum("ij,ij->i", support, support)
    inside = np.empty(queries.shape[0], dtype=bool)
    r2 = radii**2
    for i0 in range(0, queries.shape[0], chunk):
        d2 = sq_dists(queries[i0:i0 + chunk], support, sq_q[i0:i0 + chunk], sq_s)
        inside[i0:i0 + chunk] = (d2 <= r2[None, :]).any(axis=1)
    return inside


def _pr_against(real: np.ndarray, real_radii: np.ndarray, fake: np.ndarray, k: int,
                chunk: int) -> tuple[float, float]:
    """Precision and recall of ``fake`` against ``real`` whose k-NN radii are given."""
    fake_radii = _kth_neighbour_radius(fake, k, chunk)
    precision = _inside_manifold(fake, real, real_radii, chunk).mean()
    recall = _inside_manifold(real, fake, fake_radii, chunk).mean()
    return float(precision), float(recall)


def _check_pr_k(k, *sets: np.ndarray) -> int:
    smallest = min(x.shape[0] for x in sets)
    if int(k) < 1 or int(k) >= smallest:
        raise ValueError(f"k must be in [1, min set size = {smallest}), got {k}")
    return int(k)


def precision_recall(real, fake, k: int = 3, chunk: int = 1024) -> dict:
    """Improved precision and recall (Kynkäänniemi et al. 2019).

    Each set's manifold is the union of balls around its points with radius the distance to
    the k-th nearest neighbour in the same set. Precision: the share of fake points inside the
    real manifold; recall: the share of real points inside the fake manifold. Both depend on
    the set sizes (a larger set has smaller radii): compare sets of equal size, as
    ``precision_recall_with_floor`` does.
    """
    real, fake = as_samples(real, "real"), as_samples(fake, "fake")
    same_dim(real, fake, "real", "fake")
    k = _check_pr_k(k, real, fake)
    precision, recall = _pr_against(real, _kth_neighbour_radius(real, k, chunk), fake, k, chunk)
    return {"precision": precision, "recall": recall, "pr_k": k,
            "pr_num_real": int(real.shape[0]), "pr_num_fake": int(fake.shape[0])}


def _pr_draws(real, radii, pool, m: int, k: int, draws: int, rng, chunk: int) -> np.ndarray:
    """(precision, recall) of ``draws`` seeded m-subsets of ``pool`` (one if it holds m)."""
    draws = 1 if pool.shape[0] == m else draws
    return np.array([_pr_against(real, radii, pool[rng.permutation(pool.shape[0])[:m]], k, chunk)
                     for _ in range(draws)])


def precision_recall_with_floor(real, fake, train, k: int = 3, draws: int = 4, seed: int = 0,
                                chunk: int = 1024) -> dict:
    """Precision and recall on equal-sized sets, beside their floor.

    m is the smallest of the three sizes; ``real`` (held-out) is subsampled to m once, and
    ``draws`` seeded m-subsets of ``fake`` give the figures (their mean and spread); as many
    m-subsets of real ``train`` give the floor, what a model that samples the data exactly
    scores (below 1: k-NN manifolds of finite sets miss part of each other). A figure is
    ``within floor`` when it is not below the lowest floor draw. ``<name>_low``/``_high`` are
    the mean ± 1.96 times the spread of one draw (conservative for their mean; the reference
    subset is held fixed).
    """
    real, fake, train = (as_samples(x, name) for x, name in ((real, "real"), (fake, "fake"), (train, "train")))
    same_dim(real, fake, "real", "fake")
    same_dim(real, train, "real", "train")
    if int(draws) < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    m = min(real.shape[0], fake.shape[0], train.shape[0])
    k, rng = _check_pr_k(k, real, fake, train), np.random.default_rng(seed)
    real = real[rng.permutation(real.shape[0])[:m]]
    radii = _kth_neighbour_radius(real, k, chunk)
    figure = _pr_draws(real, radii, fake, m, k, int(draws), rng, chunk)
    floor = _pr_draws(real, radii, train, m, k, int(draws), rng, chunk)
    out = {"pr_k": k, "pr_num_real": m, "pr_num_fake": m, "pr_draws": len(figure), "pr_floor_draws": len(floor)}
    for i, name in enumerate(("precision", "recall")):
        out.update({name: float(figure[:, i].mean()), f"{name}_std": float(figure[:, i].std()),
                    f"{name}_floor": float(floor[:, i].mean()), f"{name}_floor_min": float(floor[:, i].min())})
        out[f"{name}_low"], out[f"{name}_high"] = out[name] - Z95 * out[f"{name}_std"], out[name] + Z95 * out[f"{name}_std"]
        out[f"{name}_within_floor"] = bool(out[name] >= out[f"{name}_floor_min"])
    return out


# --------------------------------------------------------------------------- memorization


def nearest_neighbour_distances(queries, support, chunk: int = 1024) -> np.ndarray:
    """Euclidean distance from each query row to its nearest row of ``support``."""
    queries, support = as_samples(queries, "queries", 1), as_samples(support, "support", 1)
    same_dim(queries, support, "queries", "support")
    sq_q, sq_s = np.einsum("ij,ij->i", queries, queries), np.einsum("ij,ij->i", support, support)
    out = np.empty(queries.shape[0])
    for i0 in range(0, queries.shape[0], chunk):
        out[i0:i0 + chunk] = sq_dists(queries[i0:i0 + chunk], support,
                                       sq_q[i0:i0 + chunk], sq_s).min(axis=1)
    return np.sqrt(out)


def memorization(samples, heldout, train, quantile: float = 0.01) -> dict:
    """Memorization check: nearest-neighbour distances to the training set from generated
    samples against those from held-out real data (a data-copying test in the spirit of
    Meehan et al. 2020). A model that copies its training data puts samples much closer to the
    training set than fresh real data lies: ``nn_ratio`` (median sample distance over median
    held-out distance) well below 1, and ``copy_fraction`` — the share of samples closer than
    the held-out distances' ``quantile`` — well above ``quantile``.
    """
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile}")
    d_samples = nearest_neighbour_distances(samples, train)
    d_heldout = nearest_neighbour_distances(heldout, train)
    threshold = float(np.quantile(d_heldout, quantile))
    median_heldout = float(np.median(d_heldout))
    return {
        "nn_sample_median": float(np.median(d_samples)),
        "nn_heldout_median": median_heldout,
        "nn_ratio": float(np.median(d_samples)) / median_heldout if median_heldout > 0 else float("inf"),
        "copy_fraction": float(np.mean(d_samples < threshold)),
        "copy_quantile": float(quantile),
        "nn_num_samples": int(d_samples.shape[0]), "nn_num_heldout": int(d_heldout.shape[0]),
    }
