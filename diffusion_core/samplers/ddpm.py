"""Samplers of DDPM's discrete chain: ancestral sampling (Ho et al., 2020) and DDIM (Song et al., 2021).

Each sampler is a function of (denoiser, process, x_T, steps, noise source, progress callback)
returning (samples, number of network evaluations). Each stochastic step takes its noise as an
explicit tensor so it can be checked against another implementation.
"""
from __future__ import annotations

import torch

from diffusion_core.models.denoiser import predict_x0
from diffusion_core.noise import normal
from diffusion_core.processes.ddpm_chain import DDPMChain
from diffusion_core.samplers.edm import karras_sigmas
from diffusion_core.types import Progress


def ddpm_ancestral_step(denoiser, chain: DDPMChain, x, index: int, noise, clip=None):
    """One step of DDPM ancestral sampling: x_{t-1} ~ q(x_{t-1} | x_t, x0_hat) (Ho et al., alg. 2)."""
    alpha, sigma = chain.alpha_sigma(torch.tensor(index))
    x0 = predict_x0(denoiser, x, alpha, sigma, clip)
    mean, var = chain.posterior_mean_variance(x0, x, torch.full((x.shape[0],), index))
    return mean + var.sqrt() * noise


@torch.no_grad()
def ddpm_ancestral(denoiser, chain: DDPMChain, x, generator=None, clip=None,
                   progress: Progress = None):
    """DDPM ancestral sampling over all N steps of the chain (Ho et al., 2020, algorithm 2)."""
    for step, index in enumerate(reversed(range(chain.N))):
        noise = normal(x.shape, generator, like=x) if index > 0 else torch.zeros_like(x)
        x = ddpm_ancestral_step(denoiser, chain, x, index, noise, clip)
        if progress:
            progress(step + 1, chain.N)
    return x, chain.N


DDIM_SPACINGS = ("uniform", "quadratic", "karras")


def ddim_timesteps(num_train_steps: int, steps: int, spacing: str = "uniform",
                   noise_levels: torch.Tensor | None = None) -> list[int]:
    """Chain indices descending from N-1 to 0. "uniform" and "quadratic" are DDIM's own
    sub-sequences (Song et al., 2021, section 4.2 and appendix D.2); "karras" takes the indices
    whose noise levels s_i = sigma_i / alpha_i lie nearest to Karras et al.'s rho = 7 spacing
    (2022, eq. 5), which puts more steps where s is small; it needs the chain's `noise_levels`."""
    if not 1 <= steps <= num_train_steps:
        raise ValueError(f"steps must lie in [1, {num_train_steps}], got {steps}")
    if spacing == "uniform":
        grid = torch.linspace(0, num_train_steps - 1, steps)
    elif spacing == "quadratic":
        grid = torch.linspace(0, (num_train_steps - 1) ** 0.5, steps) ** 2
    elif spacing == "karras" and noise_levels is not None:
        levels = noise_levels.double().log()
        targets = karras_sigmas(float(noise_levels[0]), float(noise_levels[-1]), steps)[:-1].log()
        grid = (levels[None, :] - targets[:, None]).abs().argmin(dim=1).double()
    else:
        raise ValueError(f"spacing must be one of {DDIM_SPACINGS} (karras needs noise_levels), "
                         f"got {spacing!r}")
    return _distinct_descending(sorted(grid.round().long().tolist()), num_train_steps)


def _distinct_descending(ascending: list[int], num_train_steps: int) -> list[int]:
    """Lift repeated indices (where a spacing is denser than the chain) to the next free one."""
    for k in range(1, len(ascending)):
        ascending[k] = max(ascending[k], ascending[k - 1] + 1)
    if ascending[-1] > num_train_steps - 1:
        raise ValueError(f"steps={len(ascending)} is too many for this spacing on {num_train_steps}")
    return ascending[::-1]


def ddim_step(denoiser, chain: DDPMChain, x, index: int, prev_index: int, eta: float,
              noise, clip=None):
    """x_{t'} = sqrt(abar') x0_hat + sqrt(1 - abar' - s^2) eps_hat + s z (DDIM, eq. 12)."""
    abar = chain.alphas_cumprod[index]
    abar_prev = chain.alphas_cumprod[prev_index] if prev_index >= 0 else torch.tensor(1.0)
    x0 = predict_x0(denoiser, x, abar.sqrt(), (1 - abar).sqrt(), clip)
    eps = (x - abar.sqrt() * x0) / (1 - abar).sqrt()
    std = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()
    direction = (1 - abar_prev - std**2).clamp(min=0).sqrt()
    return (abar_prev.sqrt() * x0 + direction * eps + std * noise).to(x.dtype)


@torch.no_grad()
def ddim(denoiser, chain: DDPMChain, x, steps: int = 50, eta: float = 0.0, generator=None,
         clip=None, progress: Progress = None, spacing: str = "uniform"):
    """DDIM sampling on a subsequence of the chain; eta = 0 is deterministic (Song et al., 2021)."""
    levels = chain.noise_level(torch.arange(chain.N)) if spacing == "karras" else None
    indices = ddim_timesteps(chain.N, steps, spacing, levels)
    for k, index in enumerate(indices):
        prev = indices[k + 1] if k + 1 < len(indices) else -1
        noise = normal(x.shape, generator, like=x) if eta > 0 else 0.0
        x = ddim_step(denoiser, chain, x, index, prev, eta, noise, clip)
        if progress:
            progress(k + 1, len(indices))
    return x, len(indices)
