"""The train stage: one framework on Ray Train, its MLflow run created before the first step.

A run under way has a record beside its model folder (`models/.<run>.in-progress.json`): its
MLflow run id, its Ray Train run name and the fingerprint of what fixes its result. A train call
whose inputs match continues that run (after a kill, a signal, a failed Prefect try); a changed
config starts a new one and says what changed. The record goes once the model is in place."""
from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime
from pathlib import Path

from diffusion_core.data.atomic import replacing_folder, write_json
from flows.config.params import Params, as_dict
from flows.config.recipes import base_key, recipe_of, run_seed, split_run
from flows.distributed.train_ray import NonFiniteLoss, fit
from flows.stages.data import dataset_meta, manifest_hash
from flows.tracking import runs as tracking
from flows.tracking import ui
from flows.tracking.costs import measured
from flows.tracking.run_status import stage_run


def model_config(params: Params, framework: str, meta: dict) -> dict:
    """The JSON config a DiffusionModel is rebuilt from, for the run named `framework` (a
    framework, or framework-recipe): it records the framework, the recipe, the network as the
    recipe sets it and what the network sees (conditioning)."""
    profile, shape = params.profile(meta["kind"]), meta["shape"]
    choices = params.training(framework, meta["kind"])
    settings = {**choices.network_settings(), "embedding": choices.record()["embedding"]}
    if meta["kind"] == "vector":
        network = dict(kind="mlp", dim=shape[0], **settings)
    else:
        network = dict(kind="unet", channels=shape[0], image_size=shape[1], **settings)
    section = params.framework(framework)
    if hasattr(section, "check_data"):  # checks that need the data's shape (ConfigError)
        section.check_data(framework, shape)
    return {"framework": split_run(framework)[0], "recipe": recipe_of(framework),
            **section.model_parts(profile), "conditioning": choices.conditioning,
            "sigma_data": profile.sigma_data, "network": network, "data_shape": list(shape)}


def _loop_config(params: Params, framework: str, profile, model: dict) -> dict:
    """The training loop's settings, each of which bears on the trained weights (train adds
    where the loop reads the data and which MLflow run it logs to); the recipe's optimiser,
    EMA and batch size resolved over the shared defaults (params.training)."""
    choices = params.training(framework, "vector" if model["network"]["kind"] == "mlp" else "image")
    optimizer = choices.optimizer
    return {
        "framework": framework, "model": model, "seed": params.train_seed(framework),
        "steps": profile.steps, "batch_size": choices.batch_size, "lr": optimizer.lr,
        "warmup_steps": optimizer.warmup_steps, "grad_clip": optimizer.grad_clip,
        "ema": choices.ema.record(), "lr_schedule": optimizer.lr_schedule,
        "recipe": choices.record(),  # every resolved choice: train_summary.json, MLflow params
        "log_every": params.train.log_every,
        "checkpoint_every": params.train.checkpoint_every, "time_limit_s": params.train.time_limit_s,
        "nonfinite": params.train.nonfinite, "nonfinite_limit": params.train.nonfinite_limit,
        "loader_workers": params.train.loader_workers, "cache_in_memory": params.train.cache_in_memory,
        "precision": params.train.precision, "channels_last": params.train.channels_last,
        "compile": params.train.compile,
        "threads": max(1, int(params.ray.cpus_per_worker)),
    }


def _run_inputs(params: Params, loop_config: dict) -> dict:
    """What fixes a run's result, as JSON values: the loop's settings, the data (its manifest's
    sha256) and the workers' layout (each rank draws its own shards and noise)."""
    inputs = {**loop_config, "data_manifest_sha256": manifest_hash(params),
              "num_workers": params.ray.num_workers, "use_gpu": params.ray.use_gpu}
    return json.loads(json.dumps(inputs))


def _fingerprint(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def in_progress_path(params: Params, framework: str) -> Path:
    """The record of the run of `framework` under way: written when the run starts, removed
    once its model is in place, so that a train call after a crash, a kill, a signal or a
    failed Prefect try finds the run to continue."""
    return Path(params.train.out_dir) / f".{framework}.in-progress.json"




def _unfinished_run(path: Path, inputs: dict, framework: str) -> dict | None:
    """The in-progress record at `path` if it is a run of the same inputs whose MLflow run is
    still there; otherwise None, saying why a record there is not used."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        fingerprint, run_id, name = record["fingerprint"], record["run_id"], record["ray_run_name"]
    except (ValueError, KeyError) as err:
        print(f"train {framework}: ignoring the unreadable record {path} ({err}); starting a new run")
        return None
    if fingerprint != _fingerprint(inputs):
        old = record.get("inputs", {})
        changed = sorted(key for key in old.keys() | inputs.keys() if old.get(key) != inputs.get(key))
        print(f"train {framework}: {', '.join(changed) or 'the params'} changed since the unfinished run "
              f"{run_id} began (Ray run {name}); starting a new run, the old one stays as it is")
        return None
    if not tracking.run_exists(run_id):
        print(f"train {framework}: the unfinished run {run_id} is no longer in MLflow; starting a new run")
        return None
    print(f"train {framework}: continuing the unfinished run {run_id} (Ray run {name}) from its "
          f"latest checkpoint")
    return record


def _start_or_continue(params: Params, framework: str, experiment: str, inputs: dict) -> dict:
    """The in-progress record of the run to train: the unfinished run of the same inputs, or a
    new MLflow run (created before any step) with its Ray Train run name."""
    path = in_progress_path(params, framework)
    record = _unfinished_run(path, inputs, framework)
    if record is not None:
        return record
    tags = {"framework": split_run(framework)[0], "run": framework, "run_key": framework,
            "base_key": base_key(framework), "recipe": recipe_of(framework),
            "dataset": params.data.dataset, "data_source": params.data.source, "seed": str(inputs["seed"]),
            "data_manifest_sha256": inputs["data_manifest_sha256"]}
    replicate = run_seed(framework)[1] is not None  # a seed replicate: a child of its base key's run
    logged = {**as_dict(params), "recipe": inputs.get("recipe", {})}  # recipe.ema.kind, recipe.optimizer.lr, ...
    run_id = tracking.start_run(experiment, framework, logged, tags,
                                seed_group=base_key(framework) if replicate else None)
    record = {"run_id": run_id, "experiment": experiment,
              "ray_run_name": f"{experiment}-{framework}-{run_id[:8]}",
              "fingerprint": _fingerprint(inputs), "inputs": inputs,
              "started": datetime.now(UTC).isoformat(timespec="seconds")}
    write_json(path, record)
    return record


@measured("train")
def train(params: Params, framework: str) -> dict:
    """Train one framework with Ray Train; the MLflow run exists before fit(). An unfinished
    run of the same params and data is continued: the same MLflow run and Ray Train run, from
    its latest checkpoint. An interrupted run (TrainingInterrupted) leaves the model in place
    as it was; a diverged one (NonFiniteLoss) has ended, and a new call starts afresh."""
    meta = dataset_meta(params)
    profile = params.profile(meta["kind"])
    experiment = params.data.dataset
    model = model_config(params, framework, meta)  # bad params stop here, before the run exists
    loop_config = _loop_config(params, framework, profile, model)
    run = _start_or_continue(params, framework, experiment, _run_inputs(params, loop_config))
    with stage_run(run["run_id"]):  # RUNNING, then FINISHED / FAILED / KILLED
        ui.log_dataset(run["run_id"], experiment, "train", run["inputs"]["data_manifest_sha256"],
                             params.data.out_dir)
        return _fit_in_run(params, framework, run, loop_config, profile)


def _fit_in_run(params: Params, framework: str, run: dict, loop_config: dict, profile) -> dict:
    """fit() into `run`, the model put in place and the run's summary logged."""
    out, experiment = Path(params.train.out_dir) / framework, run["experiment"]
    loop_config.update(run_id=run["run_id"], tracking_uri=tracking.tracking_uri(),
                       data_dir=str(Path(params.data.out_dir).resolve()))
    start = time.time()
    try:
        with replacing_folder(out) as staging:  # the last good model stays until the new one is whole
            metrics = fit(loop_config, params.ray, run["ray_run_name"], staging)
            summary = _summary(metrics, profile.steps, params.train.time_limit_s, time.time() - start,
                               loop_config["seed"])
            summary["recipe"] = {"name": recipe_of(framework), **loop_config["recipe"]}
            tracking.save_run_id(staging, run["run_id"], experiment)
            write_json(staging / "train_summary.json", summary)
    except NonFiniteLoss:
        in_progress_path(params, framework).unlink(missing_ok=True)
        raise
    in_progress_path(params, framework).unlink(missing_ok=True)  # the model is in place: done
    tracking.log_metrics(run["run_id"], {"train_seconds": summary["train_seconds"]})
    tracking.set_tags(run["run_id"], {"stopped_by": summary["stopped_by"], "steps": summary["steps"]})
    if summary["stopped_by"] == "time_limit":
        print(f"train {framework}: the safety cap train.time_limit_s={params.train.time_limit_s:g} s "
              f"stopped the run at step {summary['steps']} of {profile.steps}")
    return summary


def _summary(metrics: dict, planned_steps: int, time_limit_s: float | None, seconds: float,
             seed: int) -> dict:
    """What the run did: its steps against the planned ones, what stopped it, its training seed."""
    stopped_by = "time_limit" if metrics.get("time_limited") else "steps"
    return {"steps": int(metrics.get("step", 0)), "planned_steps": planned_steps, "seed": seed,
            "stopped_by": stopped_by, "time_limit_s": time_limit_s,
            "final_loss": metrics.get("loss"), "world_size": metrics.get("world_size"),
            "skipped_batches": int(metrics.get("skipped_batches", 0)),
            "resumed_from_step": int(metrics.get("resumed_from_step", 0)),
            "metrics_lost": int(metrics.get("metrics_lost", 0)),  # MLflow away for good: counted
            "loop_seconds": metrics.get("loop_seconds"),  # the training loop alone, across restarts
            "train_seconds": seconds}  # this call's, with Ray's worker start-up
