"""The data stages: prepare (source -> webdataset shards + parquet manifest) and the FD
feature extractor trained on the real training split."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from diffusion_core.data import shards, sources
from diffusion_core.data.atomic import replacing_folder
from diffusion_core.features import classifier as clf
from flows.config.params import ConfigError, Params
from flows.tracking.costs import measured


@measured("prepare")
def prepare(params: Params) -> dict:
    """Load the source, split it (seeded) and write webdataset shards plus the manifest. Every
    check comes before the first write, and write_shards swaps a finished folder in, so a
    refused source leaves the previous shards whole."""
    data = params.data
    shards.check_replaceable(data.out_dir)  # before the (possibly long) read of the source
    if data.source.startswith("toy:"):
        x, y = sources.load_source(data.source, data.toy_train_size + data.toy_test_size, data.seed)
        test_size = data.toy_test_size
    else:
        x, y = sources.load_source(data.source, 0, data.seed)
        test_size = data.test_size
    if test_size >= len(x):
        raise ConfigError(f"data.test_size: holds out {test_size} of the {len(x)} examples of "
                          f"{data.source}, leaving none to train on")
    params.check_data(x.shape[1:], len(x) - test_size, test_size)
    _check_feeds_training(params, len(x) - test_size, sources.data_kind(x))
    x_tr, y_tr, x_te, y_te = sources.train_test_split(x, y, test_size, data.seed)
    manifest = shards.write_shards(data.out_dir, {"train": (x_tr, y_tr), "test": (x_te, y_te)},
                                   data.samples_per_shard, {"source": data.source, "seed": data.seed})
    print(f"prepare: {len(x_tr)} train / {len(x_te)} test examples of {data.source} -> {manifest}")
    return {"train": len(x_tr), "test": len(x_te), "manifest": str(manifest)}


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
    """The in-domain feature extractor for FD: a small CNN on the real training split."""
    meta = dataset_meta(params)
    with replacing_folder(params.classifier.out_dir) as out:  # the old one stays until this is done
        if meta["kind"] != "image" or not meta.get("has_labels"):
            summary = {"applicable": False, "reason": "needs labelled image data"}
        else:
            x_tr, y_tr = shards.load_split(params.data.out_dir, "train")
            x_te, y_te = shards.load_split(params.data.out_dir, "test")
            model = clf.train_classifier(x_tr, y_tr, epochs=params.classifier.epochs,
                                         seed=params.classifier.seed)
            clf.save_classifier(model, out)
            summary = {"applicable": True, "test_accuracy": clf.accuracy(model, x_te, y_te),
                       "sha256": clf.classifier_hash(out)}
            print(f"classifier: test accuracy {summary['test_accuracy']:.4f}")
        (out / "classifier_metrics.json").write_text(json.dumps(summary, indent=2))
    return summary
