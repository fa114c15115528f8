"""Quality against NFE of the few-step samplers, with a perfect model: the project's DPM-Solver++(2M),
DDIM and Heun against diffusers' DPMSolverMultistepScheduler on the same network, and the
1000-step ancestral sampler as the reference.

The network is the exact denoiser of the `gmm8` mixture (eight narrow modes on a circle), so
every difference is the sampler's own error. The process is DDPM's linear VP chain
(beta = linspace(1e-4, 0.02, 1000)), which diffusers' scheduler is configured with as well; it
calls the same exact denoiser as an eps-prediction network at its integer timesteps. Figure:
the sliced Wasserstein distance (SWD) of `--samples` samples to a large draw from the mixture,
over its floor (the SWD of as many real points); the median over `--seeds` noise seeds with
its range. The fewest NFE within 10% of the reference is printed per sampler. DPM-Solver++ runs
on each of its grid spacings; benchmarks/few_step_digits.py sets them against diffusers on
learned networks, which err where an exact denoiser does not.

    .venv/bin/python benchmarks/few_step_samplers.py [--nfe 5 10 20 50] [--samples 4000] [--seeds 10]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusion_core.evaluation.metrics import sliced_wasserstein  # noqa: E402
from diffusion_core.frameworks import DiffusionModel  # noqa: E402
from diffusion_core.models.analytic import gmm8_mixture  # noqa: E402

PROJECT = {  # name -> its settings at an NFE
    "dpmpp_2m_logsnr": lambda nfe: {"name": "dpmpp_2m", "steps": nfe, "spacing": "logsnr"},
    "dpmpp_2m_time": lambda nfe: {"name": "dpmpp_2m", "steps": nfe, "spacing": "time"},
    "dpmpp_2m_karras": lambda nfe: {"name": "dpmpp_2m", "steps": nfe, "spacing": "karras"},
    "ddim": lambda nfe: {"name": "ddim", "steps": nfe, "spacing": "karras"},
    "heun": lambda nfe: {"name": "heun", "steps": nfe},  # its NFE: steps, made odd
}
REFERENCE = {"name": "ancestral"}  # the chain's 1000 steps


def exact_model() -> DiffusionModel:
    """A ddpm model on the linear VP chain whose denoiser is gmm8's exact one."""
    config = {"framework": "ddpm", "process": {"kind": "vp"}, "parameterization": "eps",
              "sigma_data": 0.5, "loss": {"kind": "ddpm"}}
    model = DiffusionModel(config, network=torch.nn.Identity())
    model.denoiser = gmm8_mixture()
    return model


def diffusers_dpm_solver(n: int, nfe: int, seed: int) -> tuple[torch.Tensor, int]:
    """n samples from diffusers' DPMSolverMultistepScheduler (DPM-Solver++, second order, its
    default timestep spacing) calling the exact denoiser as an eps-prediction network."""
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                            beta_schedule="linear", algorithm_type="dpmsolver++",
                                            solver_order=2)
    scheduler.set_timesteps(nfe)
    mixture, abar = gmm8_mixture(), scheduler.alphas_cumprod.double()
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    for t in scheduler.timesteps:
        alpha, sigma = abar[t].sqrt().expand(n), (1 - abar[t]).sqrt().expand(n)
        eps = mixture(x, alpha, sigma).eps
        x = scheduler.step(eps, t, x).prev_sample
    return x.float(), len(scheduler.timesteps)


def project_sampler(model: DiffusionModel, n: int, settings: dict, seed: int) -> tuple[torch.Tensor, int]:
    return model.sample(n, (2,), settings, torch.Generator().manual_seed(seed))


def swd_over_floor(x: torch.Tensor, real: torch.Tensor, floor: float) -> float:
    return sliced_wasserstein(x.float().numpy(), real.numpy()) / floor


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args(argv)
    model, mixture = exact_model(), gmm8_mixture()
    real, _ = mixture.sample(20_000, torch.Generator().manual_seed(10_000))
    same_size, _ = mixture.sample(args.samples, torch.Generator().manual_seed(10_001))
    floor = sliced_wasserstein(same_size.numpy(), real.numpy())
    draws = {name: (lambda nfe, seed, make=make: project_sampler(model, args.samples, make(nfe), seed))
             for name, make in PROJECT.items()}
    draws["diffusers_dpm_solver"] = lambda nfe, seed: diffusers_dpm_solver(args.samples, nfe, seed)
    seeds = range(args.seeds)
    reference = [swd_over_floor(project_sampler(model, args.samples, REFERENCE, s)[0], real, floor) for s in seeds]
    result = {"floor": floor, "reference": _summary(reference, 1000), "samplers": {}}
    print(f"gmm8, {args.samples} samples, SWD floor {floor:.4f}; SWD / floor, median (range) over {args.seeds} seeds")
    print(f"  ancestral 1000 (reference): {_format(result['reference'])}")
    for name, draw in draws.items():
        rows = []
        for nfe in args.nfe:
            runs = [draw(nfe, s) for s in seeds]
            rows.append(_summary([swd_over_floor(x, real, floor) for x, _ in runs], runs[0][1]))
        within = [row["nfe"] for row in rows if row["median"] <= 1.1 * result["reference"]["median"]]
        result["samplers"][name] = {"rows": rows, "fewest_nfe_within_10pct": min(within, default=None)}
        print(f"  {name:>21}: " + ", ".join(f"NFE {row['nfe']} {_format(row)}" for row in rows)
              + f"; fewest NFE within 10% of the reference: {min(within, default='none')}")
    return result


def _summary(values: list[float], nfe: int) -> dict:
    return {"nfe": nfe, "median": statistics.median(values), "min": min(values), "max": max(values)}


def _format(row: dict) -> str:
    return f"{row['median']:.2f} ({row['min']:.2f}-{row['max']:.2f})"


if __name__ == "__main__":
    main()
