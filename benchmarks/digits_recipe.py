"""Digits DDPM recipes at the issue's fixed wall-clock budget: each trains for the same number
of seconds (so a wider network takes fewer steps), then draws the same 2,000 seeded samples
with DDIM-50. FD / floor is evaluate's own estimator: the mean FD of 64 random 500-subsets of
the samples against the 500 held-out images, over the mean of 64 train subsets. The
reference is the first recipe, measured in the same run.

Trains in-process (no Ray) so the recipes differ only in what they name; the pipeline's own
figures are in the README. One recipe takes the budget plus about 30 s.

    .venv/bin/python benchmarks/digits_recipe.py [--seconds 280] [--samples 2000] [--seed 0]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffusion_core import classifier as clf  # noqa: E402
from diffusion_core.data import sources  # noqa: E402
from diffusion_core.ema import EMA  # noqa: E402
from diffusion_core.frameworks import DiffusionModel  # noqa: E402
from diffusion_core.lr_schedule import lr_factor, planned_steps  # noqa: E402
from diffusion_core.noise import PerSampleNoise  # noqa: E402
from diffusion_core.training import training_step  # noqa: E402
from flows.image_eval import _fd_draws  # noqa: E402

RECIPES = {  # name: (U-Net base width, lr schedule, p_mean)
    "base 32, cosine lr, p_mean -1.2 (default)": (32, "cosine", -1.2),
    "base 48, cosine lr, p_mean -1.2": (48, "cosine", -1.2),
    "base 64, cosine lr, p_mean -1.2": (64, "cosine", -1.2),
}


def model_config(base: int, p_mean: float) -> dict:
    network = dict(kind="unet", channels=1, image_size=8, base=base, mults=[1, 2], blocks=1, emb_dim=64)
    return {"framework": "ddpm", "process": {"kind": "vp", "beta_min": 0.1, "beta_max": 20.0, "N": 1000},
            "parameterization": "edm", "sigma_data": 0.5, "network": network, "data_shape": [1, 8, 8],
            "loss": {"kind": "lognormal", "p_mean": p_mean, "p_std": 1.2, "weighting": "network"}}


def train(x_train: torch.Tensor, recipe: tuple, seconds: float, seed: int) -> tuple[DiffusionModel, int]:
    """Adam 1e-3, batch 128, gradient clipping 1, power EMA (gamma 7), the learning rate decayed
    to the end of the time budget at the pace measured so far: the pipeline's loop."""
    base, schedule, p_mean = recipe
    torch.manual_seed(seed)
    model = DiffusionModel(model_config(base, p_mean))
    net, generator = model.denoiser.net, torch.Generator().manual_seed(seed)
    optimizer, ema = torch.optim.Adam(net.parameters(), lr=1e-3), EMA(net, 7.0)
    start, step, planned = time.perf_counter(), 0, 10**6
    while step < planned:
        if step and step % 100 == 0:
            planned = planned_steps(step, 0, (time.perf_counter() - start) / seconds, 10**6)
        batch = x_train[torch.randint(0, len(x_train), (128,), generator=generator)]
        training_step(model, model.denoiser, optimizer, ema, batch, generator,
                      1e-3 * lr_factor(step, planned, 60, schedule), grad_clip=1.0)
        step += 1
    net.load_state_dict(ema.model.state_dict())
    return model, step


def fd_ratio(model, classifier, test_features, floor: float, samples: int) -> float:
    seeds = PerSampleNoise([7_000_003 + i for i in range(samples)])
    x, _ = model.sample(samples, (1, 8, 8), {"name": "ddim", "steps": 50}, seeds, 1.0)  # no_grad inside
    features = clf.extract_features(classifier, x.numpy())
    return float(np.mean(_fd_draws(features, test_features, 500, seed=1))) / floor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=280.0)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    x, y = sources.load_source("digits", 0, 0)
    x_tr, y_tr, x_te, _ = sources.train_test_split(x, y, 500, 0)
    classifier = clf.train_classifier(x_tr, y_tr, epochs=30, seed=0)
    f_tr, f_te = clf.extract_features(classifier, x_tr), clf.extract_features(classifier, x_te)
    floor = float(np.mean(_fd_draws(f_tr, f_te, 500, seed=0)))  # evaluate's own floor
    reference = None
    for name, recipe in RECIPES.items():
        model, steps = train(torch.from_numpy(x_tr), recipe, args.seconds, args.seed)
        ratio = fd_ratio(model, classifier, f_te, floor, args.samples)
        reference = reference or ratio
        print(f"{name:42s} {steps:5d} steps  FD/floor {ratio:.2f}  ratio to the first {ratio / reference:.3f}",
              flush=True)


if __name__ == "__main__":
    main()
