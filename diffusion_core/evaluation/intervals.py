"""Intervals for headline figures, and decisions between runs at a stated confidence.

A figure over its floor (FD/floor for images, SWD/floor for vectors) is a statistic of three
finite sets: the samples, the reference (held-out) split, and the real pool the floor draws
from. ``replicates`` redraws the samples with replacement (the bootstrap, Efron 1979),
recomputing the figure as the point estimate does on every replicate, against the same
reference and beside the same floor: two runs measured the same way (same reference, pool,
seed) share them, so replicate-wise differences hold each run's own sample noise and nothing
they share (a paired comparison). Why the reference and the pool are not resampled:
``replicates``. The reference's own noise enters by a delete-a-group jackknife over it
(``reference_jackknife``), which holds no duplicate: its variance adds to the bootstrap's,
and for a paired difference the jackknife of the difference does, with the same groups.

Intervals are normal bootstrap intervals, estimate ± z·SD (Efron & Tibshirani 1993, ch. 13),
the SD from the replicates: stable at the tail levels a multiple-comparison correction asks
for, where a percentile interval would need many more replicates. Several comparisons are corrected by
Bonferroni's rule (each at 1 − α/m keeps the family's error rate at α). Between training
seeds, a key's mean gets Student's t interval and two keys' means Welch's.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from scipy import stats

from diffusion_core.evaluation.metrics import as_samples, same_dim

__all__ = ["LEVEL", "fd_against", "replicates", "reference_jackknife", "jackknife_variance", "measure_headline",
           "z_value", "family_level", "ratio_interval", "difference", "seed_mean", "seed_difference"]

LEVEL = 0.95  # the family-wise confidence of every verdict unless the caller says otherwise
SUBSETS = 8  # n-subsets averaged per replicate set, as the point estimate averages many
FLOOR_STREAM = 2**32 - 1  # the random stream of the floor's subsets: one no replicate uses
JACKKNIFE_STREAM = 2**32 - 2  # the reference's split into groups, and the samples' subsets in the jackknife
JACKKNIFE_GROUPS = 10  # reference groups left out in turn: 9 degrees of freedom for its variance

Against = Callable[[np.ndarray], Callable[[np.ndarray], float]]


def fd_against(reference: np.ndarray) -> Callable[[np.ndarray], float]:
    """FD of feature sets against a fixed reference, whose Gaussian fit is factored once.

    d² = ‖μ − μ_r‖² + Tr Σ + Tr Σ_r − 2 Tr (Σ_r^½ Σ Σ_r^½)^½: the trace of the matrix square
    root is the sum of the square roots of the eigenvalues of the symmetric PSD matrix
    Σ_r^½ Σ Σ_r^½, so one ``eigvalsh`` replaces ``sqrtm`` (the FID reference implementation,
    ``frechet.frechet_distance``, which it equals to rounding; tested)."""
    reference = as_samples(reference, "reference")
    mu_r, cov_r = reference.mean(axis=0), np.cov(reference, rowvar=False)
    values, vectors = np.linalg.eigh(cov_r)
    root = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
    trace_r = float(np.trace(cov_r))

    def fd(features: np.ndarray) -> float:
        mu, cov = features.mean(axis=0), np.cov(features, rowvar=False)
        eig = np.linalg.eigvalsh(root @ cov @ root)
        cross = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
        return float(np.sum((mu - mu_r) ** 2) + np.trace(cov) + trace_r - 2.0 * cross)

    return fd


def _mean_over_subsets(statistic, pool: np.ndarray, n: int, rng: np.random.Generator) -> float:
    """The statistic averaged over SUBSETS random n-subsets of the pool (the pool itself when
    it holds exactly n)."""
    if len(pool) == n:
        return float(statistic(pool))
    return float(np.mean([statistic(pool[rng.permutation(len(pool))[:n]]) for _ in range(SUBSETS)]))


def replicates(against: Against, samples, reference, pool, n: int, count: int, seed: int) -> np.ndarray:
    """Bootstrap replicates of (figure, floor), shape (count, 2): in replicate b the samples are
    resampled from (seed, b) and the figure computed as the mean over n-subsets against the
    reference; the floor, computed once from the pool the same way, is the same in every
    replicate of every run measured alike. ``against(reference)`` returns the statistic of a
    set against the reference.

    The reference and the pool are not resampled: FD between real sets is almost all
    finite-sample bias, and duplicates from resampling with replacement inflate it (digits,
    2026-12-07: floor replicates 37% above the floor, spread 1.4 against 0.24 with them held
    fixed, docs/results.md). Runs compared share both; the reference's noise is
    ``reference_jackknife``'s."""
    samples, reference, pool = (as_samples(x, name) for x, name in
                                ((samples, "samples"), (reference, "reference"), (pool, "pool")))
    same_dim(samples, reference, "samples", "reference")
    same_dim(pool, reference, "pool", "reference")
    if int(count) < 2:
        raise ValueError(f"replicates must be >= 2, got {count}")
    if not 2 <= n <= min(len(samples), len(pool)):
        raise ValueError(f"n must lie in [2, min(samples, pool) = {min(len(samples), len(pool))}], got {n}")
    statistic = against(reference)
    out = np.empty((int(count), 2))
    out[:, 1] = _mean_over_subsets(statistic, pool, n, np.random.default_rng([int(seed), FLOOR_STREAM]))
    for b in range(int(count)):
        rng = np.random.default_rng([int(seed), b])
        out[b, 0] = _mean_over_subsets(statistic, samples[rng.integers(0, len(samples), len(samples))], n, rng)
    return out


def reference_jackknife(against: Against, samples, reference, pool, n: int, groups: int, seed: int) -> np.ndarray:
    """Delete-a-group jackknife over the reference (Quenouille 1956; grouped: Shao & Tu 1995,
    sec. 5.2), shape (groups, 2): the reference's rows split into ``groups`` equal parts by a
    permutation from ``seed``, and row g holds (figure, floor) against the reference without
    part g, each the mean over n-subsets as the point estimate, with the same subsets in every
    row so that only the reference changes. No row holds a duplicate (unlike a bootstrap of
    the reference), and runs measured alike leave out the same parts: paired."""
    samples, reference, pool = (as_samples(x, name) for x, name in
                                ((samples, "samples"), (reference, "reference"), (pool, "pool")))
    if not 2 <= int(groups) <= len(reference) // 2:
        raise ValueError(f"jackknife groups must lie in [2, reference size / 2 = {len(reference) // 2}], got {groups}")
    parts = np.array_split(np.random.default_rng([int(seed), JACKKNIFE_STREAM]).permutation(len(reference)), groups)
    out = np.empty((int(groups), 2))
    for g, part in enumerate(parts):
        statistic = against(np.delete(reference, part, axis=0))
        out[g, 0] = _mean_over_subsets(statistic, samples, n, np.random.default_rng([int(seed), JACKKNIFE_STREAM]))
        out[g, 1] = _mean_over_subsets(statistic, pool, n, np.random.default_rng([int(seed), FLOOR_STREAM]))
    return out


def jackknife_variance(values) -> float:
    """The jackknife's variance of a statistic from its leave-one-group-out values θ_g:
    (G − 1)/G · Σ (θ_g − θ̄)² (Efron & Tibshirani 1993, eq. 11.5)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size < 2 or not np.isfinite(v).all():
        raise ValueError(f"jackknife: expected at least two finite values, got shape {v.shape}")
    return float((v.size - 1) / v.size * np.sum((v - v.mean()) ** 2))


def measure_headline(name: str, against: Against, samples, reference, pool, n: int, figure: float, floor: float,
                     count: int, seed: int, groups: int = JACKKNIFE_GROUPS) -> dict:
    """``headline_record`` of a figure and its floor, both measured against ``reference`` with
    n-subsets: the bootstrap over the samples (``replicates``) and the jackknife over the
    reference (``reference_jackknife``) behind its interval."""
    reps = replicates(against, samples, reference, pool, n, count, seed)
    jackknife = reference_jackknife(against, samples, reference, pool, n, groups, seed)
    return headline_record(name, figure, floor, reps, seed, jackknife=jackknife)


def z_value(level: float) -> float:
    """The two-sided standard normal quantile of a confidence level (1.96 at 0.95)."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    return float(stats.norm.ppf(0.5 + level / 2))


def family_level(level: float, comparisons: int) -> float:
    """Bonferroni: the level of each of ``comparisons`` intervals that keeps the family's
    confidence at ``level``."""
    return 1.0 - (1.0 - level) / max(1, int(comparisons))


def _as_replicates(reps, name: str) -> np.ndarray:
    reps = np.asarray(reps, dtype=np.float64)
    if reps.ndim != 2 or reps.shape[1] != 2 or reps.shape[0] < 2 or not np.isfinite(reps).all():
        raise ValueError(f"{name}: expected at least two finite (figure, floor) replicates, got shape {reps.shape}")
    return reps


def _jackknife(values, name: str, groups: int | None = None) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != 2 or values.shape[0] < 2 or not np.isfinite(values).all() \
            or (groups is not None and values.shape[0] != groups):
        raise ValueError(f"{name}: expected (figure, floor) rows, one per reference group, got shape {values.shape}")
    return values


def ratio_interval(figure: float, floor: float, reps, level: float = LEVEL, jackknife=None) -> dict:
    """figure/floor ± z·se. The samples' part of se by the delta method from the bootstrap
    replicates' covariance of (figure, floor): var(F/L) ≈ (F/L)² (var F/F² + var L/L² −
    2 cov(F, L)/(F L)), their spreads, not their centres, being used (resampling with
    replacement shifts both statistics' finite-sample bias). The reference's part, given
    ``jackknife`` rows, is the jackknife variance of F_g/L_g; the two parts add."""
    reps = _as_replicates(reps, "replicates")
    if not floor > 0:
        raise ValueError(f"floor must be positive, got {floor}")
    ratio = figure / floor
    cov = np.cov(reps, rowvar=False)
    rel = cov[0, 0] / figure**2 + cov[1, 1] / floor**2 - 2 * cov[0, 1] / (figure * floor) if figure else 0.0
    se = abs(ratio) * math.sqrt(max(rel, 0.0)) if figure else math.sqrt(cov[0, 0]) / floor
    if jackknife is not None:
        jack = _jackknife(jackknife, "jackknife")
        se = math.sqrt(se**2 + jackknife_variance(jack[:, 0] / jack[:, 1]))
    half = z_value(level) * se
    return {"estimate": ratio, "se": se, "low": ratio - half, "high": ratio + half, "level": level}


def difference(figure_a: float, reps_a, figure_b: float, reps_b, floor: float, level: float = LEVEL,
               jackknife_a=None, jackknife_b=None) -> dict:
    """The interval of (figure_a − figure_b)/floor from paired replicates: both runs' replicate
    b drew the same reference and floor (checked), so the noise they share cancels in
    figure_a,b − figure_b,b. The sign does not depend on the floor, so the spread is that of
    the raw difference over the floor's estimate. With both runs' reference jackknifes (the
    same groups left out: checked by their floors), the jackknife variance of the group-wise
    difference adds. ``separated`` when the interval excludes zero."""
    a, b = _as_replicates(reps_a, "replicates a"), _as_replicates(reps_b, "replicates b")
    if a.shape != b.shape or not np.allclose(a[:, 1], b[:, 1], rtol=1e-9, atol=0.0):
        raise ValueError("replicates are not paired: different counts, or other reference and floor draws "
                         "(measured with another reference, pool or bootstrap seed)")
    if not floor > 0:
        raise ValueError(f"floor must be positive, got {floor}")
    diff, var = (figure_a - figure_b) / floor, float(np.var(a[:, 0] - b[:, 0], ddof=1)) / floor**2
    if (jackknife_a is None) != (jackknife_b is None):
        raise ValueError("one run has a reference jackknife and the other none: measured differently")
    if jackknife_a is not None:
        ja, jb = _jackknife(jackknife_a, "jackknife a"), _jackknife(jackknife_b, "jackknife b")
        if ja.shape != jb.shape or not np.allclose(ja[:, 1], jb[:, 1], rtol=1e-9, atol=0.0):
            raise ValueError("reference jackknifes are not paired: other groups or another reference")
        var += jackknife_variance((ja[:, 0] - jb[:, 0]) / floor)
    se = math.sqrt(var)
    half = z_value(level) * se
    return {"estimate": diff, "se": se, "low": diff - half, "high": diff + half, "level": level,
            "separated": bool(diff - half > 0 or diff + half < 0)}


def _reference_part(jackknifes: Sequence | None, combine, as_ratio: bool) -> tuple[float, float]:
    """(standard error, its t quantile's degrees of freedom) of the reference's noise in
    ``combine`` of the seeds' jackknife rows, group by group (the rows share the groups: one
    reference); (0, inf) without rows. ``as_ratio``: each row's figure over its own floor (a
    key's FD/floor, whose scale moves with the floor); else over the floors' mean (a
    difference, whose sign the floor cannot change, as ``difference`` reads it)."""
    if jackknifes is None:
        return 0.0, math.inf
    rows = [_jackknife(j, "jackknife") for j in jackknifes]
    if any(r.shape != rows[0].shape or not np.allclose(r[:, 1], rows[0][:, 1], rtol=1e-9, atol=0.0) for r in rows):
        raise ValueError("the seeds' reference jackknifes are not paired: other groups or another reference")
    scaled = [r[:, 0] / (r[:, 1] if as_ratio else r[:, 1].mean()) for r in rows]
    return math.sqrt(jackknife_variance(combine(np.stack(scaled)))), float(len(rows[0]) - 1)


def _half_width(parts: list[tuple[float, float]], level: float) -> float:
    """Independent parts (se, degrees of freedom), each at its own t quantile, added in
    quadrature: the seeds' few degrees of freedom do not widen the jackknife's part."""
    q = 0.5 + level / 2
    return math.sqrt(sum((float(stats.t.ppf(q, df)) * se) ** 2 for se, df in parts if se > 0))


def seed_mean(values: Sequence[float], level: float = LEVEL, jackknifes: Sequence | None = None) -> dict:
    """A key's figure over its training seeds: the mean with Student's t interval from the
    between-seed spread (which holds each seed's sample noise too). The reference is one for
    every seed, so its noise is not in that spread: given the seeds' reference ``jackknifes``,
    the jackknife part of the group-wise seed mean adds (``_half_width``). No interval from
    one seed."""
    v = np.asarray(values, dtype=np.float64)
    out = {"estimate": float(v.mean()), "seeds": int(v.size), "level": level}
    if v.size < 2:
        return {**out, "se": None, "low": None, "high": None}
    parts = [(float(v.std(ddof=1) / math.sqrt(v.size)), float(v.size - 1)),
             _reference_part(jackknifes, lambda r: r.mean(axis=0), as_ratio=True)]
    half = _half_width(parts, level)
    return {**out, "se": math.hypot(*(se for se, _ in parts)), "low": out["estimate"] - half,
            "high": out["estimate"] + half}


def seed_difference(values_a: Sequence[float], values_b: Sequence[float], level: float = LEVEL,
                    jackknifes_a: Sequence | None = None, jackknifes_b: Sequence | None = None) -> dict:
    """Welch's interval of mean(a) − mean(b) over training seeds (Welch–Satterthwaite degrees
    of freedom); with both keys' reference jackknifes, the jackknife part of the group-wise
    difference of the seed means adds (paired on the one reference). ``separated`` when it
    excludes zero. Needs two seeds of each."""
    a, b = np.asarray(values_a, dtype=np.float64), np.asarray(values_b, dtype=np.float64)
    if a.size < 2 or b.size < 2:
        raise ValueError(f"Welch's interval needs two seeds of each, got {a.size} and {b.size}")
    if (jackknifes_a is None) != (jackknifes_b is None):
        raise ValueError("one key has reference jackknifes and the other none: measured differently")
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1)) if va + vb > 0 else float(a.size + b.size - 2)
    reference = (0.0, math.inf) if jackknifes_a is None else _reference_part(
        [*jackknifes_a, *jackknifes_b], lambda r: r[:a.size].mean(axis=0) - r[a.size:].mean(axis=0), as_ratio=False)
    parts = [(math.sqrt(va + vb), float(df)), reference]
    half = _half_width(parts, level)
    diff = float(a.mean() - b.mean())
    return {"estimate": diff, "se": math.hypot(*(se for se, _ in parts)), "low": diff - half, "high": diff + half,
            "level": level, "df": float(df), "separated": bool(diff - half > 0 or diff + half < 0)}


def headline_record(name: str, figure: float, floor: float, reps, seed: int, level: float = LEVEL,
                    jackknife=None) -> dict:
    """The metrics of a figure over its floor: ``<name>_ratio`` with its standard error and
    interval at ``level``, ``<name>_within_floor`` (the interval reaches 1: the figure cannot be
    told from real data's, like compared with like), the bootstrap replicates and the
    reference jackknife (pairs of figure and floor, for paired differences between runs) and
    how they were drawn."""
    ci = ratio_interval(figure, floor, reps, level, jackknife)
    method = "bootstrap over the samples" + (", jackknife over the reference" if jackknife is not None else "")
    record = {f"{name}_ratio": ci["estimate"], f"{name}_ratio_sem": ci["se"], f"{name}_ratio_low": ci["low"],
              f"{name}_ratio_high": ci["high"], f"{name}_within_floor": bool(ci["low"] <= 1.0),
              f"{name}_replicates": np.round(np.asarray(reps), 10).tolist(),
              "interval_level": level, "bootstrap_replicates": int(len(reps)), "bootstrap_seed": int(seed),
              "jackknife_groups": 0, "interval_method": f"{method} (normal interval, delta method)"}
    if jackknife is not None:
        record.update({f"{name}_jackknife": np.round(np.asarray(jackknife), 10).tolist(),
                       "jackknife_groups": int(len(jackknife))})
    return record
