"""EDM's deterministic sampler (Karras et al., 2022): Heun's method on the probability-flow ODE
in the rescaled space x / alpha, over Karras-spaced noise levels.

The ODE in noise level s is dx/ds = (x - D(x; s)) / s for every process, so `heun_pf_ode`
takes any process's noise levels through the same `Denoiser`. The registry's `heun` sampler
draws from VP models only: it spaces its levels on the model's DDPM chain.
"""
from __future__ import annotations

import torch

from diffusion_core.models.denoiser import predict_x0
from diffusion_core.types import Progress

# EDM's largest noise level (Karras et al., 2022, section 5): above it the rescaled marginal is
# the prior to within (data variance) / s^2, and the ODE does next to nothing.
SIGMA_MAX = 80.0


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0):
    """Noise levels s_i = (s_max^(1/rho) + i/(n-1) (s_min^(1/rho) - s_max^(1/rho)))^rho, then 0
    (Karras et al., 2022, eq. 5)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


def log_snr_sigmas(sigma_min: float, sigma_max: float, steps: int):
    """Noise levels uniform in lambda = -log s (half the log-SNR) from sigma_max to sigma_min, then
    0: the spacing Lu et al. (2022, section 3.3) recommend for DPM-Solver; Karras' with rho -> inf."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    sigmas = sigma_max * (sigma_min / sigma_max) ** ramp
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


@torch.no_grad()
def heun_pf_ode(denoiser, x, sigmas: torch.Tensor, progress: Progress = None):
    """Heun's 2nd-order solver of the probability-flow ODE dx/ds = (x - D(x; s)) / s
    (Karras et al., 2022, algorithm 1, deterministic). x lives in the rescaled space x / alpha,
    starting at noise level sigmas[0]; the last step (to s = 0) is an Euler step."""
    nfe, steps = 0, len(sigmas) - 1
    for i in range(steps):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        slope = (x - predict_x0(denoiser, x, 1.0, s, None)) / s
        x_next = x + (s_next - s) * slope
        nfe += 1
        if s_next > 0:
            slope_next = (x_next - predict_x0(denoiser, x_next, 1.0, s_next, None)) / s_next
            x_next = x + (s_next - s) * 0.5 * (slope + slope_next)
            nfe += 1
        x = x_next
        if progress:
            progress(i + 1, steps)
    return x, nfe
