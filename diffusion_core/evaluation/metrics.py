"""Sample-quality statistics: sliced Wasserstein, MMD, Fréchet distance, class coverage.

Pure numpy/scipy, float64 internally. Every function validates its inputs and raises a
ValueError that names the offending argument. Feature extraction for images lives in
``diffusion_core.features``; this module only sees arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy import linalg

__all__ = [
    "sliced_wasserstein",
    "sliced_wasserstein_against",
    "mmd_rbf",
    "median_bandwidth",
    "subset_statistics",
    "FeatureStats",
    "frechet_distance",
    "frechet_distance_from_features",
    "class_coverage",
]


# --------------------------------------------------------------------------- validation


def as_samples(x, name: str, min_n: int = 2) -> np.ndarray:
    """Return ``x`` as a finite float64 (N, D) array; 1-D input is read as N scalars."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    elif arr.ndim > 2:  # images etc.: one flattened vector per sample
        arr = arr.reshape(arr.shape[0], -1)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be an (N, D) array of samples, got shape {arr.shape}")
    if arr.shape[0] < min_n:
        raise ValueError(f"{name} needs at least {min_n} samples, got {arr.shape[0]}")
    if arr.shape[1] < 1:
        raise ValueError(f"{name} has zero feature dimensions")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def same_dim(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    """Raise if two sample sets have different feature dimensions."""
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"feature dims differ: {name_a} has {a.shape[1]}, {name_b} has {b.shape[1]}"
        )


# --------------------------------------------------------------------------- sliced W2


def _w2_squared_1d(pa: np.ndarray, pb: np.ndarray) -> np.ndarray:
    """Exact squared 1-D Wasserstein-2 between empirical columns via quantile functions.

    ``pa`` is (n, P) and ``pb`` is (m, P); returns (P,). W2² = ∫₀¹ (F⁻¹(u) − G⁻¹(u))² du,
    evaluated exactly on the merged grid of quantile breakpoints {i/n} ∪ {j/m}.
    """
    qa, qb = np.sort(pa, axis=0), np.sort(pb, axis=0)
    n, m = qa.shape[0], qb.shape[0]
    if n == m:
        return np.mean((qa - qb) ** 2, axis=0)
    edges = np.union1d(np.arange(n + 1) / n, np.arange(m + 1) / m)
    mids, widths = 0.5 * (edges[:-1] + edges[1:]), np.diff(edges)
    ia = np.minimum((mids * n).astype(np.int64), n - 1)
    ib = np.minimum((mids * m).astype(np.int64), m - 1)
    return widths @ ((qa[ia] - qb[ib]) ** 2)


def sliced_wasserstein(a, b, n_projections: int = 256, seed: int = 0) -> float:
    """Sliced Wasserstein-2 distance (Rabin et al. 2011; Bonneel et al. 2015).

    SW₂(a, b) = sqrt(E_u[W₂²(u·a, u·b)]) with u uniform on the unit sphere, estimated with
    ``n_projections`` seeded random directions. Each 1-D W₂² is exact between the two
    empirical distributions (sorted quantiles; unequal sizes use the merged quantile grid).
    """
    a = as_samples(a, "a", 1)
    return sliced_wasserstein_against(b, n_projections, seed)(a)


def sliced_wasserstein_against(reference, n_projections: int = 256, seed: int = 0):
    """``sliced_wasserstein(·, reference)`` as a function of the first set, with the
    reference's directions drawn and its projections taken once (bootstrap replicates call it
    on many sets against one reference)."""
    b = as_samples(reference, "b", 1)
    if int(n_projections) < 1:
        raise ValueError(f"n_projections must be >= 1, got {n_projections}")
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((b.shape[1], int(n_projections)))
    dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
    projected = b @ dirs

    def swd(a) -> float:
        a = as_samples(a, "a", 1)
        same_dim(a, b, "a", "b")
        w2 = _w2_squared_1d(a @ dirs, projected)
        return float(np.sqrt(max(float(np.mean(w2)), 0.0)))

    return swd


# --------------------------------------------------------------------------- MMD


def sq_dists(x: np.ndarray, y: np.ndarray, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Pairwise squared Euclidean distances ‖x_i − y_j‖², clipped at zero (in-place ops)."""
    d2 = x @ y.T
    d2 *= -2.0
    d2 += xx[:, None]
    d2 += yy[None, :]
    return np.maximum(d2, 0.0, out=d2)


def median_bandwidth(x, max_points: int = 2000, seed: int = 0) -> float:
    """Median pairwise Euclidean distance (the median heuristic, Gretton et al. 2012).

    Uses a seeded subsample of at most ``max_points`` rows so the cost stays bounded.
    """
    x = as_samples(x, "x")
    if x.shape[0] > max_points:
        x = x[np.random.default_rng(seed).choice(x.shape[0], max_points, replace=False)]
    sq = np.einsum("ij,ij->i", x, x)
    d2 = sq_dists(x, x, sq, sq)
    med = float(np.sqrt(np.median(d2[np.triu_indices(x.shape[0], k=1)])))
    return med if med > 0 else 1.0


def _kernel_sum(d2: np.ndarray, gammas: np.ndarray) -> float:
    """Sum over entries of Σ_h exp(−d²/(2h²)), given gammas = 1/(2h²)."""
    tmp, total = np.empty_like(d2), 0.0
    for g in gammas:
        np.multiply(d2, -g, out=tmp)
        total += float(np.exp(tmp, out=tmp).sum())
    return total


def _self_kernel_offdiag(x: np.ndarray, sq: np.ndarray, gammas, chunk: int) -> float:
    """Σ_{i≠j} k(x_i, x_j), visiting only the upper triangle (the kernel is symmetric)."""
    n, total = x.shape[0], 0.0
    for i0 in range(0, n, chunk):
        i1 = min(i0 + chunk, n)
        d2 = sq_dists(x[i0:i1], x[i0:], sq[i0:i1], sq[i0:])
        block = d2[:, : i1 - i0]  # square block containing the diagonal
        block[np.tril_indices(i1 - i0)] = np.inf  # lower triangle + diagonal contribute 0
        total += _kernel_sum(d2, gammas)
    return 2.0 * total


def _cross_kernel(x, y, sx, sy, gammas, chunk: int) -> float:
    """Σ_{i,j} k(x_i, y_j) computed in row chunks."""
    total = 0.0
    for i0 in range(0, x.shape[0], chunk):
        i1 = min(i0 + chunk, x.shape[0])
        total += _kernel_sum(sq_dists(x[i0:i1], y, sx[i0:i1], sy), gammas)
    return total


def mmd_rbf(a, b, bandwidths: Sequence[float] | None = None, chunk: int = 1024) -> float:
    """Unbiased squared maximum mean discrepancy, MMD²_u (Gretton et al. 2012, eq. 3).

    Kernel: k(x, y) = Σ_h exp(−‖x − y‖² / (2h²)). Default bandwidths: the median pairwise
    distance of the pooled data times (0.5, 1, 2). Pairwise blocks are processed in row
    chunks of ``chunk`` so memory stays O(chunk · N). The estimate can be slightly
    negative when the two distributions are equal.
    """
    a, b = as_samples(a, "a"), as_samples(b, "b")
    same_dim(a, b, "a", "b")
    if bandwidths is None:
        med = median_bandwidth(np.concatenate([a, b]))
        bandwidths = (0.5 * med, med, 2.0 * med)
    bw = np.asarray(bandwidths, dtype=np.float64).ravel()
    if bw.size == 0 or not np.all(np.isfinite(bw)) or np.any(bw <= 0):
        raise ValueError(f"bandwidths must be positive finite numbers, got {bandwidths}")
    gammas = 1.0 / (2.0 * bw**2)
    n, m = a.shape[0], b.shape[0]
    sa, sb = np.einsum("ij,ij->i", a, a), np.einsum("ij,ij->i", b, b)
    kaa = _self_kernel_offdiag(a, sa, gammas, chunk) / (n * (n - 1))
    kbb = _self_kernel_offdiag(b, sb, gammas, chunk) / (m * (m - 1))
    kab = _cross_kernel(a, b, sa, sb, gammas, chunk) / (n * m)
    return float(kaa + kbb - 2.0 * kab)


def subset_statistics(statistic: Callable[[np.ndarray, np.ndarray], float], pool, reference, n: int,
                      draws: int, seed: int = 0, replace: bool = False) -> list[float]:
    """The statistic between `draws` random n-subsets of a pool and a real reference set.

    With a real pool (train data) these are the noise floor: a generated-vs-real value is
    only meaningful beside them, at the same sample size (finite-sample bias makes e.g. SW₂
    and FD positive even for equal distributions); their mean is what a perfect model
    scores, their range its spread. One draw is not enough (on digits, FD of 500 against 500
    spans 5 to 20 between draws). With a pool of samples their mean is the model's figure at
    size n: averaging over random subsets rather than disjoint chunks is a Rao-Blackwellised
    (U-statistic) estimate of the same expectation, with less variance (digits, four
    repeats of 2,000 samples: sd 0.13 against 0.23 in floor units). Without replacement each
    subset is an i.i.d. sample of what the pool samples; with `replace` it samples the pool
    itself, as a model that reproduced the pool exactly would.
    """
    if not callable(statistic):
        raise ValueError("statistic must be callable, e.g. sliced_wasserstein")
    pool = np.asarray(pool)
    if len(pool) < n and not replace:
        raise ValueError(f"need {n} examples in the pool for draws of {n} without replacement, "
                         f"have {len(pool)}")
    rng = np.random.default_rng(seed)
    pick = (lambda: rng.integers(0, len(pool), n)) if replace else (lambda: rng.permutation(len(pool))[:n])
    return [float(statistic(pool[pick()], reference)) for _ in range(draws)]


# --------------------------------------------------------------------------- Fréchet distance


@dataclass
class FeatureStats:
    """Streaming mean and scatter of features (Chan, Golub & LeVeque 1979 parallel update).

    ``m2`` is Σ (x − mean)(x − mean)ᵀ; ``cov`` is the unbiased covariance m2 / (n − 1), as
    ``np.cov`` gives in the FID reference implementation. ``merge`` is exact: merging chunk
    statistics equals one pass over the concatenated features up to rounding.
    """

    n: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> "FeatureStats":
        """Statistics of zero samples in ``dim`` dimensions (the identity for ``merge``)."""
        if int(dim) < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        return cls(0, np.zeros(int(dim)), np.zeros((int(dim), int(dim))))

    @classmethod
    def from_features(cls, feats) -> "FeatureStats":
        """One-pass statistics of an (N, D) feature array (N >= 1)."""
        x = as_samples(feats, "feats", 1)
        mean = x.mean(axis=0)
        centered = x - mean
        return cls(x.shape[0], mean, centered.T @ centered)

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return int(self.mean.shape[0])

    def merge(self, other: "FeatureStats") -> "FeatureStats":
        """Exact combination of two disjoint sample sets' statistics (Chan et al. 1979)."""
        if not isinstance(other, FeatureStats):
            raise ValueError(f"other must be a FeatureStats, got {type(other).__name__}")
        if other.dim != self.dim:
            raise ValueError(f"feature dims differ: self has {self.dim}, other has {other.dim}")
        n = self.n + other.n
        if n == 0:
            return FeatureStats.empty(self.dim)
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.n * other.n / n)
        return FeatureStats(n, mean, m2)

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance m2 / (n − 1)."""
        if self.n < 2:
            raise ValueError(f"FeatureStats needs at least 2 samples for a covariance, has {self.n}")
        return self.m2 / (self.n - 1)

    def save(self, path) -> None:
        """Write the statistics to an ``.npz`` file (plain arrays, no pickle)."""
        np.savez(Path(path), n=np.int64(self.n), mean=self.mean, m2=self.m2)

    @classmethod
    def load(cls, path) -> "FeatureStats":
        """Read statistics written by ``save``."""
        with np.load(Path(path), allow_pickle=False) as z:
            return cls(int(z["n"]), z["mean"].astype(np.float64), z["m2"].astype(np.float64))


def _check_gaussian(mu, cov, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate a mean vector and covariance matrix pair; return float64 copies."""
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    cov = np.atleast_2d(np.asarray(cov, dtype=np.float64))
    if mu.ndim != 1:
        raise ValueError(f"mu{name} must be a vector, got shape {mu.shape}")
    if cov.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"cov{name} must have shape {(mu.shape[0],) * 2}, got {cov.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(cov).all()):
        raise ValueError(f"mu{name}/cov{name} contain NaN or infinite values")
    return mu, cov


def frechet_distance(mu1, cov1, mu2, cov2, eps: float = 1e-6) -> float:
    """Fréchet (2-Wasserstein) distance between Gaussians, as in FID (Heusel et al. 2017).

    d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^{1/2}), with scipy.linalg.sqrtm in float64. As in
    the reference implementation, ``eps``·I is added to both covariances only when sqrtm
    returns non-finite values, and the real part of the square root is kept.
    """
    mu1, cov1 = _check_gaussian(mu1, cov1, "1")
    mu2, cov2 = _check_gaussian(mu2, cov2, "2")
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature dims differ: mu1 has {mu1.shape[0]}, mu2 has {mu2.shape[0]}")
    with np.errstate(all="ignore"):
        covmean = linalg.sqrtm(cov1 @ cov2)
        if not np.isfinite(covmean).all():
            offset = np.eye(cov1.shape[0]) * eps
            covmean = linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    value = diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(covmean)
    return float(value)


def frechet_distance_from_features(f1, f2) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets (FID/FD)."""
    f1, f2 = as_samples(f1, "f1"), as_samples(f2, "f2")
    same_dim(f1, f2, "f1", "f2")
    s1, s2 = FeatureStats.from_features(f1), FeatureStats.from_features(f2)
    return frechet_distance(s1.mean, s1.cov, s2.mean, s2.cov)


# --------------------------------------------------------------------------- class coverage


def class_coverage(pred_labels, n_classes: int) -> dict:
    """Class coverage of generated samples, judged by a classifier's predicted labels.

    Rule: a class counts as covered when its share of predictions is at least half the
    uniform share, i.e. count / N >= 0.5 / n_classes (a mode-dropping check in the spirit of
    the "number of modes" statistic of Metz et al. 2017). Returns ``coverage`` (fraction of
    covered classes), ``class_histogram`` (counts per class), ``max_class_share``,
    ``n_samples`` and ``threshold``.
    """
    if isinstance(n_classes, bool) or int(n_classes) != n_classes or n_classes < 1:
        raise ValueError(f"n_classes must be a positive integer, got {n_classes}")
    n_classes = int(n_classes)
    labels = np.asarray(pred_labels).ravel()
    if labels.size == 0:
        raise ValueError("pred_labels is empty")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.mod(labels, 1) == 0):
            raise ValueError("pred_labels must be integer class indices")
        labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(
            f"pred_labels must lie in [0, {n_classes}), got [{labels.min()}, {labels.max()}]"
        )
    counts = np.bincount(labels, minlength=n_classes)
    shares = counts / labels.size
    threshold = 0.5 / n_classes
    return {
        "coverage": float(np.mean(shares >= threshold)),
        "class_histogram": [int(c) for c in counts],
        "max_class_share": float(shares.max()),
        "n_samples": int(labels.size),
        "threshold": threshold,
    }
