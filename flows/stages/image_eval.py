"""Image sample quality at scale: per-shard features on Ray, then FD, FID (when Inception-v3
weights are given), KID, precision/recall, class coverage and the memorization check.

Every figure records how it was made: sample counts, reference split, feature extractor and
its sha256; FD, KID and precision/recall sit beside their floors (train subsets against the
reference split, test or val, at the same size). The Fréchet statistics are merged per shard; the pairwise
metrics use the first ``keep`` samples of each split.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from diffusion_core.evaluation import fidelity, metrics
from diffusion_core.evaluation import intervals
from diffusion_core.evaluation.fd_estimators import fd_draws
from diffusion_core.features.inception import (
    WEIGHTS_ENV,
    load_inception,
    weights_sha256,
)
from flows.distributed.shard_features import Extractor, features_of


def inception_path(configured: str | None) -> str | None:
    """The Inception-v3 weights file: the params' value, else $DIFFUSION_INCEPTION_WEIGHTS."""
    return configured or os.environ.get(WEIGHTS_ENV) or None


def _check_samples(samples_dir) -> None:
    """Sample shards hold images in [-1, 1]: the manifest's value range, checked before any work
    (the shards' checksums against that manifest are checked before their features)."""
    from diffusion_core.data import shards

    low, high = shards.read_manifest(samples_dir)[1]["value_range"]
    if low < -1 - 1e-6 or high > 1 + 1e-6:
        raise ValueError(f"{samples_dir}: samples must lie in [-1, 1], found values in [{low:.4g}, {high:.4g}]")


PR_DRAWS = 10  # subsets of the samples (and of train, for the floor) behind precision/recall and its spread


def _fd_block(fake, test, train, seed: int, replicates: int) -> dict:
    """FD of all samples, and of test-sized draws of them beside the floor (mean and range
    over train draws of that size); their ratio with its interval (the headline)."""
    n = min(len(test.kept_features), len(fake.kept_features), len(train.kept_features))
    floors = fd_draws(train.kept_features, test.kept_features, n, seed)
    at_n = fd_draws(fake.kept_features, test.kept_features, n, seed)
    out = {"fd": fidelity.frechet_distance_from_stats(fake.stats, test.stats),
           "fd_at_n": float(np.mean(at_n)), "fd_at_n_draws": len(at_n),
           "fd_n": n, "fd_floor": float(np.mean(floors)), "fd_floor_min": float(np.min(floors)),
           "fd_floor_max": float(np.max(floors)), "fd_floor_draws": len(floors),
           "fd_train_resampled": float(np.mean(fd_draws(train.kept_features, test.kept_features,
                                                         n, seed, replace=True)))}
    out.update(intervals.measure_headline("fd", intervals.fd_against, fake.kept_features, test.kept_features,
                                          train.kept_features, n, out["fd_at_n"], out["fd_floor"], replicates, seed))
    out["fd_train_resampled_ratio"] = out["fd_train_resampled"] / out["fd_floor"]
    return out


def _fidelity_block(fake, test, train, seed: int, pr_k: int, replicates: int) -> dict:
    """FD, KID and precision/recall in one feature space, each beside its floor (the same
    statistic between train subsets and the test split, at the same size)."""
    out = _fd_block(fake, test, train, seed, replicates)
    out.update(fidelity.kid_with_floor(test.kept_features, fake.kept_features, train.kept_features, seed=seed))
    out.update(fidelity.precision_recall_with_floor(test.kept_features, fake.kept_features, train.kept_features,
                                                    k=pr_k, draws=PR_DRAWS, seed=seed))
    return out


def fd_floors_at(train, test, sizes, seed: int) -> dict:
    """The FD floor (mean over train draws) at each of ``sizes`` that the train features can
    fill, keyed by the size as a string (JSON): for figures measured on other sample counts,
    such as the NFE sweep's."""
    return {str(n): float(np.mean(fd_draws(train.kept_features, test.kept_features, int(n), seed)))
            for n in sorted(set(sizes)) if 2 <= int(n) <= len(train.kept_features)}


def _fid(sources: dict, weights: str | None, keep: int, workers: int, cpus: float, gpus: float) -> dict:
    if weights is None:
        note = (f"FID not computed: no Inception-v3 weights (set evaluate.inception_weights or "
                f"${WEIGHTS_ENV} to a local copy of pt_inception-2015-12-05; nothing is downloaded)")
        print(f"evaluate: {note}")
        return {"fid": None, "fid_note": note}
    found = features_of(sources, Extractor("inception", str(weights), 64), keep, workers, cpus,
                        gpus_per_worker=gpus)
    return {"fid": fidelity.frechet_distance_from_stats(found["samples"].stats, found["reference"].stats),
            "fid_feature_extractor": "Inception-v3 pool-3 (2048-d, FID weights)",
            "fid_feature_extractor_sha256": weights_sha256(weights)}


EXTRACTORS = {  # what a feature_extractor kind is, for the record
    "classifier": "in-domain CNN classifier (penultimate layer)",
    "contrastive": "in-domain CNN trained contrastively without labels (SimCLR; layer before the projection head)",
}


def image_fidelity(samples_dir, data_dir, classifier_dir, keep: int = 10000, num_workers: int = 2,
                   cpus_per_worker: float = 1.0, seed: int = 0, pr_k: int = 3,
                   inception_weights: str | None = None, floor_sizes=(), gpus_per_worker: float = 0.0,
                   reference_split: str = "test", replicates: int = 200) -> dict:
    """Every image metric of the sample shards in ``samples_dir`` (split ``samples``) against
    the held-out ``reference_split`` (test, or val for tuning), with floors from the ``train``
    split: real images that, like the samples, the feature extractor never trained on (it
    trains on its own split alone: ``classifier``, or ``extractor`` for the contrastive network
    of unlabelled images). ``fd_floor_by_n`` holds the FD floor at each of ``floor_sizes`` too."""
    # absolute paths: Ray actors may run in another working directory than the driver
    samples_dir, data_dir, classifier_dir = (Path(p).resolve() for p in (samples_dir, data_dir, classifier_dir))
    summary = json.loads((classifier_dir / "classifier_metrics.json").read_text())
    if not summary.get("applicable"):
        return {"note": "not image data, no feature extractor: FD not computed"}
    weights = inception_path(inception_weights)
    if weights is not None:
        load_inception(weights)  # a missing or wrong file is named here, before any work
    _check_samples(samples_dir)
    sources = {"samples": (samples_dir, "samples"), "reference": (data_dir, reference_split),
               "train": (data_dir, "train")}
    kind = summary.get("feature_extractor", "classifier")  # older summaries: classifiers only
    n_classes = json.loads((classifier_dir / "config.json").read_text()).get("n_classes")
    found = features_of(sources, Extractor(kind, str(classifier_dir)), keep, num_workers,
                        cpus_per_worker, n_classes, gpus_per_worker)
    fake, test, train = found["samples"], found["reference"], found["train"]  # test: the reference
    out = _fidelity_block(fake, test, train, seed, pr_k, replicates)
    out["fd_floor_by_n"] = fd_floors_at(train, test, floor_sizes, seed)
    if n_classes is not None:  # a classifier's predicted labels
        coverage = metrics.class_coverage(np.repeat(np.arange(n_classes), fake.histogram), n_classes)
        out.update(class_coverage=coverage["coverage"], max_class_share=coverage["max_class_share"],
                   class_histogram=coverage["class_histogram"])
    out.update(fidelity.memorization(fake.kept_x, test.kept_x, train.kept_x))
    out.update(_fid({"samples": sources["samples"], "reference": sources["reference"]}, weights, keep,
                    num_workers, cpus_per_worker, gpus_per_worker))
    out.update(num_samples=fake.stats.n, num_reference=test.stats.n, pairwise_num_samples=len(fake.kept_features),
               classifier_val_accuracy=summary.get("val_accuracy"), feature_extractor=kind,
               feature_extractor_description=EXTRACTORS[kind], feature_extractor_sha256=summary["sha256"],
               feature_extractor_split=summary.get("trained_split"), reference_split=reference_split,
               floor_split=f"train subsets vs {reference_split} (images the feature extractor never saw)",
               memorization_space="pixels")
    return out
