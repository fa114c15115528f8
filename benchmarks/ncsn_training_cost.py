"""Training an energy model on a 2-D toy: sliced score matching against MCMC maximum likelihood.

The same energy network (a SiLU MLP with a scalar head) learns gmm8 convolved with N(0, 0.3^2)
whose score is known exactly, with the same Adam budget (batch 256) by each method: sliced
score matching (SSM-VR, one Gaussian projection per example) and persistent
contrastive divergence with 10 short-run Langevin steps per update. Prints, per seed, the
training time, the time per step and the mean squared error of the learnt score against the
true one (beside E|s_true|^2), then the medians side by side.

    .venv/bin/python benchmarks/ncsn_training_cost.py [--steps 2000] [--seeds 0 1 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.energy_toy import S0, energy_training_steps, score_mse, train_energy  # noqa: E402
from diffusion_core.models.analytic import gmm8_mixture  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    mix, rows = gmm8_mixture(), {"sliced score matching": [], "MCMC max. likelihood (PCD)": []}
    print(f"energy model on gmm8 + N(0, {S0}^2), {args.steps} Adam steps of batch 256")
    for seed in args.seeds:
        for name, step in zip(rows, energy_training_steps(seed)):
            model, seconds = train_energy(step, args.steps, seed)
            err, ref = score_mse(model, mix)
            rows[name].append((seconds, err))
            print(f"  seed {seed}  {name:27s} {seconds:6.1f} s  {1e3 * seconds / args.steps:5.2f} ms/step"
                  f"  score mse {err:.3f}  (E|s_true|^2 = {ref:.2f})", flush=True)
    print("\nmedians:            train s   score mse")
    for name, values in rows.items():
        print(f"  {name:27s} {statistics.median(v[0] for v in values):6.1f}   "
              f"{statistics.median(v[1] for v in values):.3f}")


if __name__ == "__main__":
    main()
