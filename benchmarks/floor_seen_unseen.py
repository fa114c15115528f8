"""The FD floor from images the feature extractor saw against images it never saw, on digits.

The floor is the FD of real images against the reference split at the samples' size. The
samples are images the classifier never saw; so should the floor's be (the train split, since
the classifier trains on its own split alone). This measures what seen images would do
instead: with the same classifier, the floor from its own training images (the classifier
split) against the floor from the train split, both against val at val's size (300), and the
report's floor (train against test at 500). Mean over 64 random subsets each
(`fd_draws`, as the evaluate stage); one line per classifier seed.

    .venv/bin/python benchmarks/floor_seen_unseen.py [--seeds 0 1 2] [--epochs 30]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffusion_core.data import sources  # noqa: E402
from diffusion_core.evaluation.fd_estimators import fd_draws  # noqa: E402
from diffusion_core.features import classifier as clf  # noqa: E402
from flows.config.params import parse_params  # noqa: E402


def floors(splits: dict, epochs: int, seed: int) -> dict:
    """One classifier (on the classifier split) and its floors from seen and unseen images."""
    model = clf.train_classifier(*splits["classifier"], epochs=epochs, seed=seed)
    features = {name: clf.extract_features(model, x) for name, (x, _) in splits.items()}
    n_val, n_test = len(features["val"]), len(features["test"])
    seen = float(np.mean(fd_draws(features["classifier"], features["val"], n_val, 0)))
    unseen = float(np.mean(fd_draws(features["train"], features["val"], n_val, 0)))
    report = float(np.mean(fd_draws(features["train"], features["test"], n_test, 0)))
    return {"seed": seed, "val_accuracy": clf.accuracy(model, *splits["val"]), "seen": seen,
            "unseen": unseen, "seen_over_unseen": seen / unseen, "report_floor": report}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args(argv)
    data = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text())).data
    x, y = sources.load_source("digits", 0, data.seed)
    splits = sources.held_out_split(x, y, data.held_out_sizes(labelled_images=True), data.seed)
    print(f"digits, {' / '.join(f'{len(v[0])} {k}' for k, v in splits.items())}; classifier: "
          f"{args.epochs} epochs on the classifier split")
    rows = []
    for seed in args.seeds:
        rows.append(floors(splits, args.epochs, seed))
        row = rows[-1]
        print(f"  seed {seed}: val accuracy {row['val_accuracy']:.3f}; floor against val: seen "
              f"{row['seen']:.2f}, unseen {row['unseen']:.2f} (seen / unseen {row['seen_over_unseen']:.2f}); "
              f"the report's floor (train against test): {row['report_floor']:.2f}", flush=True)
    return rows


if __name__ == "__main__":
    main()
