"""The data stages: prepare (source -> webdataset shards + parquet manifest) and the FD
feature extractor trained on the real training split."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from diffusion_core.data import shards, sources
from diffusion_core.data.atomic import replacing_folder
from diffusion_core.features import classifier as clf
from flows.config.params import Params


def prepare(params: Params) -> dict:
    """Load the source, split it (seeded) and write webdataset shards plus the manifest."""
    data = params.data
    if data.source.startswith("toy:"):
        x, y = sources.load_source(data.source, data.toy_train_size + data.toy_test_size, data.seed)
        test_size = data.toy_test_size
    else:
        x, y = sources.load_source(data.source, 0, data.seed)
        test_size = data.test_size
    if test_size >= len(x):
        raise ValueError(f"data.test_size={test_size} leaves no training data ({len(x)} examples)")
    x_tr, y_tr, x_te, y_te = sources.train_test_split(x, y, test_size, data.seed)
    manifest = shards.write_shards(data.out_dir, {"train": (x_tr, y_tr), "test": (x_te, y_te)},
                                   data.samples_per_shard, {"source": data.source, "seed": data.seed})
    print(f"prepare: {len(x_tr)} train / {len(x_te)} test examples of {data.source} -> {manifest}")
    return {"train": len(x_tr), "test": len(x_te), "manifest": str(manifest)}


def dataset_meta(params: Params) -> dict:
    return shards.read_manifest(params.data.out_dir)[1]


def manifest_hash(params: Params) -> str:
    return hashlib.sha256((Path(params.data.out_dir) / "manifest.parquet").read_bytes()).hexdigest()


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
