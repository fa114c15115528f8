"""The data stages: prepare (source -> webdataset shards + parquet manifest: train, val, test,
and the FD feature extractor's own split for images) and that extractor, trained on its split
alone: a classifier on the `classifier` split of labelled images, a contrastive network (no
labels) on the `extractor` split of unlabelled ones."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from diffusion_core.data import shards, sources
from diffusion_core.data.atomic import replacing_folder
from diffusion_core.features import classifier as clf
from diffusion_core.features import contrastive
from flows.config.params import ConfigError, Params
from flows.tracking.costs import measured

CLASSIFIER_SPLIT = "classifier"  # labelled images: the only images the FD classifier trains on
EXTRACTOR_SPLIT = "extractor"  # unlabelled images: the only ones the contrastive network trains on


@measured("prepare")
def prepare(params: Params) -> dict:
    """Load the source, split it (seeded, disjoint: train, val, test, and the feature
    extractor's split for images) and write webdataset shards plus the manifest. Every check comes before
    the first write, and write_shards swaps a finished folder in, so a refused source leaves
    the previous shards whole."""
    data = params.data
    shards.check_replaceable(data.out_dir)  # before the (possibly long) read of the source
    toy_total = data.toy_train_size + data.toy_val_size + data.toy_test_size
    x, y = sources.load_source(data.source, toy_total, data.seed)  # n: toys only
    held_out = _held_out_sizes(data, x, y)
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


def extractor_split(kind: str, has_labels: bool) -> str | None:
    """The split FD's feature extractor trains on: `classifier` for labelled images (as
    before: digits' splits stay as they were), `extractor` for unlabelled ones; none for vectors."""
    if kind != "image":
        return None
    return CLASSIFIER_SPLIT if has_labels else EXTRACTOR_SPLIT


def _held_out_sizes(data, x, y) -> dict:
    """{split: size} held out, checked: every image set holds out data.classifier_size images
    for the feature extractor, under the name of the extractor it feeds (order kept: it fixes
    which images each split gets)."""
    kind = sources.data_kind(x)
    sizes = data.held_out_sizes(labelled_images=kind == "image")  # "classifier" = the extractor's split
    data.check_held_out(sizes, len(x))
    split = extractor_split(kind, y is not None)
    return {(split if name == CLASSIFIER_SPLIT else name): size for name, size in sizes.items()}


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
    """The in-domain feature extractor for FD, trained on its own split alone (extractor_split),
    so the train split (the floor's real pool), val and test are images it never saw: a
    classifier for labelled images (accuracy measured on val), a contrastive network for
    unlabelled ones (view matching measured on val). The summary records which, what it
    trained on (split, size, the images' sha256) and the manifest of the shards they came from."""
    meta = dataset_meta(params)
    split = extractor_split(meta["kind"], bool(meta.get("has_labels")))
    if split is not None and split not in meta.get("split_sizes", {}):
        raise ValueError(f"{params.data.out_dir} has no {split!r} split (shards prepared before it was "
                         f"held out); run `diffusion prepare` again")
    with replacing_folder(params.classifier.out_dir) as out:  # the old one stays until this is done
        if split is None:
            summary = {"applicable": False, "reason": "needs image data"}
        else:
            x_fit, y_fit = shards.load_split(params.data.out_dir, split)
            x_val, y_val = shards.load_split(params.data.out_dir, "val")
            fit = _fit_classifier if split == CLASSIFIER_SPLIT else _fit_contrastive
            summary = {"applicable": True, **fit(params, x_fit, y_fit, x_val, y_val, out),
                       "trained_split": split, "trained_size": len(x_fit),
                       "trained_images_sha256": images_sha256(x_fit),
                       "data_manifest_sha256": manifest_hash(params), "sha256": clf.classifier_hash(out)}
        (out / "classifier_metrics.json").write_text(json.dumps(summary, indent=2))
    return summary


def _fit_classifier(params: Params, x_fit, y_fit, x_val, y_val, out: Path) -> dict:
    model = clf.train_classifier(x_fit, y_fit, epochs=params.classifier.epochs, seed=params.classifier.seed)
    clf.save_classifier(model, out)
    accuracy = clf.accuracy(model, x_val, y_val)
    print(f"classifier: trained on {len(x_fit)} {CLASSIFIER_SPLIT}-split images, val accuracy {accuracy:.4f}")
    return {"feature_extractor": "classifier", "val_accuracy": accuracy}


def _fit_contrastive(params: Params, x_fit, _y, x_val, _y_val, out: Path) -> dict:
    c = params.classifier
    model = contrastive.train_contrastive(x_fit, epochs=c.contrastive_epochs,
                                          temperature=c.contrastive_temperature, seed=c.seed)
    contrastive.save_contrastive(model, out)
    matched = contrastive.view_match_accuracy(model, x_val, seed=c.seed)
    print(f"contrastive feature network: trained on {len(x_fit)} {EXTRACTOR_SPLIT}-split images (no "
          f"labels), val views matched {matched:.4f} (chance {1 / (2 * len(x_val) - 1):.4f})")
    return {"feature_extractor": "contrastive", "val_view_match": matched,
            "objective": f"SimCLR NT-Xent, temperature {c.contrastive_temperature}, {c.contrastive_epochs} epochs"}


def images_sha256(x) -> str:
    """sha256 of a set of examples, as float32 in their order: which images a model saw."""
    return hashlib.sha256(np.ascontiguousarray(x, dtype=np.float32).tobytes()).hexdigest()
