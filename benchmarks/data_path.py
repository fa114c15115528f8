"""The data path against memory: shard write and read throughput beside a copy of the same
arrays in memory, and the loader's share of a training step (target: training never waits on
data, i.e. a batch from the shard stream costs a small fraction of the step it feeds).

Data: `--examples` synthetic images of `--shape` (CIFAR-10-shaped by default) in float32, in
shards of `--per-shard`. Write = `write_shards` (tar shards, checksums, pyarrow manifest,
atomic swap); read = `load_split` (verified, whole split) and the training loader (ShardStream
through a DataLoader, as the Ray Train worker builds it, with `--loader-workers`). The step is
the digits U-Net's training step at the same batch, on the same threads. Medians of `--repeats`.

    .venv/bin/python benchmarks/data_path.py [--examples 5000] [--shape 3 32 32] [--batch 128]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import median_time  # noqa: E402

from diffusion_core.data.shards import ShardStream, load_split, write_shards  # noqa: E402
from diffusion_core.frameworks import DiffusionModel  # noqa: E402
from diffusion_core.training.ema import EMA  # noqa: E402
from diffusion_core.training.step import training_step  # noqa: E402


def loader_batches(folder: Path, batch: int, workers: int, count: int) -> None:
    """`count` batches from the training loader (one epoch repeated as needed)."""
    taken, epoch = 0, 0
    while taken < count:
        stream = ShardStream(folder, "train", seed=0, epoch=epoch)
        for _ in torch.utils.data.DataLoader(stream, batch_size=batch, drop_last=True, num_workers=workers):
            taken += 1
            if taken == count:
                return
        epoch += 1


def step_seconds(shape: tuple, batch: int, repeats: int) -> float:
    """One training step of the params.yaml-sized U-Net at this shape and batch."""
    network = {"kind": "unet", "channels": shape[0], "image_size": shape[1], "base": 32, "mults": [1, 2],
               "blocks": 1, "emb_dim": 64}
    model = DiffusionModel({"framework": "ddpm", "process": {"kind": "vp"}, "parameterization": "eps",
                            "sigma_data": 0.5, "loss": {"kind": "ddpm"}, "network": network,
                            "data_shape": list(shape)})
    optimizer, ema = torch.optim.Adam(model.denoiser.net.parameters()), EMA(model.denoiser.net)
    x, generator = torch.randn(batch, *shape), torch.Generator().manual_seed(0)

    def step():
        training_step(model, model.denoiser, optimizer, ema, x, generator, 1e-4, 1.0)
    step()
    return median_time(step, repeats)[0]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=5000)
    parser.add_argument("--shape", type=int, nargs=3, default=[3, 32, 32])
    parser.add_argument("--per-shard", type=int, default=500)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--loader-workers", type=int, default=0)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    shape = tuple(args.shape)
    x = np.random.default_rng(0).uniform(-1, 1, (args.examples, *shape)).astype(np.float32)
    megabytes = x.nbytes / 2**20
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "shards"
        splits = {"train": (x, None), "test": (x[: args.per_shard], None)}
        write_s = median_time(lambda: write_shards(out, splits, args.per_shard, {"source": "bench"}), args.repeats)[0]
        read_s = median_time(lambda: load_split(out, "train"), args.repeats)[0]
        loader_s = median_time(lambda: loader_batches(out, args.batch, args.loader_workers, args.batches),
                           args.repeats)[0] / args.batches
    memory_s = median_time(lambda: x.copy(), args.repeats)[0]
    step_s = step_seconds(shape, args.batch, args.repeats)
    result = {"megabytes": megabytes, "memory_mb_s": megabytes / memory_s, "write_mb_s": megabytes / write_s,
              "read_mb_s": megabytes / read_s, "loader_batch_s": loader_s, "step_s": step_s,
              "loader_share": loader_s / (loader_s + step_s)}
    print(f"{args.examples} x {shape} float32 ({megabytes:.0f} MiB), shards of {args.per_shard}, medians of {args.repeats}")
    print(f"  memory copy (reference) {result['memory_mb_s']:.0f} MiB/s | shard write {result['write_mb_s']:.0f} MiB/s "
          f"({result['write_mb_s'] / result['memory_mb_s']:.3f}x) | verified read {result['read_mb_s']:.0f} MiB/s "
          f"({result['read_mb_s'] / result['memory_mb_s']:.3f}x)")
    print(f"  loader: {1e3 * loader_s:.1f} ms per batch of {args.batch} ({args.loader_workers} workers) against a "
          f"{1e3 * step_s:.0f} ms training step: {100 * result['loader_share']:.1f}% of a step's time if not overlapped")
    return result


if __name__ == "__main__":
    main()
