"""The train stage: one framework on Ray Train, its MLflow run created before the first step."""
from __future__ import annotations

import time
from pathlib import Path

from diffusion_core.data.atomic import replacing_folder, write_json
from diffusion_core.training.lr_schedule import warmup_steps
from flows.config.params import Params, as_dict
from flows.config.recipes import recipe_of, split_run
from flows.distributed.train_ray import fit
from flows.stages.data import dataset_meta, manifest_hash
from flows.tracking import runs as tracking


def model_config(params: Params, framework: str, meta: dict) -> dict:
    """The JSON config a DiffusionModel is rebuilt from, for the run named `framework` (a
    framework, or framework-recipe): it records the framework and the recipe."""
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
    return {"framework": split_run(framework)[0], "recipe": recipe_of(framework),
            **section.model_parts(profile),
            "sigma_data": profile.sigma_data, "network": network, "data_shape": list(shape)}


def train(params: Params, framework: str) -> dict:
    """Train one framework with Ray Train; the MLflow run exists before fit()."""

    meta = dataset_meta(params)
    profile = params.profile(meta["kind"])
    out = Path(params.train.out_dir) / framework
    experiment = tracking.experiment_name(params.data.source)
    model = model_config(params, framework, meta)  # bad params stop here, before the run exists
    run_id = tracking.start_run(experiment, f"{framework}", as_dict(params),
                                {"framework": split_run(framework)[0], "run": framework,
                                 "recipe": recipe_of(framework), "data_manifest_sha256": manifest_hash(params),
                                 "dataset": params.data.source})
    loop_config = {
        "framework": framework, "model": model, "run_id": run_id,
        "tracking_uri": tracking.tracking_uri(),
        "data_dir": str(Path(params.data.out_dir).resolve()), "seed": params.train.seed,
        "steps": profile.steps, "batch_size": profile.batch_size, "lr": profile.lr,
        "warmup_steps": warmup_steps(profile.steps), "grad_clip": params.train.grad_clip,
        "ema_gamma": params.train.ema_gamma,
        "lr_schedule": params.framework(framework).lr_schedule or params.train.lr_schedule,
        "log_every": params.train.log_every,
        "checkpoint_every": params.train.checkpoint_every, "time_limit_s": params.train.time_limit_s,
        "nonfinite": params.train.nonfinite, "nonfinite_limit": params.train.nonfinite_limit,
        "loader_workers": params.train.loader_workers, "cache_in_memory": params.train.cache_in_memory,
        "threads": max(1, int(params.ray.cpus_per_worker)),
    }
    start = time.time()
    with replacing_folder(out) as staging:  # the last good model stays until the new one is whole
        metrics = fit(loop_config, params.ray, f"{experiment}-{framework}-{run_id[:8]}", staging)
        summary = _summary(metrics, profile.steps, params.train.time_limit_s, time.time() - start)
        tracking.save_run_id(staging, run_id, experiment)
        write_json(staging / "train_summary.json", summary)
    tracking.log_metrics(run_id, {"train_seconds": summary["train_seconds"]})
    tracking.set_tags(run_id, {"stopped_by": summary["stopped_by"], "steps": summary["steps"]})
    if summary["stopped_by"] == "time_limit":
        print(f"train {framework}: the safety cap train.time_limit_s={params.train.time_limit_s:g} s "
              f"stopped the run at step {summary['steps']} of {profile.steps}")
    return summary


def _summary(metrics: dict, planned_steps: int, time_limit_s: float | None, seconds: float) -> dict:
    """What the run did: its steps against the planned ones, and what stopped it."""
    stopped_by = "time_limit" if metrics.get("time_limited") else "steps"
    return {"steps": int(metrics.get("step", 0)), "planned_steps": planned_steps,
            "stopped_by": stopped_by, "time_limit_s": time_limit_s,
            "final_loss": metrics.get("loss"), "world_size": metrics.get("world_size"),
            "skipped_batches": int(metrics.get("skipped_batches", 0)),
            "loop_seconds": metrics.get("loop_seconds"),  # the training loop alone
            "train_seconds": seconds}  # with Ray's worker start-up
