"""The pipeline's training path against a plain in-memory loop: the same model, batch, steps and
threads, trained once by `training_step` on arrays in memory (the reference) and once by the
train stage (Ray Train, the webdataset loader, MLflow logging and checkpoints at params.yaml's
intervals). Target: at least 90% of the plain loop's steps per second.

Two figures: the loop's own rate inside the Ray worker (its `loop_seconds`: loader, logging and
checkpoints included) and the stage's end-to-end rate (with Ray's start-up of the worker group,
a fixed cost that a longer run amortizes). Both are measured in the same run in a temporary
workspace on the digits data; `--repeats` alternates the two paths. Each ratio is paired: a
repeat's pipeline rate over the plain loop's timed just before it (this machine's speed drifts
by 5-10% over minutes, which unpaired medians mistake for overhead); the median ratio is given
with its range.

    .venv/bin/python benchmarks/pipeline_overhead.py [--run ddpm-paper] [--steps 1200] [--repeats 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffusion_core.data.shards import load_split  # noqa: E402
from diffusion_core.frameworks import DiffusionModel  # noqa: E402
from diffusion_core.training.ema import EMA  # noqa: E402
from diffusion_core.training.lr_schedule import lr_factor, warmup_steps  # noqa: E402
from diffusion_core.training.precision import as_channels_last, tune_network  # noqa: E402
from diffusion_core.training.step import adam, training_step  # noqa: E402
from flows.config.params import parse_params  # noqa: E402
from flows.entry.cli import TELEMETRY_OFF  # noqa: E402
from flows.stages import data as data_stage  # noqa: E402
from flows.stages import train as train_stage  # noqa: E402


def workspace_params(run: str, steps: int, out_dir: str = "models"):
    """params.yaml on digits, training `run` for `steps` steps into `out_dir`."""
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["data"]["source"] = "digits"
    data["train"].update(frameworks=[run], out_dir=out_dir)
    data["image"]["steps"] = steps
    return parse_params(data)


def plain_loop(params, run: str) -> float:
    """Seconds for params.image.steps steps of the run's model on the training split in memory."""
    profile = params.image
    x_train = torch.from_numpy(load_split(params.data.out_dir, "train")[0])
    model = DiffusionModel(train_stage.model_config(params, run, data_stage.dataset_meta(params)))
    tune_network(model.denoiser.net, params.train.channels_last)  # the memory order the stage trains in
    optimizer = adam(model.denoiser.net.parameters(), profile.lr)
    ema, generator = EMA(model.denoiser.net, params.train.ema_gamma), torch.Generator().manual_seed(0)
    torch.set_num_threads(max(1, int(params.ray.cpus_per_worker * params.ray.num_workers)))
    start = time.perf_counter()
    for step in range(profile.steps):
        batch = x_train[torch.randint(len(x_train), (profile.batch_size,), generator=generator)]
        batch = as_channels_last(batch, params.train.channels_last)
        lr = profile.lr * lr_factor(step, profile.steps, warmup_steps(profile.steps), params.train.lr_schedule)
        training_step(model, model.denoiser, optimizer, ema, batch, generator, lr, params.train.grad_clip)
    return time.perf_counter() - start


def pipeline_run(run: str, steps: int, attempt: int) -> tuple[float, float]:
    """(loop seconds, stage seconds) of the train stage into a fresh output folder."""
    params = workspace_params(run, steps, f"models-{attempt}")
    summary = train_stage.train(params, run)
    assert summary["steps"] == params.image.steps, summary
    return summary["loop_seconds"], summary["train_seconds"]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="ddpm-paper")
    parser.add_argument("--steps", type=int, default=1200, help="params.yaml's image.steps")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    plain, loop, stage, here = [], [], [], os.getcwd()
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)  # the workspace: data, models and the local MLflow store
        try:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
            for key, value in TELEMETRY_OFF.items():  # as the `diffusion` command runs the stage
                os.environ.setdefault(key, value)
            params = workspace_params(args.run, args.steps)
            data_stage.prepare(params)
            for attempt in range(args.repeats):
                plain.append(args.steps / plain_loop(params, args.run))
                loop_s, stage_s = pipeline_run(args.run, args.steps, attempt)
                loop.append(args.steps / loop_s)
                stage.append(args.steps / stage_s)
        finally:
            os.chdir(here)
    result = {name: _summary(rates, plain) for name, rates in (("plain", plain), ("loop", loop), ("stage", stage))}
    print(f"{args.run} on digits, {args.steps} steps, batch {params.image.batch_size}, "
          f"{params.ray.num_workers} worker(s) x {params.ray.cpus_per_worker:g} CPU; steps/s, median (range) "
          f"of {args.repeats}")
    for name, label in (("plain", "plain in-memory loop (reference)"),
                        ("loop", "pipeline's loop in the Ray worker"), ("stage", "train stage end to end")):
        row = result[name]
        print(f"  {label:>34}: {row['median']:.2f} ({row['min']:.2f}-{row['max']:.2f}), "
              f"{row['ratio']:.3f}x ({row['ratio_min']:.3f}-{row['ratio_max']:.3f}) paired")
    return result


def _summary(rates: list[float], reference: list[float]) -> dict:
    """Median and range of the rates, and of their ratios to the reference's rate in the same repeat."""
    ratios = [rate / plain for rate, plain in zip(rates, reference)]
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


if __name__ == "__main__":
    main()
