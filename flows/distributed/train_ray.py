"""Ray Train glue: the per-worker loop is plain PyTorch with three marked Ray touch points
(prepare the model, shard the data by rank, report with a checkpoint)."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from diffusion_core.data.shards import ShardStream
from diffusion_core.frameworks import DiffusionModel
from diffusion_core.training.ema import EMA
from diffusion_core.training.lr_schedule import lr_factor
from diffusion_core.training.step import is_finite, training_step
from flows.distributed.ray_cluster import connect, require_resources
from flows.tracking import runs as tracking

STATE_FILE = "state.pt"


def _restore(model, optimizer, ema, config: dict, rank: int) -> int:
    """Ray touch point: resume from the last reported checkpoint, if a worker was restarted."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
    model.denoiser.net.load_state_dict(state["net"])
    optimizer.load_state_dict(state["optimizer"])
    ema.load_state_dict(state["ema"])
    if rank == 0:
        tracking.log_metrics(config["run_id"], {"resumed_from_step": state["step"]}, state["step"])
        print(f"[{config['framework']}] resumed from the checkpoint at step {state['step']}", flush=True)
    return int(state["step"])


def _report(model, optimizer, ema, step: int, metrics: dict, rank: int) -> None:
    """Ray touch point: report metrics with a checkpoint (rank 0 writes it, the others None)."""
    import ray.train

    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if rank == 0:
            torch.save({"net": model.denoiser.net.state_dict(), "optimizer": optimizer.state_dict(),
                        "ema": ema.state_dict(), "step": step}, Path(directory) / STATE_FILE)
            model.save(Path(directory) / "ema", ema.model.state_dict())
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report({**metrics, "step": step}, checkpoint=checkpoint)


def _batches(config: dict, rank: int, world: int):
    """Endless per-rank batches. The first epoch streams this rank's webdataset shards; with
    train.cache_in_memory later epochs reshuffle what was streamed instead of decoding the tar
    files again (per-sample decoding dominates the step time of small models on 2-D data)."""
    per_rank, epoch, cached = config["batch_size"] // world, 0, []
    while epoch == 0 or not config["cache_in_memory"]:
        stream = ShardStream(config["data_dir"], "train", rank, world, seed=config["seed"], epoch=epoch)
        loader = torch.utils.data.DataLoader(stream, batch_size=per_rank,
                                             num_workers=config["loader_workers"], drop_last=True)
        for x, _ in loader:
            if config["cache_in_memory"]:
                cached.append(x)
            yield x
        epoch += 1
    data = torch.cat(cached)
    generator = torch.Generator().manual_seed(config["seed"] * 7919 + rank)
    while True:
        order = torch.randperm(len(data), generator=generator)
        yield from (data[order[i:i + per_rank]] for i in range(0, len(data) - per_rank + 1, per_rank))


def _past_time_limit(start: float, limit_s: float | None) -> bool:
    """Whether the optional safety cap on the loop's wall time has passed, as rank 0 measures
    it and tells the others, so every rank stops at the same step."""
    if limit_s is None:
        return False
    past = torch.tensor([time.time() - start > limit_s], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(past, src=0)
    return bool(past.item())


class _Progress:
    """Loss and throughput over the steps since the last progress line."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.seen, self.loss_sum, self.steps, self.start = 0, 0.0, 0, time.time()

    def add(self, examples: int, loss: float) -> None:
        self.seen, self.loss_sum, self.steps = self.seen + examples, self.loss_sum + loss, self.steps + 1

    def flush(self, config: dict, rank: int, step: int, extra: dict) -> None:
        """Rank 0 logs the window's figures to MLflow and prints the progress line."""
        metrics = {"loss": self.loss_sum / max(1, self.steps),
                   "samples_per_s": self.seen / max(time.time() - self.start, 1e-9), **extra}
        if rank == 0:
            tracking.log_metrics(config["run_id"], metrics, step)
            print(f"[{config['framework']}] step {step}/{config['steps']} loss {metrics['loss']:.4f} "
                  f"{metrics['samples_per_s']:.0f} samples/s", flush=True)
        self.reset()


class NonFiniteLoss(RuntimeError):
    """Training met a non-finite loss or gradient and train.nonfinite says to stop."""


def _on_every_rank(flag: bool) -> bool:
    """True only if `flag` holds on every rank, so all ranks take the same decision."""
    value = torch.tensor([float(flag)])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


class _NonFinitePolicy:
    """train.nonfinite: a step whose loss or gradient is not finite is not taken (training_step
    skips it); "stop" ends the run there, "skip" goes on past at most `limit` such batches."""

    def __init__(self, policy: str, limit: int):
        self.policy, self.limit, self.skipped, self.stopped_at = policy, limit, 0, 0

    def counts(self, finite: bool, step: int) -> bool:
        """Whether the step was taken; records the step where the run must stop."""
        if _on_every_rank(finite):
            return True
        self.skipped += 1
        if self.policy == "stop" or self.skipped > self.limit:
            self.stopped_at = step + 1
        return False


def _build(config: dict, rank: int):
    """The model, its DDP-wrapped training denoiser (Ray touch point), Adam, EMA and the step
    to start from (0, or a restored checkpoint's)."""
    import ray.train.torch

    torch.manual_seed(config["seed"] + rank)
    model = DiffusionModel(config["model"])
    net = ray.train.torch.prepare_model(model.denoiser.net)
    optimizer = torch.optim.Adam(net.parameters(), lr=config["lr"])
    ema = EMA(model.denoiser.net, config["ema_gamma"])
    return model, model.wrap(net), optimizer, ema, _restore(model, optimizer, ema, config, rank)


def train_loop_per_worker(config: dict) -> None:
    """`steps` steps of the shared recipe (diffusion_core.training), the learning rate decaying
    to the last one, checkpoints along the way: the same params and data give the same weights
    on any machine. The optional time limit is a safety cap; a run it stops says so."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(config["threads"])
    os.environ["MLFLOW_TRACKING_URI"] = config["tracking_uri"]  # the driver's store, made absolute
    model, denoiser, optimizer, ema, step = _build(config, rank)
    device = ray.train.torch.get_device()
    generator = torch.Generator().manual_seed(config["seed"] * 1000 + rank + step)
    start, progress, time_limited = time.time(), _Progress(), False
    nonfinite = _NonFinitePolicy(config["nonfinite"], config["nonfinite_limit"])
    loss = torch.tensor(float("nan"))  # stays NaN only if a restored run had no steps left
    for x in _batches(config, rank, world):
        if step >= config["steps"] or nonfinite.stopped_at:
            break
        lr = config["lr"] * lr_factor(step, config["steps"], config["warmup_steps"], config["lr_schedule"])
        loss, grad_norm = training_step(model, denoiser, optimizer, ema, x.to(device), generator, lr,
                                        config["grad_clip"])
        if not nonfinite.counts(is_finite(loss, grad_norm), step):
            continue
        step += 1
        progress.add(x.shape[0] * world, loss.item())
        if step % config["log_every"] == 0 or step == config["steps"]:
            progress.flush(config, rank, step, {"grad_norm": float(grad_norm), "lr": lr})
            time_limited = _past_time_limit(start, config["time_limit_s"])
            if time_limited:
                break
        if step % config["checkpoint_every"] == 0 and step < config["steps"]:
            _report(model, optimizer, ema, step, {"loss": loss.item()}, rank)
    _report(model, optimizer, ema, step, {"loss": loss.item(), "loop_seconds": time.time() - start,
                                            "world_size": world, "time_limited": float(time_limited),
                                            "nonfinite_step": nonfinite.stopped_at,
                                            "skipped_batches": nonfinite.skipped}, rank)


def fit(loop_config: dict, ray_params, run_name: str, out_dir: Path) -> dict:
    """Run the TorchTrainer and copy the final EMA model to out_dir; returns the last metrics."""
    connect()
    require_resources(ray_params)
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    path = ray_params.storage_path  # a URI (s3://...) as it is; a local folder made absolute
    storage = path if "://" in path else os.path.abspath(path)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=ray_params.num_workers, use_gpu=ray_params.use_gpu,
                                     resources_per_worker={"CPU": ray_params.cpus_per_worker}),
        run_config=RunConfig(name=run_name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=ray_params.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    metrics = dict(result.metrics or {})
    if metrics.get("nonfinite_step"):
        raise NonFiniteLoss(
            f"{run_name}: the loss or its gradient was not finite at step {metrics['nonfinite_step']} "
            f"(train.nonfinite: {loop_config['nonfinite']}, {metrics.get('skipped_batches')} batch(es) "
            f"skipped); no model was written. The last good state, step {metrics.get('step')}, is "
            f"the checkpoint {result.checkpoint.path}; lower the learning rate or set "
            f"train.nonfinite: skip")
    with result.checkpoint.as_directory() as directory:
        shutil.copytree(Path(directory) / "ema", out_dir, dirs_exist_ok=True)
    return metrics
