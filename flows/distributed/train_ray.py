"""Ray Train glue: the per-worker loop is plain PyTorch with three marked Ray touch points
(prepare the model, shard the data by rank, report with a checkpoint).

A run resumes where it stopped. Each checkpoint holds, besides the weights, Adam and the EMA,
everything the loop carries: the step (and with it the learning rate), the time spent (for
the cap), and per rank the loss's noise generator and the data position. A restarted worker
group, or the same run name given to `fit` again, goes on from the latest checkpoint and ends
with the weights an uninterrupted run would have. SIGTERM or SIGINT at the driver asks the
workers, through a stop file in the run's storage folder, to checkpoint at the next step
boundary and end; `fit` then raises `TrainingInterrupted`.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from diffusion_core.frameworks import DiffusionModel
from diffusion_core.training.batches import Batches
from diffusion_core.training.ema import EMA, build_ema
from diffusion_core.training.lr_schedule import lr_factor
from diffusion_core.training.nonfinite import NonFinitePolicy
from diffusion_core.training.precision import Precision, as_channels_last, tune_network
from diffusion_core.training.step import adam, training_step
from flows.distributed.ray_cluster import connect, require_resources
from flows.distributed.stop_request import (
    StopRequest,
    TrainingInterrupted,
    clear_stop,
    fit_watching_signals,
    from_rank_zero,
    gather,
    on_every_rank,
    stop_uri,
)
from flows.tracking import runs as tracking

STATE_FILE = "state.pt"

__all__ = ["NonFiniteLoss", "TrainingInterrupted", "fit", "train_loop_per_worker"]


class NonFiniteLoss(RuntimeError):
    """Training met a non-finite loss or gradient and train.nonfinite says to stop."""


# -- what the loop carries from step to step ---------------------------------------------------

def _past_time_limit(started: float, limit_s: float | None) -> bool:
    """Whether the optional safety cap on the loop's wall time has passed, as rank 0 measures
    it and tells the others, so every rank stops at the same step."""
    return limit_s is not None and from_rank_zero(time.time() - started > limit_s)


class _Progress:
    """Loss and throughput over the steps since the last progress line, logged through a
    MetricLog: training never waits on MLflow, and what could not be sent is sent later."""

    def __init__(self, run_id: str | None):
        """`run_id`: rank 0's MLflow run (the others log nothing); its client is made here,
        before the loop's clock starts, not at the first progress line."""
        self.log = tracking.MetricLog(run_id) if run_id else None
        self.reset()

    def reset(self) -> None:
        self.seen, self.loss_sum, self.steps, self.start = 0, 0.0, 0, time.time()

    def add(self, examples: int, loss: float) -> None:
        self.seen, self.loss_sum, self.steps = self.seen + examples, self.loss_sum + loss, self.steps + 1

    def state_dict(self) -> dict:
        """The window's losses, so the first line after a restart averages the same steps as
        an uninterrupted run's (throughput is measured afresh)."""
        return {"loss_sum": self.loss_sum, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.reset()
        self.loss_sum, self.steps = float(state["loss_sum"]), int(state["steps"])

    def flush(self, config: dict, rank: int, step: int, extra: dict) -> None:
        """Rank 0 logs the window's figures to MLflow and prints the progress line."""
        metrics = {"loss": self.loss_sum / max(1, self.steps),
                   "samples_per_s": self.seen / max(time.time() - self.start, 1e-9), **extra}
        if rank == 0:
            self.log.log(metrics, step)
            print(f"[{config['framework']}] step {step}/{config['steps']} loss {metrics['loss']:.4f} "
                  f"{metrics['samples_per_s']:.0f} samples/s", flush=True)
        self.reset()

    def close(self) -> int:
        """Send what is still pending; the number of metrics that never reached MLflow."""
        return self.log.close() if self.log else 0


@dataclass
class _Loop:
    """What the loop carries from one step to the next, which a checkpoint keeps so that a
    restarted worker goes on as if it had never stopped: the step (the learning rate follows
    from it), per rank the loss's noise generator and the data position, the loop time spent
    (`started` is time.time() less it), the progress window, the skipped batches, the last loss."""

    step: int
    generator: torch.Generator
    batches: Batches
    progress: _Progress
    nonfinite: NonFinitePolicy
    started: float
    loss: float = float("nan")
    resumed_from: int = 0

    @classmethod
    def fresh(cls, config: dict, rank: int, world: int) -> _Loop:
        generator = torch.Generator().manual_seed(config["seed"] * 1000 + rank)
        progress = _Progress(config["run_id"] if rank == 0 else None)
        batches = Batches(config["data_dir"], rank, world, config["batch_size"], config["seed"],
                          config["cache_in_memory"], config["loader_workers"])
        nonfinite = NonFinitePolicy(config["nonfinite"], config["nonfinite_limit"], on_every_rank)
        return cls(0, generator, batches, progress, nonfinite, time.time())

    def state_dict(self) -> dict:
        """The loop's state with every rank's generator and data position; a collective call."""
        positions = gather(torch.tensor(self.batches.position(), dtype=torch.int64))
        ranks = [{"generator": g, "epoch": int(p[0]), "batch": int(p[1])}
                 for g, p in zip(gather(self.generator.get_state()), positions)]
        return {"step": self.step, "elapsed_s": time.time() - self.started, "loss": self.loss,
                "skipped": self.nonfinite.skipped, "overflows": self.nonfinite.overflows,
                "progress": self.progress.state_dict(), "ranks": ranks}

    def load_state_dict(self, state: dict, rank: int, world: int) -> None:
        if len(state["ranks"]) != world:
            raise ValueError(f"the checkpoint at step {state['step']} was written by {len(state['ranks'])} "
                             f"workers, this run has {world}: ray.num_workers must stay as the run began")
        mine = state["ranks"][rank]
        self.generator.set_state(mine["generator"])
        self.batches.seek(mine["epoch"], mine["batch"])
        self.step = self.resumed_from = int(state["step"])
        self.started, self.loss = time.time() - float(state["elapsed_s"]), float(state["loss"])
        self.nonfinite.skipped, self.nonfinite.overflows = int(state["skipped"]), int(state.get("overflows", 0))
        self.progress.load_state_dict(state["progress"])


class _Parts(NamedTuple):
    model: DiffusionModel
    denoiser: object  # the one the gradient flows through: model.denoiser, or its DDP wrap
    optimizer: torch.optim.Optimizer
    ema: EMA
    precision: Precision


# -- the worker --------------------------------------------------------------------------------

def _build(config: dict, rank: int, device: torch.device) -> _Parts:
    """The model on the worker's device, its training denoiser (DDP-wrapped by Ray: touch point;
    then in channels-last order and compiled where train.channels_last and train.compile ask),
    Adam, the EMA (on the same device) and the precision's autocast and loss scaler."""
    import ray.train.torch

    torch.manual_seed(config["seed"] + rank)
    model = DiffusionModel(config["model"])
    net = tune_network(model.denoiser.net, config["channels_last"], config["compile"],
                       wrap=ray.train.torch.prepare_model)
    optimizer = adam(net.parameters(), config["lr"])
    return _Parts(model, model.wrap(net), optimizer, build_ema(model.denoiser.net, config["ema"]),
                  Precision(config["precision"], device.type))


def _restore(parts: _Parts, loop: _Loop, config: dict, rank: int, world: int) -> None:
    """Ray touch point: continue from the run's latest checkpoint, if it has one (a restarted
    worker group, or a run continued under the same name)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return
    with checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
    parts.model.denoiser.net.load_state_dict(state["net"])
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.ema.load_state_dict(state["ema"])
    parts.precision.load_state_dict(state.get("precision", {}))
    loop.load_state_dict(state["loop"], rank, world)
    if rank == 0:
        tracking.log_metrics(config["run_id"], {"resumed_from_step": loop.step}, loop.step)
        print(f"[{config['framework']}] resumed from the checkpoint at step {loop.step} (epoch "
              f"{loop.batches.epoch}, batch {loop.batches.index}; {time.time() - loop.started:.1f} s "
              f"of loop time spent)", flush=True)


def _report(parts: _Parts, loop: _Loop, metrics: dict, rank: int) -> None:
    """Ray touch point: report metrics with a checkpoint of all a restart needs (every rank
    takes part in gathering the per-rank state; rank 0 writes it, the others report None)."""
    import ray.train

    state = {"net": parts.model.denoiser.net.state_dict(), "optimizer": parts.optimizer.state_dict(),
             "ema": parts.ema.state_dict(), "precision": parts.precision.state_dict(),
             "loop": loop.state_dict()}
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if rank == 0:
            torch.save(state, Path(directory) / STATE_FILE)
            parts.model.save(Path(directory) / "ema", parts.ema.model.state_dict())
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report({**metrics, "step": loop.step}, checkpoint=checkpoint)


def _step_seed(seed: int, rank: int, step: int) -> int:
    """The global generator's seed at a step: what it draws (a recipe's dropout masks) is fixed
    by (seed, rank, step) alone, so a resumed run draws what an uninterrupted one would have,
    whatever else (a DataLoader's base seed) drew from it since the checkpoint."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def _take_steps(parts: _Parts, loop: _Loop, config: dict, rank: int, world: int, device,
                stop: StopRequest) -> str:
    """Steps up to the planned number, unless the time cap, a non-finite step (train.nonfinite)
    or the driver's stop request ends the run first; returns what ended it."""
    batches = iter(loop.batches)
    while loop.step < config["steps"]:
        if stop():
            return "interrupted"
        x = next(batches)
        torch.manual_seed(_step_seed(config["seed"], rank, loop.step))  # dropout's masks
        lr = config["lr"] * lr_factor(loop.step, config["steps"], config["warmup_steps"],
                                      config["lr_schedule"])
        x = as_channels_last(x.to(device), config["channels_last"])
        loss, grad_norm, status = training_step(parts.model, parts.denoiser, parts.optimizer, parts.ema,
                                                x, loop.generator, lr, config["grad_clip"], parts.precision)
        if not loop.nonfinite.counts(status, loop.step):
            if loop.nonfinite.stopped_at:
                return "nonfinite"
            continue
        loop.step, loop.loss = loop.step + 1, loss.item()
        loop.progress.add(x.shape[0] * world, loop.loss)
        if loop.step % config["log_every"] == 0 or loop.step == config["steps"]:
            loop.progress.flush(config, rank, loop.step, {"grad_norm": float(grad_norm), "lr": lr})
            if _past_time_limit(loop.started, config["time_limit_s"]):
                return "time_limit"
        if loop.step % config["checkpoint_every"] == 0 and loop.step < config["steps"]:
            _report(parts, loop, {"loss": loop.loss}, rank)
    return "steps"


def train_loop_per_worker(config: dict) -> None:
    """`steps` steps of the shared recipe (diffusion_core.training), the learning rate decaying
    to the last one, checkpoints along the way: the same params and data give the same weights
    on any machine, interrupted or not. The optional time limit is a safety cap; a run it stops
    says so. The last report always carries a checkpoint (Ray Train V2 keeps Result.metrics
    only from reports with one)."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(config["threads"])
    os.environ["MLFLOW_TRACKING_URI"] = config["tracking_uri"]  # the driver's store, made absolute
    device = ray.train.torch.get_device()
    parts, loop = _build(config, rank, device), _Loop.fresh(config, rank, world)
    _restore(parts, loop, config, rank, world)
    ended_by = _take_steps(parts, loop, config, rank, world, device, StopRequest(config["stop_uri"], rank))
    _report(parts, loop, {"loss": loop.loss, "loop_seconds": time.time() - loop.started, "world_size": world,
                          "time_limited": float(ended_by == "time_limit"),
                          "interrupted": float(ended_by == "interrupted"),
                          "nonfinite_step": loop.nonfinite.stopped_at,
                          "skipped_batches": loop.nonfinite.skipped,
                          "overflow_batches": loop.nonfinite.overflows,
                          "resumed_from_step": loop.resumed_from,
                          "metrics_lost": loop.progress.close()}, rank)


# -- the driver --------------------------------------------------------------------------------

def _check_outcome(metrics: dict, result, loop_config: dict, run_name: str) -> None:
    """Raise when the workers ended before the planned steps for a non-finite loss
    (NonFiniteLoss) or a stop request (TrainingInterrupted); a run the time cap ended is whole
    (the summary says what stopped it)."""
    if metrics.get("nonfinite_step"):
        raise NonFiniteLoss(
            f"{run_name}: the loss or its gradient was not finite at step {metrics['nonfinite_step']} "
            f"(train.nonfinite: {loop_config['nonfinite']}, {metrics.get('skipped_batches')} batch(es) "
            f"skipped); no model was written. The last good state, step {metrics.get('step')}, is "
            f"the checkpoint {result.checkpoint.path}; lower the learning rate or set "
            f"train.nonfinite: skip")
    if metrics.get("interrupted"):
        raise TrainingInterrupted(
            f"{run_name}: interrupted at step {metrics.get('step')} of {loop_config['steps']}; its "
            f"checkpoint is {result.checkpoint.path}. Run the same command again to resume; the "
            f"model in place was left as it was")


def fit(loop_config: dict, ray_params, run_name: str, out_dir: Path) -> dict:
    """Run, or continue, the Ray Train run `run_name` and copy its final EMA model to out_dir;
    returns the last metrics. Ray Train V2 finds a run by RunConfig(storage_path, name): with
    the same pair, fit() loads the run's checkpoint_manager_snapshot.json from
    storage_path/name and hands its latest checkpoint to the workers (ray.train.get_checkpoint()),
    so calling fit again with the same name continues the run."""
    connect()
    require_resources(ray_params)
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    path = ray_params.storage_path  # a URI (s3://...) as it is; a local folder made absolute
    storage = path if "://" in path else os.path.abspath(path)
    stop = stop_uri(storage, run_name)
    clear_stop(stop)  # a stop asked of an earlier call must not end this one
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={**loop_config, "stop_uri": stop},
        scaling_config=ScalingConfig(num_workers=ray_params.num_workers, use_gpu=ray_params.use_gpu,
                                     resources_per_worker={"CPU": ray_params.cpus_per_worker}),
        run_config=RunConfig(name=run_name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=ray_params.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    result = fit_watching_signals(trainer, stop, run_name)
    clear_stop(stop)  # asked too late to matter: the run had ended
    metrics = dict(result.metrics or {})
    _check_outcome(metrics, result, loop_config, run_name)
    with result.checkpoint.as_directory() as directory:
        shutil.copytree(Path(directory) / "ema", out_dir, dirs_exist_ok=True)
    return metrics
