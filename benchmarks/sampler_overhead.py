"""A sampler's wall time against NFE x the bare network forward at the same batch: what the
sampler's own arithmetic costs beyond the network (target: at most 1.1x).

The reference is the denoiser's forward pass alone, timed at the same batch in the same run;
each sampler runs through `DiffusionModel.sample` as the pipeline calls it, with per-sample
noise. Medians of `--repeats` with the spread.

    .venv/bin/python benchmarks/sampler_overhead.py [--batch 250] [--repeats 3]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import median_time  # noqa: E402

from diffusion_core.frameworks import DiffusionModel  # noqa: E402
from diffusion_core.noise import PerSampleNoise  # noqa: E402

NETWORK = {"kind": "unet", "channels": 1, "image_size": 8, "base": 32, "mults": [1, 2], "blocks": 1,
           "emb_dim": 64}
VP = {"framework": "ddpm", "process": {"kind": "vp"}, "parameterization": "edm", "sigma_data": 0.5,
      "loss": {"kind": "ddpm"}, "network": NETWORK, "data_shape": [1, 8, 8]}
VE = {**VP, "framework": "ncsn", "process": {"kind": "ve", "sigma_min": 0.01, "sigma_max": 10.0, "N": 100},
      "parameterization": "eps", "loss": {"kind": "ncsn"}}
SAMPLERS = {  # name -> (model config, settings): the pipeline's default samplers at their NFE
    "ddim-50": (VP, {"name": "ddim", "steps": 50}),
    "heun-35": (VP, {"name": "heun", "steps": 35}),
    "pc-100": (VP, {"name": "pc", "steps": 100, "predictor": "euler_maruyama"}),
    "ode-heun-25": (VP, {"name": "ode", "solver": "heun", "steps": 25}),
    "dpmpp-2m-20": (VP, {"name": "dpmpp_2m", "steps": 20}),
    "annealed-langevin": (VE, {"name": "annealed_langevin", "steps_per_sigma": 1}),
}


def forward_seconds(model: DiffusionModel, batch: int, repeats: int, calls: int = 20) -> float:
    """One bare forward of the denoiser at `batch` (median over repeats of `calls` calls)."""
    x = torch.randn(batch, *model.config["data_shape"])
    ones, sigma = torch.ones(batch), torch.full((batch,), 0.5)
    with torch.no_grad():
        model.denoiser(x, ones, sigma)
        median, _, _ = median_time(lambda: [model.denoiser(x, ones, sigma) for _ in range(calls)], repeats)
    return median / calls


def measure(name: str, batch: int, repeats: int) -> dict:
    config, settings = SAMPLERS[name]
    torch.manual_seed(0)
    model = DiffusionModel(config)
    shape, noise = tuple(config["data_shape"]), lambda: PerSampleNoise(range(batch))
    _, nfe = model.sample(batch, shape, settings, noise())
    median, low, high = median_time(lambda: model.sample(batch, shape, settings, noise()), repeats)
    reference = nfe * forward_seconds(model, batch, repeats)
    return {"sampler": name, "nfe": nfe, "seconds": median, "min": low, "max": high,
            "reference_seconds": reference, "ratio": median / reference}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    args = parser.parse_args(argv)
    results = [measure(name, args.batch, args.repeats) for name in args.samplers]
    for r in results:
        print(f"{r['sampler']:>18}: NFE {r['nfe']:4d}, {r['seconds']:.2f} s ({r['min']:.2f}-{r['max']:.2f}) "
              f"against NFE x forward {r['reference_seconds']:.2f} s: {r['ratio']:.2f}x")
    return results


if __name__ == "__main__":
    main()
