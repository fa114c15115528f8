"""Training objectives. Each returns one value per example; the caller reduces.

A loss is a noise distribution, a weight and a target (Karras et al., 2022, section 5): the
target and the unit weight on the raw network output come from `Denoiser.target`, so the same
function serves every parameterization.
"""
from __future__ import annotations

import torch

from diffusion_core.models.denoiser import Denoiser
from diffusion_core.processes.ddpm_chain import DDPMChain
from diffusion_core.tensors import append_dims, mean_except_batch

WEIGHTINGS = ("network", "x0")


def denoising_loss(denoiser: Denoiser, x0: torch.Tensor, alpha: torch.Tensor,
                   sigma: torch.Tensor, noise: torch.Tensor, weighting: str = "network") -> torch.Tensor:
    """Regression on the noisy state alpha x0 + sigma noise, averaged over each example's dims.

    "network": || F - target ||^2, unit weight on the raw network output (for "eps" this is
    DDPM's L_simple, for "edm" EDM's lambda(s) = 1 / c_out(s)^2).
    "x0": || D(x) - x0 ||^2, the same weight at every noise level in data space, which leaves
    the low-noise levels (where eps is unpredictable) to the parameterization's skip path.
    """
    x = append_dims(alpha, x0.ndim) * x0 + append_dims(sigma, x0.ndim) * noise
    if weighting == "x0":
        return mean_except_batch((denoiser(x, alpha, sigma).x0 - x0) ** 2)
    if weighting != "network":
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    out, _, _ = denoiser.raw(x, alpha, sigma)
    return mean_except_batch((out - denoiser.target(x0, noise, alpha, sigma)) ** 2)


def ddpm_loss(denoiser: Denoiser, chain: DDPMChain, x0: torch.Tensor,
              generator: torch.Generator | None = None, weighting: str = "network") -> torch.Tensor:
    """DDPM's simplified objective L_simple (Ho et al., 2020, eq. 14): t ~ U{1..N}, eps ~ N(0, I).

    With the "eps" parameterization this is exactly || eps - eps_theta(x_t, t) ||^2; the other
    parameterizations regress their own target on the same noisy states.
    """
    index = torch.randint(0, chain.N, (x0.shape[0],), generator=generator)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    alpha, sigma = chain.alpha_sigma(index)
    return denoising_loss(denoiser, x0, alpha.to(x0), sigma.to(x0), noise, weighting)


def lognormal_loss(denoiser: Denoiser, x0: torch.Tensor, p_mean: float = -1.2, p_std: float = 1.2,
                   generator: torch.Generator | None = None, weighting: str = "network") -> torch.Tensor:
    """EDM's training noise distribution, ln s ~ N(p_mean, p_std^2) (Karras et al., 2022, table 1),
    on the variance-preserving path alpha = 1 / sqrt(1 + s^2), sigma = s alpha. The denoiser
    only sees s, so a model trained this way samples with any process's chain."""
    s = torch.exp(p_mean + p_std * torch.randn(x0.shape[0], generator=generator)).to(x0)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    alpha = (1 + s**2).rsqrt()
    return denoising_loss(denoiser, x0, alpha, s * alpha, noise, weighting)
