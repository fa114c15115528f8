"""Few-step samplers on learned networks: the project's DPM-Solver++(2M), with each of its grid
spacings, against diffusers' DPMSolverMultistepScheduler on the same digits network and the
same x_T, over several training seeds.

benchmarks/few_step_samplers.py compares the samplers on an exact denoiser, where every error
is the sampler's; a learned network errs most at low noise, which can reorder the grids. Each
seed trains ddpm-paper's model (or `--run ddpm-edm`'s; params.yaml, the pipeline's loop,
`--steps` steps) on the digits split; every sampler then draws the same seeded x_T at each
NFE. Figure: FD / floor (benchmarks/digits_fd.py) ± its standard error, and per spacing the
paired difference to diffusers (mean over training seeds ± its standard error over them: the
seeds move FD / floor by more than the estimator does, the sampler's effect much less).

    .venv/bin/python benchmarks/few_step_digits.py [--seeds 0 1 2] [--steps 1900] [--nfe 10 20 50]
        [--samples 3000] [--spacings logsnr time] [--run ddpm-paper|ddpm-edm]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.digits_fd import DigitsFD  # noqa: E402
from benchmarks.same_compute import (  # noqa: E402
    diffusers_samples,
    linear_chain_scheduler,
    project_eps,
    project_run,
    project_samples,
)
from flows.config.params import parse_params  # noqa: E402

DIFFUSERS = "diffusers"


def seed_figures(model, digits: DigitsFD, args) -> dict:
    """{sampler: {nfe: (FD / floor, its error)}} of one trained model."""
    scheduler, figures = linear_chain_scheduler(), {}
    for spacing in args.spacings:
        settings = {"name": "dpmpp_2m", "spacing": spacing}
        figures[spacing] = {nfe: digits.ratio(project_samples(model, args.samples, nfe, settings))
                            for nfe in args.nfe}
    eps = project_eps(model, scheduler)
    figures[DIFFUSERS] = {nfe: digits.ratio(diffusers_samples(eps, scheduler, "dpm_solver", args.samples, nfe))
                          for nfe in args.nfe}
    return figures


def paired(per_seed: list[dict], spacing: str, nfe: int) -> tuple[float, float]:
    """The spacing's FD / floor minus diffusers', mean over seeds and its standard error."""
    gaps = [f[spacing][nfe][0] - f[DIFFUSERS][nfe][0] for f in per_seed]
    error = statistics.stdev(gaps) / len(gaps) ** 0.5 if len(gaps) > 1 else float("nan")
    return statistics.fmean(gaps), error


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1900, help="training steps per seed")
    parser.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 50])
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--spacings", nargs="+", default=["logsnr", "time"])
    parser.add_argument("--run", default="ddpm-paper", choices=[f"ddpm-{r}" for r in ("paper", "edm")],
                        help="a ddpm run: its linear VP chain is the one diffusers' scheduler is given")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    params = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    digits, per_seed = DigitsFD.build(), []
    print(f"{args.run} on digits, {args.steps} steps per seed, {args.samples} samples; FD / floor ± "
          f"its standard error ({digits.describe()})", flush=True)
    for seed in args.seeds:
        model, _ = project_run(params, args.run, digits, 1e9, seed, args.steps)
        per_seed.append(seed_figures(model, digits, args))
        for sampler, row in per_seed[-1].items():
            print(f"  seed {seed} {sampler:>9}: " + ", ".join(f"NFE {n} {m:.2f} ± {e:.2f}" for n, (m, e) in row.items()),
                  flush=True)
    gaps = {spacing: {nfe: paired(per_seed, spacing, nfe) for nfe in args.nfe} for spacing in args.spacings}
    for spacing, row in gaps.items():
        print(f"{spacing} - diffusers over {len(per_seed)} seeds: "
              + ", ".join(f"NFE {n} {m:+.2f} ± {e:.2f}" for n, (m, e) in row.items()), flush=True)
    return {"floor": digits.floor, "reference_split": digits.reference_split, "per_seed": per_seed, "gaps": gaps}


if __name__ == "__main__":
    main()
