"""DDPM's variational bound against closed forms: on Gaussian data the optimal denoiser is known
exactly, so every expected term of the bound is a closed-form KL; the bound must lie above the
exact negative log-likelihood. The discretized decoder against scipy's normal CDF."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from diffusion_core.likelihood.vlb import (
    discretized_gaussian_log_likelihood,
    gaussian_kl,
    model_variances,
    variational_bound,
)
from diffusion_core.models.analytic import GaussianMixtureDenoiser
from diffusion_core.processes.ddpm_chain import DDPMChain
from diffusion_core.processes.sde import VPSDE

F64 = torch.float64
MU, S = torch.tensor([0.5, -0.3, 1.0], dtype=F64), 0.7


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(50, generator=g, dtype=F64), torch.randn(50, generator=g, dtype=F64)
    v1, v2 = torch.rand(50, generator=g, dtype=F64) + 0.01, torch.rand(50, generator=g, dtype=F64) + 0.01
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(m1, v1.sqrt()),
                                                 torch.distributions.Normal(m2, v2.sqrt()))
    torch.testing.assert_close(gaussian_kl(m1, v1, m2, v2), expected)


@pytest.mark.parametrize("levels", [17, 256])
def test_discretized_decoder_matches_the_normal_cdf_and_sums_to_one(levels):
    grid = torch.linspace(-1, 1, levels, dtype=F64)
    mean, std = torch.full_like(grid, 0.31), 0.2
    logp = discretized_gaussian_log_likelihood(grid, mean, std, levels)
    edges = np.concatenate([[-np.inf], (grid[:-1].numpy() + grid[1:].numpy()) / 2, [np.inf]])
    expected = np.diff(norm.cdf(edges, loc=0.31, scale=std))
    np.testing.assert_allclose(logp.exp().numpy(), expected, rtol=1e-9, atol=1e-15)
    assert float(logp.exp().sum()) == pytest.approx(1.0, abs=1e-12)
    # far tails stay finite where a difference of CDFs would round to log(0)
    far = discretized_gaussian_log_likelihood(grid[levels // 2:][:1], torch.tensor([-0.9], dtype=F64),
                                              0.01, levels)
    assert bool(torch.isfinite(far).all()) and float(far) < -1000


def _gaussian_bound(n: int = 4000):
    chain = DDPMChain.from_process(VPSDE(0.1, 20, 1000))
    denoiser = GaussianMixtureDenoiser([1.0], MU[None], S)
    x0 = MU + S * torch.randn(n, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    bound = variational_bound(denoiser, chain, x0, noise=torch.Generator().manual_seed(2))
    return chain, x0, bound


@pytest.fixture(scope="module")
def gaussian_bound():
    return _gaussian_bound()


def _posterior_var_of_x0(chain: DDPMChain, i) -> torch.Tensor:
    """Var(x0 | x_t) = s^2 sigma^2 / (sigma^2 + alpha^2 s^2) for x0 ~ N(mu, s^2)."""
    abar = chain.alphas_cumprod[i]
    return S**2 * (1 - abar) / (1 - abar + abar * S**2)


def test_denoising_terms_match_the_closed_form_kl(gaussian_bound):
    """E[L_{t-1}] = D [1/2 (log(v / bt) + bt / v - 1) + c^2 Var(x0 | x_t) / (2 v)], with bt the
    posterior variance, v the model's, c the posterior mean's coefficient of x0: the optimal
    eps-predictor (exact posterior mean) leaves only the x0 uncertainty."""
    chain, _, bound = gaussian_bound
    i = torch.arange(1, chain.N)
    v, bt = model_variances(chain)[i], chain.posterior_variance[i]
    c = chain.posterior_coef_x0[i]
    expected = 3 * (0.5 * (torch.log(v / bt) + bt / v - 1) + c**2 * _posterior_var_of_x0(chain, i) / (2 * v))
    relative = (bound.terms - expected).abs() / expected
    assert float(relative.max()) < 0.1, float(relative.max())  # one term: ~4000 x 3 draws
    assert float(bound.terms.sum() / expected.sum()) == pytest.approx(1.0, abs=5e-3)


def test_prior_and_reconstruction_terms_match_closed_forms(gaussian_bound):
    chain, x0, bound = gaussian_bound
    abar = chain.alphas_cumprod[-1]
    prior = 0.5 * (-torch.log(1 - abar) + (1 - abar) + abar * (MU**2 + S**2) - 1).sum()
    assert float(bound.prior.mean()) == pytest.approx(float(prior), rel=0.02)
    v0 = model_variances(chain)[0]
    recon = 3 * (0.5 * torch.log(2 * math.pi * v0) + _posterior_var_of_x0(chain, 0) / (2 * v0))
    assert float(bound.reconstruction.mean()) == pytest.approx(float(recon), abs=0.05)


@pytest.mark.parametrize("model_variance", ["posterior", "beta"])
def test_bound_lies_above_the_exact_nll(model_variance):
    """The data's own NLL -log N(x0; mu, s^2 I) averages to its entropy; the bound lies above it
    by more than its Monte Carlo error (fixed reverse variances make it loose: ~1.7 nats over 3
    dims with beta_tilde, ~0.3 with beta, which suits Gaussian data; Ho et al., section 3.2)."""
    chain = DDPMChain.from_process(VPSDE(0.1, 20, 1000))
    denoiser = GaussianMixtureDenoiser([1.0], MU[None], S)
    x0 = MU + S * torch.randn(4000, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    bound = variational_bound(denoiser, chain, x0, model_variance=model_variance,
                              noise=torch.Generator().manual_seed(2))
    nll = -torch.distributions.Normal(MU, S).log_prob(x0).sum(1)
    entropy = 1.5 * math.log(2 * math.pi * math.e * S**2)
    assert float(nll.mean()) == pytest.approx(entropy, abs=0.05)
    gap = float(bound.total.mean() - nll.mean())
    stderr = float((bound.total - nll).std() / math.sqrt(len(x0)))
    assert 3 * stderr < gap < (2.0 if model_variance == "posterior" else 0.5), (gap, stderr)
    assert bound.nfe == 1000 and bound.terms.shape == (999,)


def test_discretized_bound_in_bits_needs_data_on_the_grid():
    chain = DDPMChain.from_process(VPSDE(0.1, 20, 40))
    denoiser = GaussianMixtureDenoiser([1.0], torch.zeros(1, 4), 0.5)
    x0 = torch.randint(0, 17, (8, 4)).double() / 8 - 1
    bound = variational_bound(denoiser, chain, x0, levels=17)
    assert bool((bound.reconstruction >= 0).all()) and bool(torch.isfinite(bound.total).all())
    with pytest.raises(ValueError, match="grid of 17 levels"):
        variational_bound(denoiser, chain, x0.clamp(max=0.9) + 0.01, levels=17)
    with pytest.raises(ValueError, match="model_variance"):
        variational_bound(denoiser, chain, x0, model_variance="learned")
