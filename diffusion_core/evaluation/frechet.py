"""The Fréchet distance between Gaussians fitted to feature sets (FID/FD, Heusel et al. 2017),
and the streamed per-shard feature statistics (`FeatureStats`) it is computed from.

Pure numpy/scipy, float64 internally; a ValueError names the offending argument, as in
``metrics``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import linalg

from diffusion_core.evaluation.metrics import as_samples, same_dim

__all__ = ["FeatureStats", "frechet_distance", "frechet_distance_from_features"]


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
