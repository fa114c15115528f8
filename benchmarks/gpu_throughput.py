"""Training throughput on accelerators: images per second and the fraction of the device's peak
FLOP/s, for 1 and N Ray Train workers (DDP), at the GPU path's settings.

`--size large` is sized for one large GPU: CIFAR-10-shaped synthetic data (3x32x32) and the
DDPM CIFAR-10 U-Net layout (base 128, mults 1-2-2-2, two blocks per level: 33M parameters).
`--size tiny` is the same code at 3x8x8 and a 0.1M-parameter U-Net, which this CPU-only
machine runs in its tests. The peak is measured in the same run by a matmul micro-benchmark on
the same device in the training precision's dtype; the FLOPs of one step are counted by
torch's FlopCounterMode. Each worker trains the ddpm paper recipe through the project's
`training_step` (autocast, loss scale, channels-last and compile as asked) on batches drawn on
its device, so data loading is not measured here (benchmarks/ measure it separately).

    .venv/bin/python benchmarks/gpu_throughput.py --size large --workers 1 8 --precision bf16 --channels-last
    .venv/bin/python benchmarks/gpu_throughput.py --size tiny --workers 1 2          # on the CPU
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusion_core.frameworks import DiffusionModel  # noqa: E402
from diffusion_core.training.ema import EMA  # noqa: E402
from diffusion_core.training.precision import PRECISIONS, Precision, as_channels_last, tune_network  # noqa: E402
from diffusion_core.training.step import adam, training_step  # noqa: E402
from flows.distributed.ray_cluster import connect  # noqa: E402

SIZES = {  # per-example shape, U-Net, batch per worker
    "large": ((3, 32, 32), {"base": 128, "mults": [1, 2, 2, 2], "blocks": 2, "emb_dim": 512}, 128),
    "tiny": ((3, 8, 8), {"base": 16, "mults": [1, 2], "blocks": 1, "emb_dim": 32}, 8),
}
# the side of the matmul that measures the peak: large enough to saturate a GPU; small on the CPU,
# whose bf16 matmul without AMX runs a slow fallback (minutes for 2048 x 2048)
PEAK_MATMUL_SIDE = {"large": 4096, "tiny": 256}


def model_config(size: str) -> dict:
    """The ddpm paper recipe (eps-prediction, t ~ U{1..N}, L_simple) on the size's U-Net."""
    shape, unet, _ = SIZES[size]
    network = {"kind": "unet", "channels": shape[0], "image_size": shape[1], **unet}
    return {"framework": "ddpm", "process": {"kind": "vp", "beta_min": 0.1, "beta_max": 20.0, "N": 1000},
            "parameterization": "eps", "sigma_data": 0.5, "loss": {"kind": "ddpm"},
            "network": network, "data_shape": list(shape)}


def peak_flops(device: torch.device, precision: str, n: int = 2048, repeats: int = 5) -> float:
    """The device's matmul rate (FLOP/s) in the precision's dtype: the best of `repeats` timings
    of 10 n x n products."""
    dtype = PRECISIONS[precision] or torch.float32
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    a @ b
    best = min(_timed(lambda: a @ b, 10, device) for _ in range(repeats)) / 10
    return 2 * n**3 / best


def _timed(fn, count: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(count):
        fn()
    _sync(device)
    return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_flops(config: dict, batch: int, precision: str, device: torch.device) -> int:
    """FLOPs of one training step (forward and backward) of a fresh copy of the model."""
    model = DiffusionModel(config)
    model.denoiser.net.to(device)
    x = torch.randn(batch, *config["data_shape"], device=device)
    with FlopCounterMode(display=False) as counter, Precision(precision, device.type).autocast():
        model.loss(x, torch.Generator().manual_seed(0)).mean().backward()
    return counter.get_total_flops()


def worker_loop(settings: dict) -> None:
    """Ray Train worker: `warmup` then `steps` timed training steps; reports images/s."""
    import ray.train
    import ray.train.torch

    device = ray.train.torch.get_device()
    torch.manual_seed(ray.train.get_context().get_world_rank())
    model = DiffusionModel(settings["config"])
    net = tune_network(model.denoiser.net, settings["channels_last"], settings["compile"],
                       wrap=ray.train.torch.prepare_model)
    optimizer, ema = adam(net.parameters(), 2e-4), EMA(model.denoiser.net)
    precision, denoiser = Precision(settings["precision"], device.type), model.wrap(net)
    generator = torch.Generator().manual_seed(0)
    x = as_channels_last(torch.randn(settings["batch"], *settings["config"]["data_shape"], device=device),
                         settings["channels_last"])

    def step():
        training_step(model, denoiser, optimizer, ema, x, generator, 2e-4, 1.0, precision)

    for _ in range(settings["warmup"]):
        step()
    seconds = _timed(step, settings["steps"], device)
    _report({"images_per_s": settings["batch"] * settings["steps"] / seconds, "seconds": seconds})


def _report(metrics: dict) -> None:
    """Ray touch point: rank 0 reports with a (tiny) checkpoint, since Ray Train V2 keeps
    Result.metrics only from reports that carry one."""
    import ray.train

    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if ray.train.get_context().get_world_rank() == 0:
            (Path(directory) / "metrics.json").write_text(json.dumps(metrics))
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=checkpoint)


def run_workers(workers: int, settings: dict, use_gpu: bool, storage: Path) -> dict:
    """Images per second of `workers` DDP workers together (rank 0's rate x workers: every
    rank steps in lock-step through the gradient all-reduce)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(worker_loop, train_loop_config=settings,
                           scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                                        resources_per_worker={"CPU": settings["cpus"]}),
                           run_config=RunConfig(name=f"gpu-throughput-{workers}-{time.time_ns()}",
                                                storage_path=str(storage.absolute())))
    return {"workers": workers, "images_per_s": trainer.fit().metrics["images_per_s"] * workers}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="large")
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1, help="runs per worker count (median, spread)")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--storage", default="ray_results/benchmarks")
    args = parser.parse_args(argv)
    use_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if use_gpu else "cpu")
    config, (_, _, batch) = model_config(args.size), SIZES[args.size]
    peak = peak_flops(device, args.precision, PEAK_MATMUL_SIDE[args.size])
    flops = step_flops(config, batch, args.precision, device)
    params = sum(p.numel() for p in DiffusionModel(config).denoiser.net.parameters())
    print(f"{args.size}: {params / 1e6:.1f}M parameters, batch {batch} per worker, {args.precision}, "
          f"{device.type}: peak {peak / 1e12:.3f} TFLOP/s (matmul), {flops / 1e9:.2f} GFLOP per step")
    settings = {"config": config, "batch": batch, "precision": args.precision, "steps": args.steps,
                "warmup": args.warmup, "channels_last": args.channels_last, "compile": args.compile,
                "cpus": args.cpus_per_worker}
    connect()  # before ray is imported: it keeps a local instance on loopback
    import ray.cloudpickle

    # Ray's workers cannot import benchmarks/ (only the project's packages travel with a job), so
    # worker_loop travels by value when this file is imported as a module (as its test does)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    rows = []
    for workers in args.workers:
        rates = [run_workers(workers, settings, use_gpu, Path(args.storage))["images_per_s"]
                 for _ in range(args.repeats)]
        rate = statistics.median(rates)
        rows.append({"workers": workers, "images_per_s": rate, "min": min(rates), "max": max(rates),
                     "peak_fraction": rate / batch * flops / (peak * workers)})
    base = rows[0]["images_per_s"] / rows[0]["workers"]
    for row in rows:
        row["scaling_efficiency"] = row["images_per_s"] / (base * row["workers"])
        print(f"{row['workers']} worker(s): {row['images_per_s']:.1f} images/s ({row['min']:.1f}-{row['max']:.1f}), "
              f"{100 * row['peak_fraction']:.1f}% of peak per device, scaling efficiency "
              f"{row['scaling_efficiency']:.2f} against {rows[0]['workers']} worker(s)")
    return {"size": args.size, "params": params, "peak_flops": peak, "step_flops": flops, "rows": rows}


if __name__ == "__main__":
    main()
