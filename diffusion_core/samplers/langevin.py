"""Langevin dynamics driven by a score model: plain (one fixed noise level) and annealed over a
noise ladder (Song & Ermon, 2019, algorithm 1).

A score model is called as score_fn(x, sigma) with sigma a (B,) tensor. Samplers return
(samples, number of score evaluations). Every step takes its noise as an explicit tensor;
the loops draw it from `generator`, or take all of it at once through `noise`
(shaped (steps, *x.shape)), so a run can be replayed against another implementation.
The loops run under torch.no_grad(); an energy model (`EnergyScore`) enables grad for x
locally.
"""
from __future__ import annotations

import torch

from diffusion_core.noise import normal
from diffusion_core.objectives.score_matching import validate_sigmas
from diffusion_core.tensors import batch_of
from diffusion_core.types import Progress


def check_positive(name: str, value) -> float:
    value = float(value)
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def check_count(name: str, value) -> int:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _noise_at(noise, generator, x: torch.Tensor, step: int, total: int) -> torch.Tensor:
    if noise is None:
        return normal(x.shape, generator, like=x)
    if noise.shape[0] != total or noise.shape[1:] != x.shape:
        raise ValueError(f"noise must be shaped {(total,) + tuple(x.shape)}, "
                         f"got {tuple(noise.shape)}")
    return noise[step].to(x)


def langevin_step(score_fn, x: torch.Tensor, sigma, step_size: float,
                  noise: torch.Tensor) -> torch.Tensor:
    """One Langevin step x + (alpha/2) s(x, sigma) + sqrt(alpha) z (Song & Ermon, 2019, eq. 4)."""
    step_size = check_positive("step_size", step_size)
    return x + 0.5 * step_size * score_fn(x, batch_of(sigma, x)) + step_size**0.5 * noise


def tweedie_step(score_fn, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """x + sigma^2 s(x, sigma): E[x0 | x] for x = x0 + sigma z (Tweedie's formula; the final
    denoising step of Jolicoeur-Martineau et al., 2021)."""
    return x + sigma**2 * score_fn(x, batch_of(sigma, x))


@torch.no_grad()
def langevin_dynamics(score_fn, x: torch.Tensor, step_size: float, n_steps: int, sigma=0.0,
                      generator=None, noise: torch.Tensor | None = None,
                      progress: Progress = None, final_denoise: bool = False):
    """Plain Langevin dynamics at one fixed noise level `sigma` (Song & Ermon, 2019, eq. 4;
    for a well-separated mixture it fails to find the mode weights: section 3.2.2); then, if
    `final_denoise` (and sigma > 0), one Tweedie step."""
    check_positive("step_size", step_size)
    check_count("n_steps", n_steps)
    for k in range(n_steps):
        x = langevin_step(score_fn, x, sigma, step_size, _noise_at(noise, generator, x, k, n_steps))
        if progress:
            progress(k + 1, n_steps)
    denoise = final_denoise and float(sigma) > 0
    return (tweedie_step(score_fn, x, float(sigma)) if denoise else x), n_steps + int(denoise)


def annealed_step_sizes(sigmas, eps: float) -> torch.Tensor:
    """alpha_i = eps sigma_i^2 / sigma_L^2 (Song & Ermon, 2019, algorithm 1), float64."""
    sigmas = validate_sigmas(sigmas)
    return check_positive("eps", eps) * sigmas**2 / sigmas[-1] ** 2


@torch.no_grad()
def annealed_langevin_dynamics(score_fn, x: torch.Tensor, sigmas, eps: float,
                               steps_per_sigma: int, generator=None,
                               noise: torch.Tensor | None = None, final_denoise: bool = True,
                               progress: Progress = None):
    """Annealed Langevin dynamics (Song & Ermon, 2019, algorithm 1): for each sigma_i, T steps
    of x <- x + (alpha_i/2) s(x, sigma_i) + sqrt(alpha_i) z; then, if `final_denoise`, one
    step x + sigma_L^2 s(x, sigma_L) (Tweedie; Jolicoeur-Martineau et al., 2021)."""
    sigmas = validate_sigmas(sigmas)
    alphas = annealed_step_sizes(sigmas, eps)
    check_count("steps_per_sigma", steps_per_sigma)
    total, k = len(sigmas) * steps_per_sigma, 0
    for sigma, alpha in zip(sigmas.tolist(), alphas.tolist()):
        for _ in range(steps_per_sigma):
            x = langevin_step(score_fn, x, sigma, alpha, _noise_at(noise, generator, x, k, total))
            k += 1
            if progress:
                progress(k, total)
    if final_denoise:
        x = tweedie_step(score_fn, x, float(sigmas[-1]))
    return x, total + int(final_denoise)
