"""Evaluation of 10,000 digit samples (features, FD, KID, precision/recall, coverage,
memorization) through the pipeline's Ray path, against a single-process reference of the same
metrics in the same run. Target: the Ray path within 120 s on this machine.

The samples are real training digits with seeded Gaussian jitter, clipped to [-1, 1] (the
timing does not depend on how good they are); the classifier is trained briefly (not timed).

    .venv/bin/python benchmarks/evaluate_10k.py [--samples 10000] [--workers 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffusion_core.data import shards, sources  # noqa: E402
from diffusion_core.evaluation import (
    fidelity,  # noqa: E402
    frechet,  # noqa: E402
    metrics,  # noqa: E402
)
from diffusion_core.features import classifier as clf  # noqa: E402
from flows.stages.image_eval import image_fidelity  # noqa: E402


def setup(work: Path, n: int) -> None:
    """Digits shards, a briefly trained classifier, and n jittered-digit sample shards."""
    x, y = sources.load_source("digits", 0, 0)
    x_tr, y_tr, x_te, y_te = sources.train_test_split(x, y, 500, 0)
    shards.write_shards(work / "data", {"train": (x_tr, y_tr), "test": (x_te, y_te)}, 256, {})
    model = clf.train_classifier(x_tr, y_tr, epochs=5)
    clf.save_classifier(model, work / "classifier")
    (work / "classifier" / "classifier_metrics.json").write_text(
        f'{{"applicable": true, "test_accuracy": {clf.accuracy(model, x_te, y_te)}, '
        f'"sha256": "{clf.classifier_hash(work / "classifier")}"}}')
    rng = np.random.default_rng(0)
    fake = x_tr[rng.integers(0, len(x_tr), n)] + 0.15 * rng.standard_normal((n, *x_tr.shape[1:]))
    shards.write_shards(work / "samples", {"samples": (np.clip(fake, -1, 1).astype(np.float32), None)},
                        1000, {})


def single_process(work: Path) -> float:
    """The same metrics without Ray: whole splits in memory, one process."""
    start = time.perf_counter()
    model = clf.load_classifier(work / "classifier")
    fake, _ = shards.load_split(work / "samples", "samples")
    test, _ = shards.load_split(work / "data", "test")
    train, _ = shards.load_split(work / "data", "train")
    f_fake, f_test, f_train = (clf.extract_features(model, a) for a in (fake, test, train))
    frechet.frechet_distance_from_features(f_fake, f_test)
    frechet.frechet_distance_from_features(f_train, f_test)
    fidelity.kernel_inception_distance(f_test, f_fake)
    fidelity.precision_recall(f_test, f_fake)
    metrics.class_coverage(clf.predict(model, fake), 10)
    fidelity.memorization(fake, test, train)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    os.environ.pop("RAY_ADDRESS", None)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        setup(work, args.samples)
        reference = single_process(work)
        start = time.perf_counter()
        result = image_fidelity(work / "samples", work / "data", work / "classifier",
                                keep=args.samples, num_workers=args.workers)
        ray_s = time.perf_counter() - start
    print(f"\n{result['num_samples']} samples against {result['num_reference']} held-out: "
          f"FD {result['fd']:.3f} (floor {result['fd_floor']:.3f}), KID {result['kid']:.4f}, "
          f"precision {result['precision']:.3f}, recall {result['recall']:.3f}, "
          f"coverage {result['class_coverage']:.2f}, memorization nn_ratio {result['nn_ratio']:.3f}")
    print(f"single process (reference): {reference:6.1f} s")
    print(f"Ray, {args.workers} workers:          {ray_s:6.1f} s  (ratio to reference "
          f"{ray_s / reference:.2f}x; {ray_s / 120:.2f} of the 120 s budget)")
    print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
