"""A headline for unlabelled images: the feature extractor's split is held out for them too, a
contrastive network (no labels, no download) trains on it, and evaluate's FD/floor with its
interval is measured in its features; labelled images keep the classifier (test_splits.py)."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from diffusion_core.data import shards
from diffusion_core.evaluation.frechet import frechet_distance_from_features
from diffusion_core.features import classifier as clf
from diffusion_core.features import contrastive
from flows.config.params import parse_params
from tests.tiny import in_workspace, tiny_params

PALETTE = np.array([[1, -.6, -.6], [-.6, 1, -.6], [-.6, -.6, 1], [1, 1, -.6]], np.float32)


def shapes(n: int, kind: str, seed: int, size: int = 8) -> np.ndarray:
    """n RGB images in [-1, 1]: one filled square or disc of a random palette colour, size and
    place on a dark background, with faint pixel noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] + 0.5
    x = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        r = rng.uniform(size / 6, size / 3)
        cy, cx = rng.uniform(r, size - r, 2)
        square = (np.abs(yy - cy) < r) & (np.abs(xx - cx) < r)
        mask = square if kind == "square" else (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
        x[i] = rng.uniform(-1, -0.6)
        x[i][:, mask] = PALETTE[rng.integers(len(PALETTE))][:, None]
    return np.clip(x + rng.normal(0, 0.03, x.shape), -1, 1).astype(np.float32)


def _separation(model, a, a_again, b) -> float:
    """FD between the families over FD between two draws of one family."""
    fa, fa2, fb = (clf.extract_features(model, x) for x in (a, a_again, b))
    return frechet_distance_from_features(fa, fb) / frechet_distance_from_features(fa, fa2)


def test_contrastive_features_tell_families_apart_better_than_an_untrained_trunk():
    import torch

    train = np.concatenate([shapes(100, "square", 0), shapes(100, "disc", 1)])
    model = contrastive.train_contrastive(train, epochs=20, seed=0)  # a few seconds
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        untrained = contrastive.ContrastiveEncoder(3, 8).eval()
    held_out = shapes(300, "square", 2), shapes(300, "square", 3), shapes(300, "disc", 4)
    trained_ratio, untrained_ratio = _separation(model, *held_out), _separation(untrained, *held_out)
    assert trained_ratio > 4 and trained_ratio > 2 * untrained_ratio, (trained_ratio, untrained_ratio)
    assert contrastive.view_match_accuracy(model, held_out[2][:100]) > 1 / 199  # above chance


def test_at_16x16_the_direction_and_log_norm_readout_separates_the_families():
    """At 16×16 the trunk's raw output has heavy-tailed norms (NT-Xent leaves them free) that
    can swamp FD; the readout [f/‖f‖, log ‖f‖] keeps them from doing so. Measured (30 epochs,
    seeds 0 / 1): 4.0 / 28.8 against an untrained trunk's 2.1 / 3.6 (same readout)."""
    import torch

    train = np.concatenate([shapes(100, "square", 0, 16), shapes(100, "disc", 1, 16)])
    model = contrastive.train_contrastive(train, epochs=30, seed=0, readout="direction_log_norm")  # ~16 s
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        untrained = contrastive.ContrastiveEncoder(3, 16, readout="direction_log_norm").eval()
    held_out = shapes(300, "square", 2, 16), shapes(300, "square", 3, 16), shapes(300, "disc", 4, 16)
    assert clf.extract_features(model, held_out[0][:4]).shape == (4, 65)
    trained_ratio, untrained_ratio = _separation(model, *held_out), _separation(untrained, *held_out)
    assert trained_ratio > 1.5 * untrained_ratio, (trained_ratio, untrained_ratio)


def test_nt_xent_is_low_for_matching_views_and_training_is_deterministic(tmp_path):
    import torch

    z = torch.nn.functional.normalize(torch.randn(16, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    assert contrastive.nt_xent(z, z, 0.1) < contrastive.nt_xent(z, z.roll(1, 0), 0.1)
    x = shapes(20, "disc", 5)
    a, b = (contrastive.train_contrastive(x, epochs=2, batch_size=8, seed=3) for _ in range(2))
    assert np.array_equal(clf.extract_features(a, x), clf.extract_features(b, x))
    folder = contrastive.save_contrastive(a, tmp_path / "net")
    again = contrastive.load_feature_network(folder)
    assert isinstance(again, contrastive.ContrastiveEncoder)
    assert np.array_equal(clf.extract_features(again, x), clf.extract_features(a, x))
    with pytest.raises(ValueError, match="does not hold a DigitClassifier"):
        clf.load_classifier(folder)
    config = json.loads((folder / clf.CONFIG_FILE).read_text())
    assert config.pop("class") == "ContrastiveEncoder" and config.pop("readout") == "raw"
    (folder / clf.CONFIG_FILE).write_text(json.dumps({"class": "ContrastiveEncoder", **config}))  # as saved before
    assert contrastive.load_contrastive(folder).readout == "raw"
    sphere = contrastive.ContrastiveEncoder(**config, readout="direction_log_norm")
    sphere.load_state_dict({**a.state_dict(), "direction_log_norm_readout": torch.ones(())})
    again = contrastive.load_contrastive(contrastive.save_contrastive(sphere, tmp_path / "sphere"))
    f, h = clf.extract_features(again, x), clf.extract_features(a, x)
    assert f.shape == (20, 65) and np.allclose(f[:, :64] * np.exp(f[:, 64:]), h, atol=1e-4)
    assert clf.classifier_hash(tmp_path / "sphere") != clf.classifier_hash(folder)  # the readout is in model.pt


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """An unlabelled npz of 600 RGB 8×8 images (squares and discs), prepared in a workspace of
    its own."""
    from flows.stages import data as stages

    root = tmp_path_factory.mktemp("unlabelled")
    images = np.concatenate([shapes(300, "square", 10), shapes(300, "disc", 11)])
    np.savez(root / "shapes.npz", x=np.round((images + 1) * 127.5).astype(np.uint8))
    values = tiny_params(f"npz:{root / 'shapes.npz'}", classifier={"contrastive_epochs": 40},
                         data={"val_size": 100, "classifier_size": 150, "test_size": 150,
                               "samples_per_shard": 50})
    values["data"]["out_dir"], values["classifier"]["out_dir"] = str(root / "shards"), str(root / "extractor")
    values["evaluate"].update(num_workers=1, bootstrap=50)
    params = parse_params(values)
    with contextlib.redirect_stdout(io.StringIO()):
        return root, params, stages.prepare(params)


@pytest.fixture(scope="module")
def workspace(prepared):
    """``prepared`` with its feature extractor trained (the train-classifier stage)."""
    from flows.stages import data as stages

    with contextlib.redirect_stdout(io.StringIO()):
        return (*prepared, stages.train_classifier(prepared[1]))


def test_unlabelled_images_hold_out_an_extractor_split_apart_from_the_rest(prepared):
    root, _, sizes = prepared
    assert {k: sizes[k] for k in ("train", "val", "extractor", "test")} == {
        "train": 200, "val": 100, "extractor": 150, "test": 150}
    assert "classifier" not in sizes
    fitted, _ = shards.load_split(root / "shards", "extractor")
    rows = {row.tobytes() for row in fitted}
    for name in ("train", "val", "test"):
        assert not rows & {row.tobytes() for row in shards.load_split(root / "shards", name)[0]}, name


@pytest.mark.slow  # trains the feature network for several seconds
def test_the_contrastive_extractor_trains_on_the_extractor_split_alone(workspace):
    from flows.stages.data import images_sha256

    root, _, _, summary = workspace
    fitted, _ = shards.load_split(root / "shards", "extractor")
    assert summary["trained_images_sha256"] == images_sha256(fitted)
    assert summary["feature_extractor"] == "contrastive" and summary["trained_split"] == "extractor"
    assert summary["trained_size"] == 150 and summary["sha256"] == clf.classifier_hash(root / "extractor")
    assert json.loads((root / "extractor" / "classifier_metrics.json").read_text()) == summary


def _samples(root, name: str, x: np.ndarray):
    shards.write_shards(root / name / "shards", {"samples": (x, None)}, 50, {})
    return root / name


@pytest.mark.slow  # Ray actors compute the features, as in the evaluate stage
def test_evaluate_gives_unlabelled_images_an_fd_over_floor_headline(workspace):
    from flows.stages import compare_report, evaluate

    root, params, _, _ = workspace
    real, _ = shards.load_split(root / "shards", "val")  # real images nobody trained on
    noise = np.random.default_rng(0).uniform(-1, 1, real.shape).astype(np.float32)
    with in_workspace(root), contextlib.redirect_stdout(io.StringIO()):
        assert evaluate._check_extractor(params)["trained_split"] == "extractor"
        good = evaluate.image_metrics(params, _samples(root, "real", real))
        bad = evaluate.image_metrics(params, _samples(root, "noise", noise))
    for result in (good, bad):
        assert result["feature_extractor"] == "contrastive" and result["feature_extractor_split"] == "extractor"
        assert result["fd_floor"] > 0 and result["fd_n"] == 100 and "class_coverage" not in result
        assert result["fd_ratio_low"] <= result["fd_ratio"] <= result["fd_ratio_high"]
    assert 0.5 < good["fd_ratio"] < 2, good["fd_ratio"]
    assert bad["fd_ratio"] > 10 and bad["fd_ratio_low"] > good["fd_ratio_high"], (bad, good)  # measured: 22.7, 1.00
    assert "contrastively (SimCLR, no labels) on the `extractor` split" in compare_report._headline_why([good])[0]
