"""Cost of drawing training times for the sde framework's importance-sampled DSM: the closed-form
t(s) of each process against the generic 60-step bisection (the reference, measured in the same
run), and one training step of the 2-D MLP with each, beside ddpm's loss.

    .venv/bin/python benchmarks/noise_level_inverse.py
"""
from __future__ import annotations

import time

import torch

from diffusion_core.frameworks import DiffusionModel
from diffusion_core.processes.sde import SDE, VESDE, VPSDE, SubVPSDE

NET = {"kind": "mlp", "dim": 2, "width": 256, "depth": 4, "emb_dim": 64}
BASE = {"process": {"kind": "vp", "beta_min": 0.1, "beta_max": 20.0, "N": 1000},
        "parameterization": "edm", "sigma_data": 1.0, "network": NET, "data_shape": [2]}
LOSSES = {"ddpm (lognormal)": {"kind": "lognormal", "p_mean": -1.2, "p_std": 1.2, "weighting": "network"},
          "sde (dsm, importance)": {"kind": "dsm", "eps": 1e-5, "weighting": "lognormal",
                                    "p_mean": -1.8, "p_std": 1.4, "importance": True}}


def seconds(fn, repeats: int = 50) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def step_seconds(loss: dict, x: torch.Tensor) -> float:
    model = DiffusionModel({**BASE, "framework": "sde", "loss": loss})
    optimizer, generator = torch.optim.Adam(model.denoiser.parameters()), torch.Generator().manual_seed(0)

    def step():
        value = model.loss(x, generator).mean()
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    return seconds(step)


def main() -> None:
    torch.set_num_threads(2)
    s = torch.exp(torch.randn(512, dtype=torch.float64))
    for process in (VPSDE(), SubVPSDE(), VESDE(0.01, 50.0)):
        reference = seconds(lambda: SDE.time_of_noise_level(process, s, 1e-5))
        closed = seconds(lambda: process.time_of_noise_level(s, 1e-5))
        print(f"{type(process).__name__:9s} t(s) of 512 levels: bisection {reference * 1e3:.2f} ms, "
              f"closed form {closed * 1e3:.3f} ms: {reference / closed:.0f}x faster")
    x = torch.randn(512, 2)
    times = {name: step_seconds(loss, x) for name, loss in LOSSES.items()}
    reference = times["ddpm (lognormal)"]
    for name, value in times.items():
        print(f"training step, MLP 256x4, batch 512, {name}: {value * 1e3:.1f} ms "
              f"({value / reference:.2f}x ddpm's)")


if __name__ == "__main__":
    main()
