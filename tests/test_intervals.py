"""Intervals and verdicts (diffusion_core.evaluation.intervals): the fast FD and SWD agree with
the reference implementations, paired replicates share the reference and floor, and the
verdict's error rate is what it states: two runs of one model are called different in about
5% of repeats at 95%, while a real difference is found."""
import numpy as np
import pytest
from scipy import stats

from diffusion_core.data.toys import sample_toy
from diffusion_core.evaluation import frechet, intervals, metrics


def test_fd_against_equals_the_fid_reference_implementation():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((300, 6)) @ rng.standard_normal((6, 6))
    x = rng.standard_normal((200, 6)) * 1.3 + 0.2
    assert intervals.fd_against(ref)(x) == pytest.approx(frechet.frechet_distance_from_features(x, ref), rel=1e-7)


def test_sliced_wasserstein_against_equals_the_two_set_function():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((150, 2)), rng.standard_normal((120, 2)) + 0.3
    assert metrics.sliced_wasserstein_against(b, 64, seed=3)(a) == metrics.sliced_wasserstein(a, b, 64, seed=3)


def _gaussian_run(rng, shift=0.0, size=300, dim=4):
    return rng.standard_normal((size, dim)) + shift


def _replicates(samples, ref, pool, seed=0, replicates=100):
    return intervals.replicates(intervals.fd_against, samples, ref, pool, len(ref), replicates, seed)


def test_replicates_are_seeded_and_paired():
    rng = np.random.default_rng(2)
    ref, pool, samples = _gaussian_run(rng, size=200), _gaussian_run(rng), _gaussian_run(rng)
    first, again = _replicates(samples, ref, pool), _replicates(samples, ref, pool)
    np.testing.assert_array_equal(first, again)
    same = intervals.difference(1.0, first, 1.0, again, floor=0.1)
    assert same["se"] == 0.0 and not same["separated"]
    assert not np.array_equal(first, _replicates(samples, ref, pool, seed=1))
    other = _replicates(_gaussian_run(rng), ref, pool)
    np.testing.assert_array_equal(other[:, 1], first[:, 1])  # the floor's draws are shared
    with pytest.raises(ValueError, match="not paired"):
        intervals.difference(1.0, first, 1.0, _replicates(samples, ref, pool, seed=1), floor=0.1)


def test_the_floor_is_held_fixed_and_the_samples_redrawn():
    """Every replicate sits beside the same floor (the reference and the pool are not
    resampled: see replicates' docstring), while the figure's replicates vary with the samples."""
    rng = np.random.default_rng(3)
    ref, pool = _gaussian_run(rng, size=200), _gaussian_run(rng)
    reps = _replicates(_gaussian_run(rng), ref, pool)
    assert np.ptp(reps[:, 1]) == 0 and np.std(reps[:, 0]) > 0


def _called_different(rng, shift: float, level: float) -> bool:
    ref, pool, seed = _gaussian_run(rng, size=200), _gaussian_run(rng), int(rng.integers(1 << 30))
    fd_at_200 = lambda x: np.mean(metrics.subset_statistics(frechet.frechet_distance_from_features, x, ref,
                                                            200, 16, seed))  # noqa: E731
    runs = [(fd_at_200(x), _replicates(x, ref, pool, seed, 60))
            for x in (_gaussian_run(rng), _gaussian_run(rng, shift))]
    return intervals.difference(*runs[0], *runs[1], floor=fd_at_200(pool), level=level)["separated"]


def test_identical_models_are_called_different_at_most_at_the_stated_rate():
    """50 repeats of two runs of one model, everything drawn afresh each time: at 95% the
    verdict may call them different in about 5% (binomial: more than 7 of 50 has p < 0.04
    even at a true 5%)."""
    rng = np.random.default_rng(4)
    false_calls = sum(_called_different(rng, 0.0, 0.95) for _ in range(50))
    assert false_calls <= 7


def test_a_real_difference_is_found():
    rng = np.random.default_rng(5)
    assert sum(_called_different(rng, 0.35, 0.95) for _ in range(10)) >= 8


def test_swd_replicates_on_gmm8_exact_samplers():
    """Two exact samplers of gmm8 (the data's own generator) against held-out points, SWD/floor
    as the vector headline: not separated in 18 of 20 repeats or more."""
    rng = np.random.default_rng(6)
    calls = 0
    for r in range(20):
        ref, pool = sample_toy("gmm8", 300, rng), sample_toy("gmm8", 600, rng)
        runs = []
        for x in (sample_toy("gmm8", 300, rng), sample_toy("gmm8", 300, rng)):
            reps = intervals.replicates(lambda t: metrics.sliced_wasserstein_against(t, 32, r), x, ref, pool,
                                        300, 60, r)
            runs.append((metrics.sliced_wasserstein(x, ref, 32, r), reps))
        calls += intervals.difference(*runs[0], *runs[1], floor=1.0)["separated"]
    assert calls <= 2


def test_bonferroni_level_and_z():
    assert intervals.family_level(0.95, 6) == pytest.approx(1 - 0.05 / 6)
    assert intervals.z_value(0.95) == pytest.approx(1.959964, abs=1e-6)
    with pytest.raises(ValueError, match="level"):
        intervals.z_value(1.0)


def test_seed_mean_is_students_t_interval():
    values = [1.8, 2.1, 1.95]
    out = intervals.seed_mean(values)
    low, high = stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values))
    assert (out["low"], out["high"]) == pytest.approx((low, high))
    assert intervals.seed_mean([2.0])["low"] is None


def test_seed_difference_is_welchs_interval():
    a, b = [1.8, 2.1, 1.95, 2.0], [2.6, 2.4, 2.9]
    out = intervals.seed_difference(a, b)
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (out["low"], out["high"]) == pytest.approx((ci.low, ci.high))
    assert out["separated"]
    with pytest.raises(ValueError, match="two seeds"):
        intervals.seed_difference([1.0], b)


def test_bad_replicate_arguments_are_named():
    rng = np.random.default_rng(7)
    x = _gaussian_run(rng)
    with pytest.raises(ValueError, match="replicates"):
        intervals.replicates(intervals.fd_against, x, x, x, 100, 1, 0)
    with pytest.raises(ValueError, match="n must"):
        intervals.replicates(intervals.fd_against, x, x, x[:50], 100, 10, 0)
    with pytest.raises(ValueError, match="paired"):
        intervals.difference(1.0, [[1.0, 1.0], [2.0, 1.0]], 1.0, [[1.0, 1.0], [2.0, 1.0], [3.0, 1.0]], floor=1.0)


def test_ratio_interval_by_the_delta_method():
    """Independent figure and floor replicates: se² = r²(sF²/F² + sL²/L²)."""
    rng = np.random.default_rng(8)
    reps = np.column_stack([rng.normal(2.0, 0.2, 4000), rng.normal(1.0, 0.05, 4000)])
    out = intervals.ratio_interval(2.0, 1.0, reps)
    assert out["se"] == pytest.approx(2.0 * np.hypot(0.1, 0.05), rel=0.05)
    assert out["low"] < 2.0 < out["high"]


def test_the_calibration_benchmark_reports_error_rate_power_and_the_se_ratio(capsys):
    from benchmarks import verdict_calibration

    null, shifted = verdict_calibration.main(["--repeats", "6", "--shifts", "0", "0.6", "--replicates", "30"])
    assert null["called"] <= 1 / 6 and shifted["called"] == 1.0  # a large shift is found every time
    assert null["se_over_sd"] > 0.5  # a bootstrap se, not a constant
    assert shifted["se_over_sd"] > shifted["samples_only_se_over_sd"]  # the reference's noise added
    assert "| 0.6 | 6 | 1.000 |" in capsys.readouterr().out


def test_the_jackknife_variance_of_a_mean_is_the_classical_one():
    """Leave-one-out means: (n − 1)/n Σ (θ_i − θ̄)² = s²/n exactly (Efron & Tibshirani 11.5)."""
    x = np.random.default_rng(9).normal(size=50)
    leave_one_out = (x.sum() - x) / (x.size - 1)
    assert intervals.jackknife_variance(leave_one_out) == pytest.approx(x.var(ddof=1) / x.size, rel=1e-12)


def _measured(rng, shift: float, seed: int, reference=None, samples=None) -> dict:
    """FD/floor at n = 200 of a Gaussian run against a fresh (or given) reference."""
    ref = _gaussian_run(rng, size=200) if reference is None else reference
    x = _gaussian_run(rng, shift) if samples is None else samples
    pool = _gaussian_run(np.random.default_rng(99), size=600)  # the train split: fixed, like the pipeline's
    fd = intervals.fd_against(ref)
    at_n = lambda s: np.mean([fd(s[np.random.default_rng([seed, i]).permutation(len(s))[:200]])  # noqa: E731
                              for i in range(8)])
    return intervals.measure_headline("fd", intervals.fd_against, x, ref, pool, 200, at_n(x), at_n(pool), 40, seed)


def test_the_interval_covers_a_fresh_reference_as_well_as_fresh_samples():
    """60 repeats, samples and reference drawn afresh each time: the mean standard error with
    the reference jackknife is within 30% of the ratio's spread across repeats, while the
    bootstrap alone (the reference held fixed) falls short of it."""
    rng = np.random.default_rng(10)
    runs = [_measured(rng, 0.3, seed) for seed in range(60)]
    spread = np.std([r["fd_ratio"] for r in runs], ddof=1)
    with_jackknife = np.mean([r["fd_ratio_sem"] for r in runs])
    floor = lambda r: r["fd_replicates"][0][1]  # noqa: E731  (the same in every replicate)
    bootstrap_only = np.mean([intervals.ratio_interval(r["fd_ratio"] * floor(r), floor(r), r["fd_replicates"])["se"]
                              for r in runs])
    assert 0.7 < with_jackknife / spread < 1.3, (with_jackknife, spread)
    assert bootstrap_only < 0.85 * spread


def test_jackknifes_pair_runs_on_one_reference_and_refuse_mixed_measurements():
    rng = np.random.default_rng(11)
    ref = _gaussian_run(rng, size=200)
    a, b = _measured(rng, 0.0, 3, reference=ref), _measured(rng, 0.0, 3, reference=ref)
    assert a["jackknife_groups"] == 10 and np.array(a["fd_jackknife"]).shape == (10, 2)
    np.testing.assert_array_equal(np.array(a["fd_jackknife"])[:, 1], np.array(b["fd_jackknife"])[:, 1])
    args = (a["fd_ratio"], a["fd_replicates"], b["fd_ratio"], b["fd_replicates"])
    paired = intervals.difference(*args, floor=1.0, jackknife_a=a["fd_jackknife"], jackknife_b=b["fd_jackknife"])
    assert paired["se"] >= intervals.difference(*args, floor=1.0)["se"]
    with pytest.raises(ValueError, match="one run has a reference jackknife"):
        intervals.difference(*args, floor=1.0, jackknife_a=a["fd_jackknife"])
    other = _measured(rng, 0.0, 4, reference=ref)  # another seed: other groups
    with pytest.raises(ValueError, match="not paired"):
        intervals.difference(*args, floor=1.0, jackknife_a=a["fd_jackknife"], jackknife_b=other["fd_jackknife"])
    with pytest.raises(ValueError, match="jackknife groups"):
        intervals.reference_jackknife(intervals.fd_against, ref, ref[:10], ref, 5, 6, 0)


def _seed_jackknifes(ratios, pattern):
    """Each seed's jackknife rows: ratio r + pattern[g] over a floor of 1 in group g."""
    return [np.column_stack([r + np.asarray(pattern), np.ones(len(pattern))]) for r in ratios]


def test_seed_means_add_the_shared_references_noise_and_differences_pair_it():
    """The reference is one for every seed, so the seeds' spread holds none of its noise: the
    jackknife variance of the group-wise mean adds (here (G−1)/G Σ δ² = 0.09), and between two
    keys on the one reference a common δ cancels while an opposite one adds 4× its variance."""
    delta = np.tile([0.1, -0.1], 5)
    plain = intervals.seed_mean([1.0, 2.0, 3.0])
    shared = intervals.seed_mean([1.0, 2.0, 3.0], jackknifes=_seed_jackknifes([1, 2, 3], delta))
    assert shared["se"] == pytest.approx(np.sqrt(plain["se"] ** 2 + 0.09))
    # each part at its own t quantile: the seeds' 2 degrees of freedom, the jackknife's 9
    half = np.hypot(stats.t.ppf(0.975, 2) * plain["se"], stats.t.ppf(0.975, 9) * 0.3)
    assert shared["high"] - shared["estimate"] == pytest.approx(half)
    a, b = [1.0, 1.2, 1.1], [2.0, 2.3, 2.1]
    welch = intervals.seed_difference(a, b)
    same = intervals.seed_difference(a, b, jackknifes_a=_seed_jackknifes(a, delta),
                                     jackknifes_b=_seed_jackknifes(b, delta))
    opposite = intervals.seed_difference(a, b, jackknifes_a=_seed_jackknifes(a, delta),
                                         jackknifes_b=_seed_jackknifes(b, -delta))
    assert same["se"] == pytest.approx(welch["se"])
    assert opposite["se"] == pytest.approx(np.sqrt(welch["se"] ** 2 + 0.36))
    with pytest.raises(ValueError, match="measured differently"):
        intervals.seed_difference(a, b, jackknifes_a=_seed_jackknifes(a, delta))


def test_the_reference_jackknife_benchmark_sets_the_se_beside_the_spread_over_fresh_references(capsys):
    from benchmarks import reference_jackknife

    row = reference_jackknife.main(["--dims", "4", "--repeats", "6"])[0]
    assert row["spread"] > 0 and 0.3 < row["se_over_spread"] < 3  # two different measurements, same scale
    assert "| 4 | " in capsys.readouterr().out
