"""The pipeline's stages. Each reads its validated params, calls the core, records what came out.

`dvc.yaml` calls them through the `diffusion` command; the Prefect flow calls them directly.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from diffusion_core import classifier as clf
from diffusion_core.data import shards, sources
from diffusion_core.frameworks import DiffusionModel
from diffusion_core.lr_schedule import warmup_steps
from diffusion_core.noise import PerSampleNoise

from . import plots, tracking
from .config import Params, as_dict


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
    out = Path(params.classifier.out_dir)
    meta = dataset_meta(params)
    _replace_dir(out)
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


def _replace_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def model_config(params: Params, framework: str, meta: dict) -> dict:
    """The JSON config a DiffusionModel is rebuilt from."""
    profile, shape = params.profile(meta["kind"]), meta["shape"]
    net = profile.network
    if meta["kind"] == "vector":
        network = dict(kind="mlp", dim=shape[0], width=net.width, depth=net.depth, emb_dim=net.emb_dim)
    else:
        network = dict(kind="unet", channels=shape[0], image_size=shape[1], base=net.base,
                       mults=list(net.mults), blocks=net.blocks, emb_dim=net.emb_dim)
    section = params.framework(framework)
    if hasattr(section, "check_data"):  # checks that need the data's shape (ConfigError)
        section.check_data(framework, shape)
    return {"framework": framework, **section.model_parts(profile),
            "sigma_data": profile.sigma_data, "network": network, "data_shape": list(shape)}


def train(params: Params, framework: str) -> dict:
    """Train one framework with Ray Train; the MLflow run exists before fit()."""
    from .train_ray import fit

    meta = dataset_meta(params)
    profile = params.profile(meta["kind"])
    out = Path(params.train.out_dir) / framework
    experiment = tracking.experiment_name(params.data.source)
    model = model_config(params, framework, meta)  # bad params stop here, before the run exists
    run_id = tracking.start_run(experiment, f"{framework}", as_dict(params),
                                {"framework": framework, "data_manifest_sha256": manifest_hash(params),
                                 "dataset": params.data.source})
    loop_config = {
        "framework": framework, "model": model, "run_id": run_id,
        "tracking_uri": tracking.tracking_uri(),
        "data_dir": str(Path(params.data.out_dir).resolve()), "seed": params.train.seed,
        "steps": profile.steps, "batch_size": profile.batch_size, "lr": profile.lr,
        "warmup_steps": warmup_steps(profile.steps), "grad_clip": params.train.grad_clip,
        "ema_gamma": params.train.ema_gamma,
        "lr_schedule": params.train.lr_schedule, "log_every": params.train.log_every,
        "checkpoint_every": params.train.checkpoint_every, "time_limit_s": params.train.time_limit_s,
        "loader_workers": params.train.loader_workers, "cache_in_memory": params.train.cache_in_memory,
        "threads": max(1, int(params.ray.cpus_per_worker)),
    }
    start = time.time()
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as staging:
        metrics = fit(loop_config, params.ray, f"{experiment}-{framework}-{run_id[:8]}", Path(staging))
        _replace_dir(out)
        shutil.copytree(staging, out, dirs_exist_ok=True)
    tracking.save_run_id(out, run_id, experiment)
    summary = {"steps": int(metrics.get("step", 0)), "final_loss": metrics.get("loss"),
               "world_size": metrics.get("world_size"),
               "loop_seconds": metrics.get("loop_seconds"),  # the training loop, which the time limit bounds
               "train_seconds": time.time() - start}  # with Ray's worker start-up and the copy-out
    tracking.log_metrics(run_id, {"train_seconds": summary["train_seconds"]})
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def sample_seeds(params: Params, first: int, count: int) -> list[int]:
    """The seeds of samples first .. first+count-1: sample i is fixed by (sample.seed, i) alone."""
    return [params.sample.seed * 1_000_000_007 + i for i in range(first, first + count)]


def draw_samples(params: Params, framework: str, model: DiffusionModel, seeds: list[int],
                 kind: str, shape: tuple) -> tuple[np.ndarray, int]:
    """Samples for `seeds` with the framework's sampler (float32; images clipped to [-1, 1])."""
    profile = params.profile(kind)
    clip = profile.clip if kind == "image" else None
    settings = params.framework(framework).sampler
    x, nfe = model.sample(len(seeds), shape, settings, PerSampleNoise(seeds), clip)
    return (x.clamp(-1, 1) if kind == "image" else x).numpy().astype(np.float32), nfe


def sample(params: Params, framework: str) -> dict:
    """Draw the profile's number of samples on Ray actors (flows.sample_ray: one seed per
    sample, resumable parts) and write shards, an .npz and a picture."""
    from .sample_ray import draw_stage

    meta = dataset_meta(params)
    out = Path(params.sample.out_dir) / framework
    start = time.time()
    x, nfe, drawing = draw_stage(params, framework, meta, out / "parts")
    shards.write_shards(out / "shards", {"samples": (x, None)}, params.sample.samples_per_shard,
                        {"framework": framework, "seed": params.sample.seed})
    np.savez(out / "samples.npz", x=x)
    real, _ = shards.load_split(params.data.out_dir, "test")
    sampler = params.framework(framework).sampler
    plots.save_picture(x, real, out / "samples.png", f"{framework}: {sampler['name']}, NFE {nfe}")
    info = {"num_samples": len(x), "sampler": sampler["name"], "sampler_settings": sampler,
            "nfe": nfe, "seed": params.sample.seed, "seconds": time.time() - start,
            "workers": drawing["workers"], "drawn": drawing["drawn"], "reused": drawing["reused"],
            "samples_per_s": drawing["samples_per_s"]}
    (out / "sampling.json").write_text(json.dumps(info, indent=2))
    run_id = tracking.load_run_id(Path(params.train.out_dir) / framework)
    tracking.log_metrics(run_id, {"sample_nfe": nfe, "sample_seconds": info["seconds"]})
    tracking.log_artifacts(run_id, out / "samples.png", "samples")
    return info
