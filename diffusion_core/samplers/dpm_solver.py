"""DPM-Solver++ (Lu et al., 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models"): multistep solvers of the probability-flow ODE in data-prediction form.

In the rescaled space x~ = x / alpha with noise level s = sigma / alpha (see models/denoiser.py)
every process's ODE is dx~/ds = (x~ - D(x~; s)) / s, and with lambda = -log s its exact solution
from s to s' < s is

    x~(s') = (s' / s) x~(s) + s' int_lambda^lambda' e^lambda D dlambda       (Lu et al., eq. 9)

DPM-Solver++(1S) holds D constant over the step (it is DDIM); 2M extrapolates D linearly in
lambda from the last two evaluations (algorithm 2). One network evaluation per step, the same
for VP and VE models: the grid is a sequence of noise levels.
"""
from __future__ import annotations

import math

import torch

from diffusion_core.models.denoiser import predict_x0
from diffusion_core.types import Progress


def dpm_solver_pp_step(x: torch.Tensor, s: float, s_next: float, data: torch.Tensor) -> torch.Tensor:
    """x~(s') = (s'/s) x~ + (1 - s'/s) D: the exact ODE step for a D constant in lambda (eq. 9)."""
    ratio = s_next / s
    return ratio * x + (1 - ratio) * data


def second_order_data(x0: torch.Tensor, previous: torch.Tensor, h: float, h_previous: float):
    """D extrapolated to the step's midpoint in lambda: (1 + 1/(2r)) D_i - 1/(2r) D_{i-1} with
    r = h_{i-1} / h_i (Lu et al., 2022, algorithm 2)."""
    r = h_previous / h
    return (1 + 0.5 / r) * x0 - (0.5 / r) * previous


@torch.no_grad()
def dpm_solver_pp_2m(denoiser, x: torch.Tensor, sigmas: torch.Tensor, progress: Progress = None):
    """DPM-Solver++(2M) (Lu et al., 2022, algorithm 2) from noise level sigmas[0] to sigmas[-1]
    (0, where the step returns D) in the rescaled space; first order on the first step and on
    the last (the step to 0, where lambda is infinite). Returns (samples, NFE)."""
    steps, previous, h_previous = len(sigmas) - 1, None, None
    for i in range(steps):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = predict_x0(denoiser, x, 1.0, s, None)
        if s_next == 0:
            x = x0
        else:
            h = math.log(s / s_next)
            data = x0 if previous is None else second_order_data(x0, previous, h, h_previous)
            x = dpm_solver_pp_step(x, s, s_next, data)
            previous, h_previous = x0, h
        if progress:
            progress(i + 1, steps)
    return x, steps
