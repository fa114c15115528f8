"""A sampler's wall time against NFE x the bare network forward at the same batch: what the
sampler's own arithmetic costs beyond the network (target: at most 1.1x).

The reference is the denoiser's forward pass alone, timed at the same batch in the same run;
each sampler runs through `DiffusionModel.sample` as the pipeline calls it, with per-sample
noise. Each repeat times the sampler and its reference back to back, so that a machine whose
speed drifts moves both alike; the median ratio of `--repeats` with its range.

    .venv/bin/python benchmarks/sampler_overhead.py [--batch 250] [--repeats 5]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import paired_ratios  # noqa: E402

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


def bare_forwards(model: DiffusionModel, batch: int, calls: int):
    """The reference: `calls` bare forwards of the denoiser at `batch`, as a callable."""
    x = torch.randn(batch, *model.config["data_shape"])
    ones, sigma = torch.ones(batch), torch.full((batch,), 0.5)

    @torch.no_grad()
    def forwards():
        for _ in range(calls):
            model.denoiser(x, ones, sigma)
    return forwards


def measure(name: str, batch: int, repeats: int) -> dict:
    """The sampler's time over NFE bare forwards, timed back to back in each repeat."""
    config, settings = SAMPLERS[name]
    torch.manual_seed(0)
    model = DiffusionModel(config)
    shape, noise = tuple(config["data_shape"]), lambda: PerSampleNoise(range(batch))
    _, nfe = model.sample(batch, shape, settings, noise())  # warm-up, and its NFE
    timed = paired_ratios(lambda: model.sample(batch, shape, settings, noise()),
                          bare_forwards(model, batch, nfe), repeats)
    return {"sampler": name, "nfe": nfe, **timed}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    args = parser.parse_args(argv)
    results = [measure(name, args.batch, args.repeats) for name in args.samplers]
    for r in results:
        print(f"{r['sampler']:>18}: NFE {r['nfe']:4d}, {r['seconds']:.2f} s against NFE x forward "
              f"{r['reference_seconds']:.2f} s: {r['ratio']:.2f}x ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})")
    return results


if __name__ == "__main__":
    main()
