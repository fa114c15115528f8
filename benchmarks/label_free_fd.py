"""Does FD/floor in label-free features rank what the classifier's FD/floor ranks? On digits.

Digits with its labels hidden from one extractor: the same `classifier` split trains the
classifier (labels) and the contrastive network (no labels, as for an unlabelled image set);
an untrained trunk of the same shape is the baseline. Each scores stand-ins for samples
against the test split: real val images (1 is what real data scores), val with Gaussian
noise, blurred, shifted by a pixel, and only half the classes (a dropped mode). FD/floor is
as the evaluate stage reads it: the mean FD over 64 random n-subsets (`fd_draws`) over that of
train subsets of the same n (no interval here: the evaluate stage adds one).

    .venv/bin/python benchmarks/label_free_fd.py [--seed 0] [--contrastive-epochs 150]
        [--readout raw|direction_log_norm]  (the contrastive and untrained networks' feature readout)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffusion_core.data import sources  # noqa: E402
from diffusion_core.evaluation.fd_estimators import fd_draws  # noqa: E402
from diffusion_core.features import classifier as clf  # noqa: E402
from diffusion_core.features import contrastive  # noqa: E402
from flows.config.params import parse_params  # noqa: E402


def stand_ins(val: np.ndarray, y_val: np.ndarray, seed: int) -> dict:
    """Real held-out images and four ways of being wrong, all in [-1, 1]."""
    rng = np.random.default_rng(seed)
    x = torch.as_tensor(val)
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1).numpy()
    return {"real (val)": val,
            "noise sigma 0.1": np.clip(val + rng.normal(0, 0.1, val.shape), -1, 1).astype(np.float32),
            "noise sigma 0.3": np.clip(val + rng.normal(0, 0.3, val.shape), -1, 1).astype(np.float32),
            "3x3 blur": blurred,
            "shifted 1 px": np.roll(val, 1, axis=3),
            "classes 0-4 only": val[y_val < 5]}


def fd_over_floor(model, samples: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int) -> float:
    feats = [clf.extract_features(model, x) for x in (samples, train, test)]
    n = len(samples)
    return float(np.mean(fd_draws(feats[0], feats[2], n, seed)) / np.mean(fd_draws(feats[1], feats[2], n, seed)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--contrastive-epochs", type=int, default=None, help="default: params.yaml's")
    parser.add_argument("--readout", choices=contrastive.READOUTS, default="raw",
                        help="FD on the trunk's output (raw) or on [f/|f|, log |f|]")
    args = parser.parse_args()
    params = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    x, y = sources.load_source("digits", 0, 0)
    splits = sources.held_out_split(x, y, params.data.held_out_sizes(labelled_images=True), params.data.seed)
    (x_fit, y_fit), (train, _), (val, y_val), (test, _) = (splits[k] for k in ("classifier", "train", "val", "test"))
    epochs = args.contrastive_epochs or params.classifier.contrastive_epochs
    start = time.time()
    extractors = {"classifier": clf.train_classifier(x_fit, y_fit, epochs=params.classifier.epochs, seed=args.seed)}
    print(f"classifier trained in {time.time() - start:.0f} s")
    start = time.time()
    extractors["contrastive"] = contrastive.train_contrastive(
        x_fit, epochs=epochs, temperature=params.classifier.contrastive_temperature, seed=args.seed,
        readout=args.readout)
    print(f"contrastive ({epochs} epochs) trained in {time.time() - start:.0f} s")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        extractors["untrained"] = contrastive.ContrastiveEncoder(1, 8, readout=args.readout).eval()
    cases = stand_ins(val, y_val, args.seed)
    table = {name: [fd_over_floor(m, s, train, test, args.seed) for s in cases.values()]
             for name, m in extractors.items()}
    print("| stand-in for samples | n | " + " | ".join(f"FD/floor, {k}" for k in table) + " |")
    print("|---|---|" + "---|" * len(table))
    for i, (case, samples) in enumerate(cases.items()):
        print(f"| {case} | {len(samples)} | " + " | ".join(f"{v[i]:.2f}" for v in table.values()) + " |")


if __name__ == "__main__":
    main()
