"""Does the reference jackknife's standard error match the spread of FD/floor over fresh
references, in the digits regime? Gaussian features with a decaying spectrum in ``--dims``
dimensions; a fixed model's 1,000 samples and a fixed 697-point pool (the train split); each
repeat draws a fresh 500-point reference and measures FD/floor at n = 500 as the pipeline does.
Printed: the ratio's mean, its spread over references, the mean jackknife se, and their ratio
(1: the jackknife covers the reference's noise).

    .venv/bin/python benchmarks/reference_jackknife.py --dims 16 64 --repeats 40
"""
from __future__ import annotations

import argparse

import numpy as np

from diffusion_core.evaluation import intervals

SAMPLES, POOL, REFERENCE = 1000, 697, 500


def one_setting(dims: int, repeats: int, seed: int = 0) -> dict:
    """Spread of FD/floor over fresh references and the mean jackknife se, in ``dims`` dimensions."""
    rng = np.random.default_rng(seed)
    scale = np.sqrt(np.linspace(1.0, 0.05, dims))
    draw = lambda n, shift=0.0, spread=1.0: rng.standard_normal((n, dims)) * scale * spread + shift  # noqa: E731
    pool, samples = draw(POOL), draw(SAMPLES, 0.12, 1.15)
    rows = []
    for r in range(repeats):
        reference = draw(REFERENCE)
        fd = intervals.fd_against(reference)
        at_n = lambda x: np.mean([fd(x[np.random.default_rng([r, i]).permutation(len(x))[:REFERENCE]])  # noqa: E731
                                  for i in range(intervals.SUBSETS)])
        jack = intervals.reference_jackknife(intervals.fd_against, samples, reference, pool, REFERENCE,
                                             intervals.JACKKNIFE_GROUPS, r)
        rows.append((at_n(samples) / at_n(pool), np.sqrt(intervals.jackknife_variance(jack[:, 0] / jack[:, 1]))))
    rows = np.array(rows)
    spread = float(rows[:, 0].std(ddof=1))
    return {"dims": dims, "mean": float(rows[:, 0].mean()), "spread": spread, "se": float(rows[:, 1].mean()),
            "se_over_spread": float(rows[:, 1].mean() / spread)}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args(argv)
    print("| dims | FD/floor | spread over references | mean jackknife se | se / spread |\n|---|---|---|---|---|")
    out = []
    for dims in args.dims:
        out.append(one_setting(dims, args.repeats))
        row = out[-1]
        print(f"| {dims} | {row['mean']:.2f} | {row['spread']:.3f} | {row['se']:.3f} | {row['se_over_spread']:.2f} |",
              flush=True)
    return out


if __name__ == "__main__":
    main()
