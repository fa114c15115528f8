"""The data stages: prepare (source -> webdataset shards + parquet manifest: train, val, test,
and classifier for labelled images) and the FD feature extractor, trained on the classifier
split alone."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from diffusion_core.data import shards, sources
from diffusion_core.data.atomic import replacing_folder
from diffusion_core.features import classifier as clf
from flows.config.params import ConfigError, Params
from flows.tracking.costs import measured

CLASSIFIER_SPLIT = "classifier"  # the only images the FD feature extractor trains on


@measured("prepare")
def prepare(params: Params) -> dict:
    """Load the source, split it (seeded, disjoint: train, val, test, and classifier for
    labelled images) and write webdataset shards plus the manifest. Every check comes before
    the first write, and write_shards swaps a finished folder in, so a refused source leaves
    the previous shards whole."""
    data = params.data
    shards.check_replaceable(data.out_dir)  # before the (possibly long) read of the source
    toy_total = data.toy_train_size + data.toy_val_size + data.toy_test_size
    x, y = sources.load_source(data.source, toy_total, data.seed)  # n: toys only
    held_out = data.held_out_sizes(labelled_images=uses_classifier(x, y))
    data.check_held_out(held_out, len(x))
    n_train = len(x) - sum(held_out.values())
    params.check_data(x.shape[1:], n_train, (held_out["val"], held_out["test"]))
    _check_feeds_training(params, n_train, sources.data_kind(x))
    splits = sources.held_out_split(x, y, held_out, data.seed)
    manifest = shards.write_shards(data.out_dir, splits, data.samples_per_shard,
                                   {"source": data.source, "seed": data.seed})
    sizes = {name: len(split_x) for name, (split_x, _) in splits.items()}
    print(f"prepare: {' / '.join(f'{n} {name}' for name, n in sizes.items())} examples of "
          f"{data.source} -> {manifest}")
    return {**sizes, "manifest": str(manifest)}


def uses_classifier(x, y) -> bool:
    """FD's in-domain classifier applies to labelled images only."""
    return y is not None and sources.data_kind(x) == "image"


def _check_feeds_training(params: Params, n_train: int, kind: str) -> None:
    """The train split's shards reach every Ray Train worker and each of its loader workers
    (ShardStream refuses fewer), and give every Ray worker at least one full batch (else train
    fails, or without train.cache_in_memory spins, only after Ray has started). Checked here,
    where the data's size and kind are known, before any shard is written."""
    per_shard, workers = params.data.samples_per_shard, params.ray.num_workers
    loaders, batch = max(1, params.train.loader_workers), params.profile(kind).batch_size
    sizes = [min(per_shard, n_train - start) for start in range(0, n_train, per_shard)]
    if len(sizes) < workers * loaders:
        raise ConfigError(f"data.samples_per_shard: {per_shard} cuts the {n_train} training examples "
                          f"into {len(sizes)} shards, fewer than ray.num_workers x "
                          f"max(1, train.loader_workers) = {workers * loaders}; lower it")
    per_rank = batch // workers  # >= 1: params.check_data
    for rank in range(workers):
        mine = sizes[rank::workers]
        if all(sum(mine[w::loaders]) < per_rank for w in range(loaders)):
            raise ConfigError(f"{kind}.batch_size: Ray Train worker {rank} streams {sum(mine)} "
                              f"training examples over {loaders} loader worker(s), less than one "
                              f"batch of {per_rank} ({kind}.batch_size={batch} / ray.num_workers="
                              f"{workers}); lower the batch size or give more data")


def dataset_meta(params: Params) -> dict:
    return shards.read_manifest(params.data.out_dir)[1]


def manifest_hash(params: Params) -> str:
    return hashlib.sha256((Path(params.data.out_dir) / "manifest.parquet").read_bytes()).hexdigest()


@measured("train-classifier")
def train_classifier(params: Params) -> dict:
    """The in-domain feature extractor for FD: a small CNN trained on the `classifier` split
    alone, so the train split (the floor's real pool), val and test are images it never saw;
    its accuracy is measured on val. The summary records what it trained on (split, size, the
    images' sha256) and the manifest of the shards they came from."""
    meta = dataset_meta(params)
    with replacing_folder(params.classifier.out_dir) as out:  # the old one stays until this is done
        if meta["kind"] != "image" or not meta.get("has_labels"):
            summary = {"applicable": False, "reason": "needs labelled image data"}
        else:
            x_fit, y_fit = shards.load_split(params.data.out_dir, CLASSIFIER_SPLIT)
            x_val, y_val = shards.load_split(params.data.out_dir, "val")
            model = clf.train_classifier(x_fit, y_fit, epochs=params.classifier.epochs,
                                         seed=params.classifier.seed)
            clf.save_classifier(model, out)
            summary = {"applicable": True, "val_accuracy": clf.accuracy(model, x_val, y_val),
                       "trained_split": CLASSIFIER_SPLIT, "trained_size": len(x_fit),
                       "trained_images_sha256": images_sha256(x_fit),
                       "data_manifest_sha256": manifest_hash(params), "sha256": clf.classifier_hash(out)}
            print(f"classifier: trained on {len(x_fit)} {CLASSIFIER_SPLIT}-split images, "
                  f"val accuracy {summary['val_accuracy']:.4f}")
        (out / "classifier_metrics.json").write_text(json.dumps(summary, indent=2))
    return summary


def images_sha256(x) -> str:
    """sha256 of a set of examples, as float32 in their order: which images a model saw."""
    return hashlib.sha256(np.ascontiguousarray(x, dtype=np.float32).tobytes()).hexdigest()
