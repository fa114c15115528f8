"""DDPM's variational bound on -log p_theta(x_0) (Ho et al., 2020, eq. 5), term by term:

    L = L_T + sum_{t=2}^{N} L_{t-1} + L_0
    L_T     = KL(q(x_N | x_0) || N(0, I))                            prior matching
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))    denoising matching
    L_0     = -log p_theta(x_0 | x_1)                                reconstruction

Every KL is between Gaussians with diagonal covariance, in closed form. The model's reverse step
p_theta(x_{t-1} | x_t) = N(mu_theta, sigma_t^2 I) has the posterior mean at the denoiser's x0
estimate (mu_theta of eq. 11, here in its x0 form) and a fixed variance: "posterior" sigma_t^2 =
beta_tilde_t or "beta" sigma_t^2 = beta_t (section 3.2); as in Ho et al.'s code the decoder at
t = 1 uses beta_tilde_2 in both, since beta_tilde_1 = 0. The sum over t is exact; each term's
expectation over x_t ~ q(x_t | x_0) uses one draw per example. L_0 is the discretized Gaussian
decoder of eq. 13 for data on a grid of `levels` values in [-1, 1] (bins of width 2/(levels-1),
the outermost open to infinity), else the Gaussian density (continuous data, nats).
Chain index i = 0 .. N-1 stands for t = i + 1.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch.special import log_ndtr

from diffusion_core.likelihood.pf_ode import bin_width, check_quantized
from diffusion_core.noise import normal
from diffusion_core.processes.ddpm_chain import DDPMChain
from diffusion_core.tensors import append_dims, sum_except_batch

MODEL_VARIANCES = ("posterior", "beta")


class Bound(NamedTuple):
    prior: torch.Tensor           # (B,) L_T, nats
    denoising: torch.Tensor       # (B,) sum over t = 2..N of L_{t-1}, nats
    reconstruction: torch.Tensor  # (B,) L_0, nats (a probability for levels, a density else)
    terms: torch.Tensor           # (N - 1,) batch mean of each L_{t-1}, t = 2..N
    nfe: int

    @property
    def total(self) -> torch.Tensor:
        return self.prior + self.denoising + self.reconstruction


def gaussian_kl(mean1, var1, mean2, var2) -> torch.Tensor:
    """KL(N(mean1, var1) || N(mean2, var2)) per element."""
    return 0.5 * (torch.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1)


def model_variances(chain: DDPMChain, kind: str = "posterior") -> torch.Tensor:
    """sigma_t^2 of p_theta(x_{t-1} | x_t) per chain index (float64, (N,))."""
    if kind not in MODEL_VARIANCES:
        raise ValueError(f"model_variance must be one of {MODEL_VARIANCES}, got {kind!r}")
    var = (chain.posterior_variance if kind == "posterior" else chain.betas).clone()
    var[0] = chain.posterior_variance[1]
    return var


def log_normal_mass(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """log(Phi(upper) - Phi(lower)) for lower < upper, accurate in both tails (it works in the
    left tail, reflecting intervals that lie right of 0)."""
    flip = lower > 0
    lower, upper = torch.where(flip, -upper, lower), torch.where(flip, -lower, upper)
    log_upper = log_ndtr(upper)
    return log_upper + torch.log1p(-torch.exp(log_ndtr(lower) - log_upper))


def discretized_gaussian_log_likelihood(x, mean, std, levels: int) -> torch.Tensor:
    """log P(x) per element for N(mean, std^2) integrated over the bin of x on the grid of
    `levels` values in [-1, 1] (Ho et al., 2020, eq. 13); the edge bins extend to -inf / +inf."""
    half = bin_width(levels) / 2
    lower = torch.where(x <= -1 + half / 2, -math.inf, (x - half - mean) / std)
    upper = torch.where(x >= 1 - half / 2, math.inf, (x + half - mean) / std)
    return log_normal_mass(lower, upper)


def _model_mean(denoiser, chain: DDPMChain, x: torch.Tensor, index: torch.Tensor, dtype, clip):
    """mu_theta(x_t, t): the posterior mean of q(x_{t-1} | x_t, x0_hat), float64."""
    alpha, sigma = chain.alpha_sigma(index)
    x0 = denoiser(x.to(dtype), alpha.to(dtype), sigma.to(dtype)).x0.double()
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
    return chain.posterior_mean_variance(x0, x, index)[0]


def prior_term(chain: DDPMChain, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(N(sqrt(abar_N) x0, (1 - abar_N) I) || N(0, I)) per example."""
    index = torch.full((x0.shape[0],), chain.N - 1)
    mean, std = chain.q_mean_std(x0.double(), index)
    return sum_except_batch(gaussian_kl(mean, std**2, torch.zeros_like(mean), torch.ones_like(mean)))


def denoising_term(denoiser, chain: DDPMChain, x0, index: torch.Tensor, noise, variances,
                   clip=None) -> torch.Tensor:
    """L_{t-1} per example at chain indices `index` >= 1, for x_t = q_sample(x0, index, noise)."""
    x0d = x0.double()
    xt = chain.q_sample(x0d, index, noise.double())
    true_mean, true_var = chain.posterior_mean_variance(x0d, xt, index)
    mean = _model_mean(denoiser, chain, xt, index, x0.dtype, clip)
    var = append_dims(variances[index], xt.ndim)
    return sum_except_batch(gaussian_kl(true_mean, true_var, mean, var))


def reconstruction_term(denoiser, chain: DDPMChain, x0, noise, variances, levels=None,
                        clip=None) -> torch.Tensor:
    """L_0 = -log p_theta(x_0 | x_1) per example (discretized for `levels`, else a density)."""
    index = torch.zeros(x0.shape[0], dtype=torch.long)
    x0d = x0.double()
    x1 = chain.q_sample(x0d, index, noise.double())
    mean = _model_mean(denoiser, chain, x1, index, x0.dtype, clip)
    std = float(variances[0]) ** 0.5
    if levels is not None:
        return -sum_except_batch(discretized_gaussian_log_likelihood(x0d, mean, std, levels))
    return sum_except_batch(0.5 * math.log(2 * math.pi * std**2) + (x0d - mean) ** 2 / (2 * std**2))


@torch.no_grad()
def variational_bound(denoiser, chain: DDPMChain, x0: torch.Tensor, levels: int | None = None,
                      model_variance: str = "posterior", noise=None, clip: float | None = None,
                      progress: Callable[[int, int], None] | None = None) -> Bound:
    """Every term of DDPM's bound for a batch x0; N network evaluations. `levels` selects the
    discretized decoder (x0 must then lie on that grid); `noise` is a generator or
    `PerSampleNoise` for the draws of x_t."""
    if levels is not None:
        check_quantized(x0, levels)
    variances = model_variances(chain, model_variance)
    terms = []
    for i in range(1, chain.N):
        index = torch.full((x0.shape[0],), i)
        terms.append(denoising_term(denoiser, chain, x0, index, normal(x0.shape, noise), variances,
                                    clip))
        if progress:
            progress(i, chain.N)
    recon = reconstruction_term(denoiser, chain, x0, normal(x0.shape, noise), variances, levels,
                                clip)
    stacked = torch.stack(terms)
    return Bound(prior_term(chain, x0), stacked.sum(0), recon, stacked.mean(1), chain.N)
