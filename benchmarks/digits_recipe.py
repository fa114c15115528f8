"""Digits DDPM training recipes at a fixed step budget, FD / floor as the mean over draws of
500 samples against the 500 held-out images, every model sampled with the same seeds
(paired). The reference is the constant learning rate measured in the same run.

Trains in-process (no Ray) so the recipes differ only in what they name; the pipeline's own
figures are in the README. One recipe takes about 5 minutes at 2 threads for 2,400 steps.

    .venv/bin/python benchmarks/digits_recipe.py [--steps 2400] [--draws 8]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffusion_core import classifier as clf  # noqa: E402
from diffusion_core import metrics  # noqa: E402
from diffusion_core.data import sources  # noqa: E402
from diffusion_core.ema import EMA  # noqa: E402
from diffusion_core.frameworks import DiffusionModel  # noqa: E402
from diffusion_core.lr_schedule import lr_factor  # noqa: E402
from diffusion_core.noise import PerSampleNoise  # noqa: E402
from diffusion_core.training import training_step  # noqa: E402
from flows.image_eval import _fd_draws  # noqa: E402

NETWORK = dict(kind="unet", channels=1, image_size=8, base=32, mults=[1, 2], blocks=1, emb_dim=64)
RECIPES = {"constant lr, p_mean -1.2": ("constant", -1.2), "cosine lr, p_mean -1.2 (default)": ("cosine", -1.2),
           "cosine lr, p_mean -0.8": ("cosine", -0.8)}


def model_config(p_mean: float) -> dict:
    return {"framework": "ddpm", "process": {"kind": "vp", "beta_min": 0.1, "beta_max": 20.0, "N": 1000},
            "parameterization": "edm", "sigma_data": 0.5, "network": NETWORK, "data_shape": [1, 8, 8],
            "loss": {"kind": "lognormal", "p_mean": p_mean, "p_std": 1.2, "weighting": "network"}}


def train(x_train: torch.Tensor, schedule: str, p_mean: float, steps: int) -> DiffusionModel:
    """Adam 1e-3, batch 128, gradient clipping 1, power EMA (gamma 7): the pipeline's loop."""
    torch.manual_seed(0)
    model = DiffusionModel(model_config(p_mean))
    net, generator = model.denoiser.net, torch.Generator().manual_seed(0)
    optimizer, ema = torch.optim.Adam(net.parameters(), lr=1e-3), EMA(net, 7.0)
    for step in range(steps):
        batch = x_train[torch.randint(0, len(x_train), (128,), generator=generator)]
        training_step(model, model.denoiser, optimizer, ema, batch, generator,
                      1e-3 * lr_factor(step, steps, steps // 50, schedule), grad_clip=1.0)
    net.load_state_dict(ema.model.state_dict())
    return model


def fd_ratios(model, classifier, test_features, floor: float, draws: int) -> np.ndarray:
    out = []
    for draw in range(draws):
        seeds = [1_000_003 * (draw + 1) + i for i in range(500)]
        x, _ = model.sample(500, (1, 8, 8), {"name": "ddim", "steps": 50}, PerSampleNoise(seeds), 1.0)
        out.append(metrics.frechet_distance_from_features(clf.extract_features(classifier, x.numpy()),
                                                          test_features) / floor)
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--draws", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(2)
    x, y = sources.load_source("digits", 0, 0)
    x_tr, y_tr, x_te, _ = sources.train_test_split(x, y, 500, 0)
    classifier = clf.train_classifier(x_tr, y_tr, epochs=30, seed=0)
    f_tr, f_te = clf.extract_features(classifier, x_tr), clf.extract_features(classifier, x_te)
    floor = float(np.mean(_fd_draws(f_tr, f_te, 500, seed=0)))  # evaluate's own floor
    results = {}
    for name, (schedule, p_mean) in RECIPES.items():
        results[name] = fd_ratios(train(torch.from_numpy(x_tr), schedule, p_mean, args.steps),
                                  classifier, f_te, floor, args.draws)
        reference = results[next(iter(RECIPES))]
        print(f"{name:34s} FD/floor {results[name].mean():.2f} ± {results[name].std(ddof=1) / args.draws ** 0.5:.2f}"
              f"  ratio to constant lr {results[name].mean() / reference.mean():.3f}"
              f"  better in {(results[name] < reference).sum()}/{args.draws} paired draws", flush=True)


if __name__ == "__main__":
    main()
