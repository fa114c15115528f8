"""Sampling throughput of the digits model with 2 Ray workers against 1 (reference, same run).

Each worker is an actor of one CPU and one thread; both runs draw the same samples (same
seeds, parts and batches) with params.yaml's digits U-Net and sampler. Prints samples/s of
each run, with and without actor start-up, and the ratio (target: >= 1.6), over alternating
repeats (the median ratio), with the machine's load average: other work on the CPUs takes
cores from the 2-worker run.

    .venv/bin/python benchmarks/sample_scaling.py [--samples 1024] [--repeats 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffusion_core.frameworks import DiffusionModel  # noqa: E402
from flows.config.params import load_params  # noqa: E402
from flows.distributed import sample_ray  # noqa: E402
from flows.stages import train as train_stage  # noqa: E402

DIGITS = {"kind": "image", "shape": [1, 8, 8]}


def run(out: Path, work: Path, params, workers: int, samples: int, per_part: int) -> dict:
    """Draw ``samples`` with ``workers`` actors into a fresh folder; counts, timings, samples."""
    callables = sample_ray.stage_callables(params, "ddpm", work / "model", "image", DIGITS["shape"])
    plan = sample_ray.SamplePlan(samples, per_part, per_part, {"workers": workers})
    info = sample_ray.draw_parts(out / f"parts-{workers}", plan, num_workers=workers,
                                 cpus_per_worker=1, label=f"{workers} worker(s)", **callables)
    x, nfe = sample_ray.collect(out / f"parts-{workers}", plan, callables["seeds_of"])
    return {**info, "nfe": nfe, "x": x}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--per-part", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="alternating 1- and 2-worker runs")
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    os.environ.pop("RAY_ADDRESS", None)
    ratios, loads = [], [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        DiffusionModel(train_stage.model_config(params, "ddpm", DIGITS)).save(work / "model")
        for repeat in range(args.repeats):
            one = run(work / f"r{repeat}", work, params, 1, args.samples, args.per_part)
            two = run(work / f"r{repeat}", work, params, 2, args.samples, args.per_part)
            same = bool((one.pop("x") == two.pop("x")).all())
            ratios.append(two["samples_per_s_running"] / one["samples_per_s_running"])
            loads.append(os.getloadavg()[0])
            print(f"\nrepeat {repeat}: identical samples for 1 and 2 workers: {same}; NFE {one['nfe']}")
            for name, r in (("1 worker (reference)", one), ("2 workers", two)):
                print(f"  {name:22s} start-up {r['startup_seconds']:5.1f} s, drawing {r['run_seconds']:6.1f} s: "
                      f"{r['samples_per_s_running']:6.1f} samples/s drawing, {r['samples_per_s']:6.1f} with start-up")
            print(f"  ratio 2/1 workers: {ratios[-1]:.2f}x drawing, "
                  f"{two['samples_per_s'] / one['samples_per_s']:.2f}x with start-up")
    print(f"\nsampler {params.framework('ddpm').sampler}, {args.samples} samples per run, parts of "
          f"{args.per_part}; median ratio 2/1 workers (drawing): {float(np.median(ratios)):.2f}x "
          f"(target >= 1.6x); 1-min load average over the runs: {min(loads):.1f}-{max(loads):.1f} "
          f"on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
