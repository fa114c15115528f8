"""Checks of the sample-quality statistics and the FD feature classifier against closed forms."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from diffusion_core.evaluation import frechet as F
from diffusion_core.evaluation import metrics as M
from diffusion_core.evaluation.fd_estimators import fd_chunks_sem, fd_draws
from diffusion_core.features import classifier as clf


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------- sliced W2


def test_swd_of_a_set_with_itself_is_zero():
    a = _rng().standard_normal((500, 3))
    assert M.sliced_wasserstein(a, a) == 0.0
    # the same empirical distribution at a different size (every point twice) is also 0
    assert M.sliced_wasserstein(a, np.concatenate([a, a])) == pytest.approx(0.0, abs=1e-12)


def test_swd_unequal_sizes_matches_hand_computed_quantiles():
    # F⁻¹ of {0,1} vs G⁻¹ of {0,1,2}: they differ by 1 on [1/3,1/2) and [2/3,1) → W2² = 1/2
    value = M.sliced_wasserstein(np.array([0.0, 1.0]), np.array([0.0, 1.0, 2.0]), n_projections=8)
    assert value == pytest.approx(np.sqrt(0.5), rel=1e-12)


def test_swd_mean_shift_matches_closed_form():
    # N(0,I) vs N(m,I) in d=2: SW2² = E_u[(m·u)²] = ‖m‖²/d
    rng, m = _rng(1), np.array([2.0, 1.0])
    a, b = rng.standard_normal((2000, 2)), rng.standard_normal((2000, 2)) + m
    swd2 = M.sliced_wasserstein(a, b, n_projections=2000, seed=3) ** 2
    assert swd2 == pytest.approx(m @ m / 2, rel=0.06)
    shifts = [M.sliced_wasserstein(a, b - m + s * m) for s in (0.0, 0.5, 1.0)]
    assert shifts[0] < shifts[1] < shifts[2]


# --------------------------------------------------------------------------- MMD


def _brute_mmd(a, b, bws):
    """Unbiased MMD² written out from the definition (Gretton et al. 2012, eq. 3)."""
    def k(x, y):
        d2 = ((x[:, None] - y[None]) ** 2).sum(-1)
        return sum(np.exp(-d2 / (2 * h * h)) for h in bws)
    kaa, kbb, n, m = k(a, a), k(b, b), len(a), len(b)
    return ((kaa.sum() - np.trace(kaa)) / (n * (n - 1)) + (kbb.sum() - np.trace(kbb)) / (m * (m - 1))
            - 2 * k(a, b).mean())


def test_mmd_matches_definition_with_chunking():
    rng = _rng(2)
    a, b = rng.standard_normal((130, 3)), rng.standard_normal((90, 3)) + 0.4
    bws = (0.5, 1.0, 2.0)
    expected = _brute_mmd(a, b, bws)
    for chunk in (7, 64, 1000):
        assert M.mmd_rbf(a, b, bws, chunk=chunk) == pytest.approx(expected, rel=1e-10)


def test_mmd_near_zero_for_same_distribution_and_positive_for_shift():
    rng = _rng(3)
    a, b = rng.standard_normal((1000, 2)), rng.standard_normal((1000, 2))
    same = M.mmd_rbf(a, b)
    shifted = M.mmd_rbf(a, b + np.array([0.5, 0.0]))
    assert abs(same) < 2e-3
    assert shifted > 0.02 and shifted > 10 * abs(same)


def test_subset_statistics_are_the_statistic_on_real_subsets():
    rng = _rng(4)
    a, b = rng.standard_normal((200, 2)), rng.standard_normal((100, 2))
    swd = lambda x, y: M.sliced_wasserstein(x, y, seed=5)  # noqa: E731
    floors = M.subset_statistics(swd, a, b, 100, draws=3, seed=1)
    pick = np.random.default_rng(1)
    assert floors == [swd(a[pick.permutation(200)[:100]], b) for _ in range(3)]
    assert len(M.subset_statistics(swd, a[:50], b, 100, draws=2, replace=True)) == 2
    with pytest.raises(ValueError, match="need 100 examples in the pool"):
        M.subset_statistics(swd, a[:50], b, 100, draws=2)


def test_random_subsets_estimate_the_chunk_mean_with_less_variance():
    """Random n-subsets of a sample (a U-statistic) and disjoint n-chunks estimate the same
    expected FD at size n; averaging over orderings (Rao-Blackwell) lowers the variance."""
    rng = _rng(6)
    test = rng.standard_normal((100, 16))
    fd = F.frechet_distance_from_features
    chunks, subsets = [], []
    for repeat in range(40):
        sample = rng.standard_normal((400, 16))
        chunks.append(np.mean([fd(sample[i:i + 100], test) for i in range(0, 400, 100)]))
        subsets.append(np.mean(M.subset_statistics(fd, sample, test, 100, draws=48, seed=repeat)))
    assert abs(np.mean(chunks) - np.mean(subsets)) < 2 * np.std(chunks) / 40**0.5
    assert np.var(subsets) < 0.8 * np.var(chunks)


# --------------------------------------------------------------------------- Fréchet distance


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    # Tr(Σ1 + Σ2 − 2(Σ1Σ2)^½) = Σ_i (√s1_i − √s2_i)² for commuting diagonal covariances
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert expected == pytest.approx(1 + 6.25 + 4 + 1)
    assert F.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-12)
    assert F.frechet_distance(mu1, np.diag(s1), mu1, np.diag(s1)) == pytest.approx(0.0, abs=1e-10)


def _frechet_by_eigh(f1, f2):
    """Independent FD via symmetric eigendecompositions: Tr((Σ1Σ2)^½) = Σ √eig(Σ1^½ Σ2 Σ1^½)."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    c1, c2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    w, v = np.linalg.eigh(c1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ c2 @ root1)
    tr_covmean = np.sqrt(np.clip(inner, 0, None)).sum()
    return np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * tr_covmean


def test_frechet_distance_from_features_matches_independent_computation():
    rng = _rng(5)
    f1 = rng.standard_normal((600, 16)) @ rng.standard_normal((16, 16))
    f2 = rng.standard_normal((500, 16)) @ rng.standard_normal((16, 16)) + 0.3
    assert F.frechet_distance_from_features(f1, f2) == pytest.approx(_frechet_by_eigh(f1, f2), rel=1e-6)


def test_feature_stats_merge_of_chunks_equals_single_pass(tmp_path):
    feats = _rng(6).standard_normal((1000, 12)) * 3 + 5
    whole = F.FeatureStats.from_features(feats)
    merged = F.FeatureStats.empty(12)
    for chunk in np.split(feats, [137, 602]):
        merged = merged.merge(F.FeatureStats.from_features(chunk))
    assert merged.n == whole.n == 1000
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(merged.cov, whole.cov, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(whole.cov, np.cov(feats, rowvar=False), rtol=1e-10)
    merged.save(tmp_path / "stats.npz")
    loaded = F.FeatureStats.load(tmp_path / "stats.npz")
    assert loaded.n == merged.n and np.array_equal(loaded.m2, merged.m2)


# --------------------------------------------------------------------------- class coverage


def test_class_coverage_rule_and_histogram():
    labels = [0] * 50 + [1] * 30 + [2] * 15 + [3] * 5  # threshold 0.5/4 = 12.5 % of 100
    out = M.class_coverage(labels, n_classes=5)
    assert out["class_histogram"] == [50, 30, 15, 5, 0]
    assert out["coverage"] == pytest.approx(3 / 5)
    assert out["max_class_share"] == pytest.approx(0.5)
    json.dumps(out)


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("call, argument", [
    (lambda: M.sliced_wasserstein(np.zeros((5, 2)), np.zeros((5, 3))), "feature dims"),
    (lambda: M.sliced_wasserstein(np.zeros((5, 2)), np.zeros((5, 2)), n_projections=0),
     "n_projections"),
    (lambda: M.mmd_rbf(np.zeros((1, 2)), np.zeros((5, 2))), "a needs at least 2"),
    (lambda: M.mmd_rbf(np.zeros((5, 2)), np.zeros((5, 2)), bandwidths=[-1.0]), "bandwidths"),
    (lambda: M.mmd_rbf(np.zeros((5, 2)), np.full((5, 2), np.nan)), "b contains NaN"),
    (lambda: F.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2)), "feature dims"),
    (lambda: F.frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3)), "cov1"),
    (lambda: F.frechet_distance_from_features(np.zeros((1, 4)), np.zeros((9, 4))), "f1"),
    (lambda: F.frechet_distance_from_features(np.zeros((9, 4)), np.zeros((9, 5))), "feature dims"),
    (lambda: F.FeatureStats.empty(3).merge(F.FeatureStats.empty(4)), "feature dims"),
    (lambda: F.FeatureStats.from_features(np.zeros((1, 3))).cov, "at least 2"),
    (lambda: M.class_coverage([0, 1, 7], n_classes=3), "pred_labels"),
    (lambda: M.class_coverage([0, 1], n_classes=0), "n_classes"),
    (lambda: clf.DigitClassifier(1, 8, 10)(torch.zeros(2, 1, 7, 7)), "x must have shape"),
    (lambda: clf.train_classifier(np.zeros((4, 1, 8, 8)), np.zeros(3)), "y_train"),
    (lambda: clf.train_classifier(np.zeros((4, 8, 8)), np.zeros(4)), "x_train"),
    (lambda: clf.load_classifier("/nonexistent/classifier"), "path_dir"),
])
def test_bad_inputs_raise_value_error_naming_the_argument(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()


# --------------------------------------------------------------------------- classifier


@pytest.fixture(scope="module")
def digits():
    """sklearn digits scaled to [-1, 1], N×1×8×8, seeded 1297/500 split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0 * 2.0 - 1.0).reshape(-1, 1, 8, 8).astype(np.float32)
    perm = np.random.default_rng(0).permutation(len(x))
    train, test = perm[:1297], perm[1297:]
    return x[train], data.target[train], x[test], data.target[test]


@pytest.fixture(scope="module")
def trained(digits):
    x_tr, y_tr, _, _ = digits
    return clf.train_classifier(x_tr, y_tr, seed=0)


@pytest.mark.slow  # a full training run of the FD classifier (30 epochs): ~7 s here
def test_classifier_reaches_95_percent_on_digits(digits, trained):
    _, _, x_te, y_te = digits
    assert clf.accuracy(trained, x_te, y_te) >= 0.95
    feats = clf.extract_features(trained, x_te, batch_size=128)
    assert feats.shape == (500, 64) and feats.dtype == np.float64
    cov = M.class_coverage(clf.predict(trained, x_te), trained.n_classes)
    assert cov["coverage"] == 1.0


def test_training_is_deterministic_and_leaves_global_rng_alone(digits):
    x_tr, y_tr, _, _ = digits
    state = torch.random.get_rng_state()
    m1 = clf.train_classifier(x_tr[:256], y_tr[:256], epochs=2, seed=7)
    m2 = clf.train_classifier(x_tr[:256], y_tr[:256], epochs=2, seed=7)
    assert torch.equal(state, torch.random.get_rng_state())
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(v1, v2), k


def test_save_load_round_trip_gives_identical_logits(tmp_path, digits):
    x_tr, y_tr, x_te, _ = digits
    trained = clf.train_classifier(x_tr[:256], y_tr[:256], epochs=2, seed=7)  # weights of its own
    clf.save_classifier(trained, tmp_path / "clf")
    config = json.loads((tmp_path / "clf" / "config.json").read_text())
    assert config["feature_dim"] == 64 and config["n_classes"] == 10
    loaded = clf.load_classifier(tmp_path / "clf")
    x = torch.from_numpy(x_te)
    with torch.no_grad():
        assert torch.equal(trained.eval()(x), loaded(x))


def test_classifier_hash_is_the_sha256_of_the_weights_and_follows_them(tmp_path):
    """The hash that names the feature extractor in every FD record: the sha256 of model.pt's
    bytes, the same after a load/save round trip, another one for other weights."""
    torch.manual_seed(0)
    folder = clf.save_classifier(clf.DigitClassifier(1, 8, 10), tmp_path / "a")
    digest = clf.classifier_hash(folder)
    assert digest == hashlib.sha256((folder / "model.pt").read_bytes()).hexdigest()
    again = clf.save_classifier(clf.load_classifier(folder), tmp_path / "b")
    assert clf.classifier_hash(again) == digest
    (again / "config.json").write_text((again / "config.json").read_text() + "\n")
    assert clf.classifier_hash(again) == digest  # the weights alone
    nudged = clf.load_classifier(folder)
    with torch.no_grad():
        next(nudged.parameters()).view(-1)[0] += 1e-3
    assert clf.classifier_hash(clf.save_classifier(nudged, tmp_path / "c")) != digest
    with pytest.raises(ValueError, match="has no model.pt"):
        clf.classifier_hash(tmp_path)


def test_fd_floor_of_a_resampled_training_set_is_higher():
    """A sampler of the training set itself carries the training set's own sampling error:
    for Gaussian features, train 600, draws of 300 against 300 held out, the mean term of the
    expected FD grows by (1/300 + 1/300 + 1/600) / (2/300) = 1.25 (the covariance term alike)."""

    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(600, 8)), rng.normal(size=(300, 8))
    exact = np.mean(fd_draws(train, test, 300, seed=1, draws=200))
    resampled = np.mean(fd_draws(train, test, 300, seed=1, draws=200, replace=True))
    assert 1.1 < resampled / exact < 1.45
    assert fd_chunks_sem(train, test, 250) > 0 and fd_chunks_sem(train, test, 300) > 0
    assert fd_chunks_sem(train[:400], test, 300) is None  # one chunk has no spread


def test_fd_draws_grow_with_the_pool():
    """A pool of samples larger than the floor's is read through enough subsets that each
    member is in about 20 of them; small pools keep 64 draws, like the floor."""

    rng = np.random.default_rng(0)
    pool, test = rng.normal(size=(2000, 4)), rng.normal(size=(50, 4))
    assert len(fd_draws(pool, test, 50, seed=0)) == 800
    assert len(fd_draws(pool[:100], test, 50, seed=0)) == 64
