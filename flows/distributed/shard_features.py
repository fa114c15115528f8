"""Per-shard feature statistics on Ray: each actor loads the feature extractor once, reads one
shard at a time (checksum verified), and returns float64 FeatureStats, a class histogram and a
bounded subset of features; the driver merges the statistics (Chan et al. 1979), so no worker
ever holds every feature of a large evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffusion_core.data import shards
from diffusion_core.evaluation.fidelity import merge_stats
from diffusion_core.evaluation.frechet import FeatureStats
from flows.distributed.actor_pool import actor_device, map_actors


@dataclass(frozen=True)
class Extractor:
    """Which feature extractor: ``classifier`` (a saved DigitClassifier folder),
    ``contrastive`` (a saved ContrastiveEncoder folder, no labels) or ``inception`` (a local
    FID Inception-v3 weights file)."""

    kind: str
    path: str
    batch_size: int = 512

    def load(self):
        if self.kind == "classifier":
            from diffusion_core.features import classifier as clf

            return clf.load_classifier(self.path)
        if self.kind == "contrastive":
            from diffusion_core.features import contrastive

            return contrastive.load_contrastive(self.path)
        if self.kind == "inception":
            from diffusion_core.features import inception

            return inception.load_inception(self.path)
        raise ValueError(f"extractor kind must be classifier, contrastive or inception, got {self.kind!r}")

    def features(self, model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(float64 features, predicted labels or None) of images in [-1, 1]."""
        if self.kind == "classifier":
            from diffusion_core.features import classifier as clf

            return clf.extract_features(model, x, self.batch_size), clf.predict(model, x, self.batch_size)
        if self.kind == "contrastive":  # same trunk, same feature call; no classes to predict
            from diffusion_core.features import classifier as clf

            return clf.extract_features(model, x, self.batch_size), None
        from diffusion_core.features import inception

        return inception.inception_features(model, x, min(self.batch_size, 64)), None


@dataclass
class SplitFeatures:
    """What the driver keeps of one split: merged statistics, label counts, a subset."""

    stats: FeatureStats
    histogram: np.ndarray | None
    kept_features: np.ndarray  # features of the first `keep` samples, in written order
    kept_x: np.ndarray  # and those samples themselves


class FeatureWorker:
    """A Ray actor: loads the extractor once, then turns shards into statistics."""

    def __init__(self, extractor: Extractor, threads: int):
        import torch

        torch.set_num_threads(max(1, int(threads)))
        self.extractor, self.model = extractor, extractor.load().to(actor_device())

    def run(self, name: str, data_dir: str, shard: str, first: int, keep: int) -> dict:
        x, _ = shards.read_shard(data_dir, shard)
        if not np.isfinite(x).all():
            raise ValueError(f"shard {Path(data_dir) / shard} holds NaN or infinite values")
        feats, labels = self.extractor.features(self.model, x)
        stats = FeatureStats.from_features(feats)
        n_keep = max(0, min(len(x), keep - first))
        return {"name": name, "first": first, "n": stats.n, "mean": stats.mean, "m2": stats.m2,
                "labels": labels, "kept_features": feats[:n_keep], "kept_x": x[:n_keep]}


def _shard_calls(name: str, data_dir: Path, split: str, keep: int) -> list[tuple]:
    table, _ = shards.read_manifest(data_dir)
    calls, first = [], 0
    for row in table.to_pylist():
        if row["split"] == split:
            calls.append((name, str(data_dir), row["shard"], first, keep))
            first += row["num_samples"]
    if not calls:
        raise ValueError(f"split {split!r} has no shards in {data_dir / shards.MANIFEST_NAME}")
    shards.verify_shards(data_dir, split)  # a damaged shard is named here, before any work
    return calls


def _merge(results: list[dict], n_classes: int | None) -> SplitFeatures:
    results = sorted(results, key=lambda r: r["first"])
    stats = merge_stats(FeatureStats(r["n"], r["mean"], r["m2"]) for r in results)
    histogram = None
    if n_classes is not None and results[0]["labels"] is not None:
        histogram = sum(np.bincount(r["labels"], minlength=n_classes) for r in results)
    return SplitFeatures(stats, histogram, np.concatenate([r["kept_features"] for r in results]),
                         np.concatenate([r["kept_x"] for r in results]))


def features_of(sources: dict, extractor: Extractor, keep: int, num_workers: int = 2,
                cpus_per_worker: float = 1.0, n_classes: int | None = None,
                gpus_per_worker: float = 0.0) -> dict:
    """Feature statistics of several splits, ``{name: (data_dir, split)}``, computed shard by
    shard on one pool of Ray actors and merged in shard order; ``keep`` bounds the features
    returned per split for pairwise metrics (KID, P&R). Returns ``{name: SplitFeatures}``."""
    calls = [call for name, (data_dir, split) in sources.items()
             for call in _shard_calls(name, Path(data_dir).absolute(), split, int(keep))]
    results = {name: [] for name in sources}
    map_actors(FeatureWorker, (extractor, max(1, int(cpus_per_worker))), calls, num_workers,
               cpus_per_worker, lambda r: results[r["name"]].append(r), gpus_per_worker=gpus_per_worker)
    return {name: _merge(found, n_classes) for name, found in results.items()}


def split_features(data_dir, split: str, extractor: Extractor, keep: int, num_workers: int = 2,
                   cpus_per_worker: float = 1.0, n_classes: int | None = None) -> SplitFeatures:
    """``features_of`` for one split."""
    return features_of({split: (data_dir, split)}, extractor, keep, num_workers, cpus_per_worker,
                       n_classes)[split]
