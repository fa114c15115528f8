"""The evaluate stage: sample quality against held-out data, each figure beside its noise floor
(the same statistic between two independent real sets of the same size)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from diffusion_core import classifier as clf
from diffusion_core import metrics
from diffusion_core.data import shards, toys

from . import tracking
from .config import Params


def _real_subset(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    if len(x) < n:
        raise ValueError(f"need {n} real training examples for the noise floor, have {len(x)}")
    return x[np.random.default_rng(seed).permutation(len(x))[:n]]


def vector_metrics(samples, test, train, params: Params, source: str) -> dict:
    """Sliced W2 and MMD against held-out data, with floors from a train subset of equal size."""
    n = min(len(samples), len(test))
    samples, test = samples[:n], test[:n]
    reference = _real_subset(train, n, params.evaluate.seed)
    proj, seed = params.evaluate.swd_projections, params.evaluate.seed
    out = {
        "swd": metrics.sliced_wasserstein(samples, test, proj, seed),
        "swd_floor": metrics.sliced_wasserstein(reference, test, proj, seed),
        "mmd": metrics.mmd_rbf(samples, test),
        "mmd_floor": metrics.mmd_rbf(reference, test),
        "num_samples": n, "reference_split": "test", "floor_split": "train subset vs test",
    }
    out["swd_ratio"] = out["swd"] / out["swd_floor"]
    toy = source.split(":", 1)[1] if source.startswith("toy:") else None
    if toy in ("checkerboard", "gmm8"):
        out["off_support"] = toys.off_support_fraction(toy, samples)
        out["off_support_real"] = toys.off_support_fraction(toy, test)
    return out


def image_metrics(samples, test, train, params: Params) -> dict:
    """FD in the in-domain classifier's feature space, class coverage, and the FD floor."""
    directory = Path(params.classifier.out_dir)
    summary = json.loads((directory / "classifier_metrics.json").read_text())
    if not summary.get("applicable"):
        return {"note": "no labelled data, no classifier: FD not computed"}
    model = clf.load_classifier(directory)
    n = min(len(samples), len(test))
    reference = _real_subset(train, n, params.evaluate.seed)
    feats = {k: clf.extract_features(model, v) for k, v in
             (("samples", samples[:n]), ("test", test[:n]), ("reference", reference))}
    fd = metrics.frechet_distance_from_features(feats["samples"], feats["test"])
    floor = metrics.frechet_distance_from_features(feats["reference"], feats["test"])
    predicted = clf.predict(model, samples[:n])
    coverage = metrics.class_coverage(predicted, n_classes=model.n_classes)
    return {"fd": fd, "fd_floor": floor, "fd_ratio": fd / floor, "num_samples": n,
            "class_coverage": coverage["coverage"], "max_class_share": coverage["max_class_share"],
            "class_histogram": coverage["class_histogram"],
            "classifier_test_accuracy": summary["test_accuracy"],
            "feature_extractor": "in-domain CNN classifier (penultimate layer)",
            "feature_extractor_sha256": summary["sha256"],
            "reference_split": "test", "floor_split": "train subset vs test"}


def evaluate(params: Params, framework: str) -> dict:
    """Write metrics/<framework>.json (a DVC metric) and log it to the framework's MLflow run."""
    sample_dir = Path(params.sample.out_dir) / framework
    samples, _ = shards.load_split(sample_dir / "shards", "samples")
    sampling = json.loads((sample_dir / "sampling.json").read_text())
    test, _ = shards.load_split(params.data.out_dir, "test")
    train, _ = shards.load_split(params.data.out_dir, "train")
    if samples.shape[1:] != test.shape[1:]:
        raise ValueError(f"{sample_dir}: samples shaped {samples.shape[1:]}, data {test.shape[1:]}")
    if samples.ndim == 2:
        result = vector_metrics(samples, test, train, params, params.data.source)
    else:
        result = image_metrics(samples, test, train, params)
    result.update(framework=framework, sampler=sampling["sampler"], nfe=sampling["nfe"],
                  seed=sampling["seed"], dataset=params.data.source)
    out = Path(params.evaluate.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{framework}.json"
    path.write_text(json.dumps(result, indent=2))
    run_id = tracking.load_run_id(Path(params.train.out_dir) / framework)
    tracking.log_metrics(run_id, {f"eval_{k}": v for k, v in result.items()})
    tracking.log_artifacts(run_id, path, "metrics")
    print(f"evaluate {framework}: " + ", ".join(
        f"{k}={v:.4g}" for k, v in result.items() if isinstance(v, float)))
    return result
