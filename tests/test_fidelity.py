"""KID, precision/recall, memorization, merged Fréchet statistics and the local Inception-v3."""
import hashlib

import numpy as np
import pytest
import torch
from scipy import linalg

from diffusion_core.evaluation import fidelity
from diffusion_core.evaluation.frechet import FeatureStats
from diffusion_core.features import inception


def _gaussian(n, d, seed, shift=0.0):
    """n draws (seeded) of one correlated Gaussian per dimension d, optionally shifted."""
    mix = np.random.default_rng(d).standard_normal((d, d)) / np.sqrt(d)
    return np.random.default_rng(seed).standard_normal((n, d)) @ mix + shift


def _fd_scipy(f1, f2):
    """The textbook FID formula, written out independently with scipy's sqrtm in float64."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = np.real(linalg.sqrtm(s1 @ s2))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean))


def test_fd_of_merged_shard_stats_equals_scipy_sqrtm_on_all_features():
    a, b = _gaussian(3000, 32, 0), _gaussian(2500, 32, 1, shift=0.3)
    shards_a = [FeatureStats.from_features(s) for s in np.array_split(a, 7)]
    shards_b = [FeatureStats.from_features(s) for s in np.array_split(b, 4)]
    merged_a, merged_b = fidelity.merge_stats(shards_a), fidelity.merge_stats(shards_b)
    fd = fidelity.frechet_distance_from_stats(merged_a, merged_b)
    assert fd == pytest.approx(_fd_scipy(a, b), rel=1e-6)


def test_merged_shard_stats_equal_single_pass():
    x = _gaussian(1001, 16, 2, shift=5.0)
    merged = fidelity.merge_stats(FeatureStats.from_features(s) for s in np.array_split(x, 9))
    np.testing.assert_allclose(merged.mean, x.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(merged.cov, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)
    assert merged.n == 1001
    with pytest.raises(ValueError, match="no shard statistics"):
        fidelity.merge_stats([])


def _kid_naive(x, y):
    d, m = x.shape[1], len(x)
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    return kxx + kyy - 2 * kxy


def test_kid_matches_the_definition_and_separates_distributions():
    x, y = _gaussian(20, 5, 3), _gaussian(20, 5, 4, shift=0.5)
    one = fidelity.kernel_inception_distance(x, y, subsets=1, subset_size=20)
    assert one["kid"] == pytest.approx(_kid_naive(x, y), rel=1e-10)
    same = fidelity.kernel_inception_distance(_gaussian(2000, 8, 5), _gaussian(2000, 8, 6),
                                              subsets=20, subset_size=500)
    shifted = fidelity.kernel_inception_distance(_gaussian(2000, 8, 5), _gaussian(2000, 8, 6, 0.5),
                                                 subsets=20, subset_size=500)
    assert abs(same["kid"]) < 3 * same["kid_std"] + 1e-3
    assert shifted["kid"] > 10 * max(abs(same["kid"]), same["kid_std"])


def test_precision_recall_on_known_geometry():
    real = _gaussian(500, 4, 7)
    both = fidelity.precision_recall(real, real.copy(), k=3, chunk=64)
    assert both["precision"] == 1.0 and both["recall"] == 1.0
    far = fidelity.precision_recall(real, real + 100.0, k=3)
    assert far["precision"] == 0.0 and far["recall"] == 0.0
    # fake covers only half of the real mode: precision stays high, recall drops
    half = real[real[:, 0] > np.median(real[:, 0])]
    partial = fidelity.precision_recall(real, half, k=3)
    assert partial["precision"] > 0.95 and partial["recall"] < 0.75


def test_precision_recall_radius_is_kth_neighbour():
    real = np.array([[0.0], [1.0], [3.0], [6.0]])
    fake = np.array([[2.1], [10.0]])
    # k=1 radii of real: 1, 1, 2, 3 -> 2.1 lies within 1 of 3.0 (radius 2): inside; 10 outside
    assert fidelity.precision_recall(real, fake, k=1)["precision"] == 0.5


def test_memorization_flags_copies_and_passes_fresh_samples():
    train, heldout = _gaussian(2000, 6, 8), _gaussian(500, 6, 9)
    fresh = fidelity.memorization(_gaussian(500, 6, 10), heldout, train)
    copies = fidelity.memorization(train[:500] + 1e-6, heldout, train)
    assert 0.8 < fresh["nn_ratio"] < 1.25 and fresh["copy_fraction"] < 0.05
    assert copies["nn_ratio"] < 0.01 and copies["copy_fraction"] == 1.0


@pytest.mark.parametrize("call, argument", [
    (lambda: fidelity.kernel_inception_distance(np.ones((5, 2)), np.ones((5, 3))), "feature dims"),
    (lambda: fidelity.precision_recall(np.ones((5, 2)), np.ones((5, 2)), k=5), "k must"),
    (lambda: fidelity.memorization(np.ones((3, 2)), np.ones((3, 2)), np.ones((3, 2)), 2.0), "quantile"),
    (lambda: fidelity.precision_recall(np.full((5, 2), np.nan), np.ones((5, 2))), "real"),
])
def test_bad_inputs_raise_value_error(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()


# --------------------------------------------------------------------------- Inception-v3


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A weights file of the right shapes written here (random values): nothing is downloaded."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("inception") / "inception.pt"
    torch.save(inception.FIDInceptionV3().state_dict(), path)
    return path


def test_inception_loads_local_weights_and_gives_pool3_features(weights_file):
    model = inception.load_inception(weights_file)
    x = np.random.default_rng(0).uniform(-1, 1, (3, 1, 8, 8)).astype(np.float32)
    feats = inception.inception_features(model, x, batch_size=2)
    assert feats.shape == (3, inception.FEATURE_DIM) and feats.dtype == np.float64
    assert np.isfinite(feats).all()
    np.testing.assert_array_equal(feats[:1], inception.inception_features(model, x[:1]))
    assert inception.weights_sha256(weights_file) == hashlib.sha256(weights_file.read_bytes()).hexdigest()


def test_inception_refuses_a_file_of_the_wrong_shape(tmp_path, weights_file):
    state = torch.load(weights_file, weights_only=True)
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)  # ImageNet head
    del state["Mixed_7c.branch_pool.conv.weight"]
    wrong = tmp_path / "imagenet_inception.pt"
    torch.save(state, wrong)
    with pytest.raises(ValueError, match=r"imagenet_inception\.pt is not the FID Inception-v3") as err:
        inception.load_inception(wrong)
    assert "fc.weight" in str(err.value) and "missing" in str(err.value)


def test_inception_refuses_a_file_that_is_not_weights(tmp_path):
    junk = tmp_path / "notes.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="notes.pt cannot be read"):
        inception.load_inception(junk)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        inception.load_inception(tmp_path / "absent.pt")


def test_resize_matches_tensorflow_1x_bilinear():
    x = torch.arange(4.0).reshape(1, 1, 1, 4).expand(1, 1, 4, 4)
    out = inception.resize_bilinear_tf1(x, 8)[0, 0, 0]
    # source coordinate = destination * 4/8, clamped at the last pixel
    np.testing.assert_allclose(out.numpy(), [0, 0.5, 1, 1.5, 2, 2.5, 3, 3])
