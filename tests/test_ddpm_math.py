"""The DDPM math checked against independent derivations: schedules, q(x_t | x_0), the
posterior, the VP marginals, the denoiser wrapper, the losses, and samplers driven by an exact
Gaussian-mixture denoiser."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from diffusion_core.data.toys import toy_log_density
from diffusion_core.evaluation.metrics import sliced_wasserstein
from diffusion_core.frameworks import DiffusionModel
from diffusion_core.models.analytic import (
    GaussianMixtureDenoiser,
    gmm8_mixture,
    two_mode_mixture,
)
from diffusion_core.models.denoiser import Denoiser
from diffusion_core.models.networks import MLP
from diffusion_core.noise import PerSampleNoise
from diffusion_core.objectives.denoising import denoising_loss
from diffusion_core.processes.ddpm_chain import DDPMChain
from diffusion_core.processes.sde import VPSDE
from diffusion_core.samplers import ddpm as samplers
from diffusion_core.samplers import edm
from diffusion_core.training.ema import EMA

F64 = torch.float64


def _chain(schedule: str = "linear") -> DDPMChain:
    return DDPMChain.from_process(VPSDE(schedule=schedule))


# --------------------------------------------------------------------------- the analytic helper


@pytest.mark.parametrize("make", [two_mode_mixture, gmm8_mixture])
def test_analytic_mixture_denoiser_is_exact(make):
    """score = autograd of log p_t; E[x0 | x] by Tweedie; log p_0 matches the toy's density."""
    m = make()
    g = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(64, 2, generator=g, dtype=F64)
    alpha = torch.rand(64, generator=g, dtype=F64) * 0.9 + 0.05
    sigma = (1 - alpha**2).sqrt()
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(m.log_prob(xr, alpha, sigma).sum(), xr)
    score = m.score(x, alpha, sigma)
    torch.testing.assert_close(score, grad, rtol=1e-10, atol=1e-10)
    pred = m(x, alpha, sigma)
    tweedie = (x + sigma[:, None] ** 2 * score) / alpha[:, None]
    torch.testing.assert_close(pred.x0, tweedie, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(pred.eps, -sigma[:, None] * score, rtol=1e-10, atol=1e-10)
    assert m(x.float(), alpha, sigma).x0.dtype == torch.float32
    if make is gmm8_mixture:
        np.testing.assert_allclose(m.log_prob(x).numpy(), toy_log_density("gmm8", x.numpy()),
                                   rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- 1. schedules


def test_cosine_schedule():
    process = VPSDE(schedule="cosine", N=1000)
    betas = process.discrete_betas
    assert bool((betas > 0).all()) and bool((betas <= 0.999).all())
    assert float(betas.max()) == pytest.approx(0.999)  # the clip is reached at the very end
    chain = DDPMChain.from_process(process)
    assert bool((chain.alphas_cumprod[1:] < chain.alphas_cumprod[:-1]).all())
    i = torch.arange(process.N - 10)
    alpha, sigma = process.alpha_sigma((i + 1).to(F64) / process.N)
    torch.testing.assert_close(alpha**2, chain.alphas_cumprod[i], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(sigma**2, 1 - chain.alphas_cumprod[i], rtol=1e-9, atol=1e-12)
    # Nichol & Dhariwal's alpha_bar(t) = f(t) / f(0), f(t) = cos^2((t/T + s)/(1 + s) pi/2)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    f = lambda u: torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    torch.testing.assert_close(process.alpha_sigma(t)[0] ** 2, f(t) / f(torch.zeros(1, dtype=F64)))


def test_time_index_round_trip():
    process = VPSDE()
    i = torch.arange(process.N)
    assert torch.equal(process.timestep_index((i + 1).to(F64) / process.N), i)


# --------------------------------------------------------------------------- 2. q(x_t | x_0)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_q_mean_std_matches_monte_carlo_forward_chain(schedule):
    chain = _chain(schedule)
    g = torch.Generator().manual_seed(1)
    n, x0 = 20000, torch.tensor([[1.5, -2.0]], dtype=F64)
    checks = {0: None, 9: None, 99: None, 399: None, 699: None, chain.N - 1: None}
    x = x0.expand(n, 2).clone()
    for i in range(chain.N):
        beta = chain.betas[i]
        x = (1 - beta).sqrt() * x + beta.sqrt() * torch.randn(n, 2, generator=g, dtype=F64)
        if i in checks:
            checks[i] = (x.mean(0), x.std(0))
    for i, (mc_mean, mc_std) in checks.items():
        mean, std = chain.q_mean_std(x0, torch.tensor([i]))
        mean, std = mean[0], std[0].expand(2)
        se = std / math.sqrt(n)
        assert bool(((mc_mean - mean).abs() < 4 * se).all()), (i, mc_mean, mean)
        assert bool(((mc_std - std).abs() < 4 * std / math.sqrt(2 * n)).all()), (i, mc_std, std)


# --------------------------------------------------------------------------- 3. VP marginals


@pytest.mark.parametrize("schedule,t_max", [("linear", 1.0), ("cosine", 0.99)])
def test_vp_marginal_prob_solves_the_moment_odes(schedule, t_max):
    """For dx = f(t) x dt + g(t) dw: dm/dt = f m, dv/dt = 2 f v + g^2, m(0) = x0, v(0) = 0."""
    process = VPSDE(schedule=schedule)
    one = torch.ones(1, 1, dtype=F64)

    def rhs(t, y):
        drift, diffusion = process.sde(one, torch.tensor(t, dtype=F64))
        f = float(drift[0, 0])
        return [f * y[0], 2 * f * y[1] + float(diffusion[0]) ** 2]

    times = np.linspace(0.0, t_max, 12)[1:]
    sol = solve_ivp(rhs, (0.0, t_max), [1.0, 0.0], method="DOP853", t_eval=times,
                    rtol=1e-11, atol=1e-13)
    assert sol.success
    x0 = torch.tensor([[0.7, -1.3]], dtype=F64)
    for k, t in enumerate(times):
        mean, std = process.marginal_prob(x0, torch.tensor(t, dtype=F64))
        np.testing.assert_allclose(mean[0].numpy(), sol.y[0, k] * x0[0].numpy(),
                                   rtol=1e-7, atol=1e-10)
        np.testing.assert_allclose(float(std[0]) ** 2, sol.y[1, k], rtol=1e-7, atol=1e-10)


# --------------------------------------------------------------------------- 4. the posterior


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_posterior_matches_bayes_rule(schedule):
    """q(x_{t-1} | x_t, x_0) ∝ N(x_{t-1}; a x0, v) N(x_t; c x_{t-1}, beta), a product of
    Gaussians in x_{t-1}: precision 1/v + c^2/beta, mean var (a x0 / v + c x_t / beta)."""
    chain = _chain(schedule)
    betas = chain.betas.numpy()
    abar = np.cumprod(1 - betas)  # independent of the chain's own tables
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(16, 1, generator=g, dtype=F64)
    xt = torch.randn(16, 1, generator=g, dtype=F64)
    for i in [0, 1, 2, 10, 250, 500, 998, 999]:
        index = torch.full((16,), i)
        mean, var = chain.posterior_mean_variance(x0, xt, index)
        if i == 0:  # the chain ends at x_0: a point mass
            torch.testing.assert_close(mean, x0, rtol=0, atol=1e-10)
            assert float(var.abs().max()) < 1e-12
            continue
        a, v = math.sqrt(abar[i - 1]), 1 - abar[i - 1]
        c, b = math.sqrt(1 - betas[i]), betas[i]
        post_var = 1 / (1 / v + c**2 / b)
        post_mean = post_var * (a * x0 / v + c * xt / b)
        torch.testing.assert_close(mean, post_mean, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(var.flatten().numpy(), post_var, rtol=1e-9)

        # mu_theta from the true eps equals the posterior mean
        eps = torch.randn(16, 1, generator=g, dtype=F64)
        state = math.sqrt(abar[i]) * x0 + math.sqrt(1 - abar[i]) * eps
        torch.testing.assert_close(chain.mean_from_eps(state, eps, index),
                                   chain.posterior_mean_variance(x0, state, index)[0],
                                   rtol=1e-9, atol=1e-9)
    # i = 0 in eps-form too: mu = x0 exactly
    eps = torch.randn(16, 1, generator=g, dtype=F64)
    state = math.sqrt(abar[0]) * x0 + math.sqrt(1 - abar[0]) * eps
    torch.testing.assert_close(chain.mean_from_eps(state, eps, torch.zeros(16, dtype=torch.long)),
                               x0, rtol=0, atol=1e-9)


# --------------------------------------------------------------------------- 5. denoiser, loss


def _noise_levels(n: int, g: torch.Generator):
    """A mix of VP states (alpha^2 + sigma^2 = 1) and VE states (alpha = 1), s in [0.01, 80]."""
    s = torch.exp(torch.empty(n).uniform_(math.log(0.01), math.log(80), generator=g))
    alpha = torch.where(torch.arange(n) % 2 == 0, (1 + s**2).rsqrt(), torch.ones(n))
    return alpha, s * alpha


@pytest.mark.parametrize("parameterization", ["eps", "x0", "edm"])
def test_denoiser_prediction_is_consistent(parameterization):
    torch.manual_seed(3)
    g = torch.Generator().manual_seed(3)
    denoiser = Denoiser(MLP(dim=3, width=32, depth=2, emb_dim=16), parameterization)
    x = torch.randn(32, 3, generator=g) * 5
    alpha, sigma = _noise_levels(32, g)
    pred = denoiser(x, alpha, sigma)
    s = (sigma / alpha)[:, None]
    torch.testing.assert_close(x / alpha[:, None], pred.x0 + s * pred.eps, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(denoiser.score(x, alpha, sigma), -pred.eps / sigma[:, None])


class _OracleNet(torch.nn.Module):
    """Outputs what the parameterization's network should output for a known (x0, noise),
    computed by hand, and checks it was given EDM's c_in x_tilde and c_noise = log(s)/4."""

    def __init__(self, parameterization, x0, noise, s, sigma_data):
        super().__init__()
        self.parameterization, self.x0, self.noise, self.s = parameterization, x0, noise, s
        self.sigma_data = sigma_data

    def forward(self, x_in, c_noise):
        s = self.s[:, None]
        x_tilde = self.x0 + s * self.noise
        torch.testing.assert_close(x_in, x_tilde / (s**2 + self.sigma_data**2).sqrt())
        torch.testing.assert_close(c_noise, torch.log(self.s) / 4)
        if self.parameterization == "eps":
            return self.noise
        if self.parameterization == "x0":
            return self.x0
        sd2 = self.sigma_data**2
        c_skip, c_out = sd2 / (s**2 + sd2), s * self.sigma_data / (s**2 + sd2).sqrt()
        return (self.x0 - c_skip * x_tilde) / c_out


@pytest.mark.parametrize("parameterization", ["eps", "x0", "edm"])
def test_loss_is_zero_at_the_true_target(parameterization):
    g = torch.Generator().manual_seed(4)
    x0, noise = torch.randn(32, 3, generator=g), torch.randn(32, 3, generator=g)
    alpha, sigma = _noise_levels(32, g)
    net = _OracleNet(parameterization, x0, noise, sigma / alpha, 0.5)
    denoiser = Denoiser(net, parameterization, sigma_data=0.5)
    x = alpha[:, None] * x0 + sigma[:, None] * noise
    pred = denoiser(x, alpha, sigma)
    torch.testing.assert_close(pred.x0, x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pred.eps, noise, rtol=1e-4, atol=1e-3)
    loss = denoising_loss(denoiser, x0, alpha, sigma, noise)
    assert loss.shape == (32,)
    assert float(loss.max()) < 1e-8
    assert float(denoising_loss(denoiser, x0, alpha, sigma, noise, weighting="x0").max()) < 1e-6
    # and a wrong output costs exactly its squared error under the unit "network" weight
    delta = 0.1 * torch.randn(32, 3, generator=g)
    shifted = Denoiser(_Shifted(net, delta), parameterization, sigma_data=0.5)
    torch.testing.assert_close(denoising_loss(shifted, x0, alpha, sigma, noise),
                               (delta**2).mean(1), rtol=1e-4, atol=1e-6)


class _Shifted(torch.nn.Module):
    def __init__(self, net, delta):
        super().__init__()
        self.net, self.delta = net, delta

    def forward(self, x_in, c_noise):
        return self.net(x_in, c_noise) + self.delta


# --------------------------------------------------------------------------- 6. samplers


def _sample(name: str, m, chain: DDPMChain, n: int, g: torch.Generator) -> torch.Tensor:
    x_T = torch.randn(n, 2, generator=g)
    if name == "ancestral":
        x, nfe = samplers.ddpm_ancestral(m, chain, x_T, g)
        assert nfe == chain.N
    elif name == "ddim":
        x, nfe = samplers.ddim(m, chain, x_T, steps=50)
        assert nfe == 50
    else:
        s_min, s_max = (float(chain.noise_level(i)) for i in (0, chain.N - 1))
        sigmas = edm.karras_sigmas(s_min, s_max, 18)
        x, nfe = edm.heun_pf_ode(m, x_T * math.sqrt(1 + s_max**2), sigmas)
        assert nfe == 2 * 18 - 1
    return x


@pytest.mark.parametrize("sampler", ["ancestral", "ddim", "heun"])
@pytest.mark.parametrize("make", [two_mode_mixture, gmm8_mixture])
def test_samplers_reproduce_gaussian_mixture(sampler, make):
    m, chain, n = make(), _chain(), 4000
    g = torch.Generator().manual_seed(5)
    real_a, _ = m.sample(n, g)
    real_b, _ = m.sample(n, g)
    x = _sample(sampler, m, chain, n, g)
    assert x.shape == (n, 2) and x.dtype == torch.float32 and bool(torch.isfinite(x).all())
    fractions = m.component_fractions(x)
    assert float((fractions - m.weights).abs().max()) < 0.03, fractions
    floor = sliced_wasserstein(real_a.numpy(), real_b.numpy())
    swd = sliced_wasserstein(x.numpy(), real_a.numpy())
    assert swd < 2 * floor + 0.02, (swd, floor)
    # the per-component spread is right too (not collapsed onto the means); DDIM's 50 Euler
    # steps and DDPM's beta_tilde variance shrink narrow modes by a few percent, Heun widens them
    k = m.nearest_component(x)
    for c in range(len(m.weights)):
        spread = float((x[k == c].double() - m.means[c]).std(0).mean())
        assert abs(spread - m.std) < 0.15 * m.std, (c, spread)


def _exact_model(m) -> DiffusionModel:
    """A ddpm model (linear VP chain, N = 1000) whose denoiser is the exact one of mixture m."""
    config = {"framework": "ddpm", "process": {"kind": "vp"}, "parameterization": "eps",
              "sigma_data": 0.5, "loss": {"kind": "ddpm"}}
    model = DiffusionModel(config, network=torch.nn.Identity())
    model.denoiser = m
    return model


@pytest.mark.parametrize("settings,nfe", [({"name": "ancestral"}, 1000),
                                          ({"name": "ddim", "steps": 50, "spacing": "uniform"}, 50)])
def test_diffusion_model_sample_is_the_checked_sampler(settings, nfe):
    """DiffusionModel.sample hands prior, chain and grid to the sampler functions exactly as the
    sampler test above (Heun's adapter builds a grid of its own: checked against the ODE below)."""
    m = gmm8_mixture()
    model = _exact_model(m)
    x, got_nfe = model.sample(300, (2,), settings, torch.Generator().manual_seed(10))
    expected = _sample(settings["name"], m, model.chain, 300, torch.Generator().manual_seed(10))
    assert got_nfe == nfe
    torch.testing.assert_close(x, expected, rtol=0, atol=0)


def _pf_ode_by_rk45(m, x: torch.Tensor, s_max: float) -> torch.Tensor:
    """The probability-flow ODE in the noise level s of x / alpha, dx/ds = -s grad log p(x; s)
    (Karras et al., 2022, eq. 4 with s(t) = 1; Song et al., 2021, eq. 13 rescaled), solved from
    s_max to 0 by scipy's RK45 at tight tolerance with the mixture's exact score, in float64."""
    n, d = x.shape

    def rhs(s, y):
        state = torch.from_numpy(y.reshape(n, d))
        score = m.score(state, torch.ones(n, dtype=F64), torch.full((n,), s, dtype=F64))
        return (-s * score).numpy().ravel()

    sol = solve_ivp(rhs, (s_max, 0.0), x.numpy().ravel(), method="RK45", rtol=1e-9, atol=1e-9)
    assert sol.success, sol.message
    return torch.from_numpy(sol.y[:, -1].reshape(n, d))


def test_heun_sampler_solves_the_probability_flow_ode():
    """DiffusionModel.sample with `heun` against the PF-ODE solved independently (RK45, exact
    score) from the same x_T: close, and closer by Heun's second order as the steps double
    (RMS ratio ~4-5 measured; a first-order solver gives ~2, a wrong start or grid no
    convergence at all)."""
    m, n = gmm8_mixture(), 200
    model = _exact_model(m)
    x_T = model.process.prior_sampling((n, 2), torch.Generator().manual_seed(10)).double()
    abar_T = model.chain.alphas_cumprod[-1]  # x_T = sqrt(abar_T) x_0 + sqrt(1 - abar_T) z
    reference = _pf_ode_by_rk45(m, x_T / abar_T.sqrt(), float(((1 - abar_T) / abar_T).sqrt()))
    errors = []
    for steps in (35, 71, 143):
        x, nfe = model.sample(n, (2,), {"name": "heun", "steps": steps}, torch.Generator().manual_seed(10))
        assert nfe == steps and x.shape == (n, 2)
        errors.append(float((x.double() - reference).pow(2).mean().sqrt()))
    assert errors[0] < 0.05 and errors[2] < 2e-3, errors
    assert errors[0] / errors[1] > 3 and errors[1] / errors[2] > 3, errors


@pytest.mark.parametrize("spacing", ["uniform", "quadratic", "karras"])
def test_ddim_spacings_give_distinct_descending_indices(spacing):
    chain = DDPMChain.from_process(VPSDE())
    levels = chain.noise_level(torch.arange(chain.N))
    indices = samplers.ddim_timesteps(chain.N, 50, spacing, levels)
    assert len(indices) == 50 and indices[0] == chain.N - 1 and indices[-1] == 0
    assert all(a > b for a, b in zip(indices, indices[1:]))


def test_per_sample_noise_does_not_depend_on_the_batch():
    """Sample i drawn in a batch of 6 equals sample i drawn alone (PerSampleNoise)."""
    model = _exact_model(gmm8_mixture())
    settings = {"name": "ddim", "steps": 10, "eta": 1.0}
    batch, _ = model.sample(6, (2,), settings, PerSampleNoise(range(100, 106)))
    alone, _ = model.sample(2, (2,), settings, PerSampleNoise([103, 105]))
    torch.testing.assert_close(batch[[3, 5]], alone, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- 7. DDIM = Euler PF-ODE


def test_ddim_eta0_is_euler_on_the_probability_flow_ode():
    """In x_tilde = x / alpha with s = sigma / alpha, DDIM's eta = 0 update is exactly
    x_tilde' = x_tilde + (s' - s) (x_tilde - D(x_tilde; s)) / s (Karras et al., 2022, sec. 4)."""
    m, chain = gmm8_mixture(), _chain()
    g = torch.Generator().manual_seed(6)
    x_T = torch.randn(256, 2, generator=g, dtype=F64)
    indices = samplers.ddim_timesteps(chain.N, 25)
    assert indices[0] == chain.N - 1 and indices[-1] == 0 and len(indices) == 25

    s_grid = [float(chain.noise_level(i)) for i in indices] + [0.0]
    x_tilde = x_T / chain.alphas_cumprod[indices[0]].sqrt()
    x = x_T
    for k, index in enumerate(indices):
        s, s_next = s_grid[k], s_grid[k + 1]
        x_tilde = x_tilde + (s_next - s) * (x_tilde - m(x_tilde, 1.0, s).x0) / s
        prev = indices[k + 1] if k + 1 < len(indices) else -1
        x = samplers.ddim_step(m, chain, x, index, prev, 0.0, 0.0)
        alpha_prev = chain.alphas_cumprod[prev].sqrt() if prev >= 0 else 1.0
        torch.testing.assert_close(x / alpha_prev, x_tilde, rtol=1e-9, atol=1e-9)

    full, nfe = samplers.ddim(m, chain, x_T, steps=25, eta=0.0)
    assert nfe == 25
    torch.testing.assert_close(full, x_tilde, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------- 8. one ancestral step


@pytest.mark.parametrize("index", [0, 1, 37, 500, 999])
def test_ancestral_step_matches_eps_form(index):
    """x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(1 - beta_t) + sqrt(beta_tilde_t) z
    (Ho et al., 2020, algorithm 2 with sigma_t^2 = beta_tilde_t), by hand, in float64."""
    m, chain = gmm8_mixture(), _chain()
    g = torch.Generator().manual_seed(7)
    x = torch.randn(128, 2, generator=g, dtype=F64)
    noise = torch.randn(128, 2, generator=g, dtype=F64)
    beta = float(chain.betas[index])
    abar = float(np.prod(1 - chain.betas[: index + 1].numpy()))
    abar_prev = abar / (1 - beta)
    eps = m(x, math.sqrt(abar), math.sqrt(1 - abar)).eps
    mean = (x - beta / math.sqrt(1 - abar) * eps) / math.sqrt(1 - beta)
    var = beta * (1 - abar_prev) / (1 - abar)
    expected = mean + math.sqrt(var) * noise
    # (the step hands the denoiser float32 alpha and sigma: agreement to ~1e-8, not 1e-15)
    got = samplers.ddpm_ancestral_step(m, chain, x, index, noise)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(chain.mean_from_eps(x, eps, torch.full((128,), index)),
                               mean, rtol=1e-10, atol=1e-10)
    # DDIM with eta = 1 on consecutive indices is the same ancestral step
    if index > 0:
        ddim = samplers.ddim_step(m, chain, x, index, index - 1, 1.0, noise)
        torch.testing.assert_close(ddim, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("index", [0, 1, 10, 500])
def test_chain_closed_forms_keep_float32_precision(index):
    """On float32 tensors the closed forms agree with their float64 values to float32 precision.
    Near t = 1, 1 - alpha_bar is ~1e-4: formed after casting alpha_bar to float32 it loses
    ~3 of float32's 7 digits (the posterior mean at i = 0 is then x0 scaled by 1 +- 6e-4)."""
    chain = _chain()
    g = torch.Generator().manual_seed(9)
    x0, xt = torch.randn(64, 2, generator=g), torch.randn(64, 2, generator=g)
    idx = torch.full((64,), index)
    mean32, var32 = chain.posterior_mean_variance(x0, xt, idx)
    mean64, var64 = chain.posterior_mean_variance(x0.double(), xt.double(), idx)
    torch.testing.assert_close(mean32.double(), mean64, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(var32.double(), var64, rtol=1e-6, atol=1e-12)
    _, std32 = chain.q_mean_std(x0, idx)
    _, std64 = chain.q_mean_std(x0.double(), idx)
    torch.testing.assert_close(std32.double(), std64, rtol=1e-6, atol=0)
    torch.testing.assert_close(chain.mean_from_eps(xt, x0, idx).double(),
                               chain.mean_from_eps(xt.double(), x0.double(), idx),
                               rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- 9. EMA


def test_ema_constant_weights_and_power_profile():
    torch.manual_seed(8)
    gamma = 3.0
    model = torch.nn.Linear(3, 2).double()
    ema = EMA(model, gamma=gamma)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # so the EMA's initial copy differs from the weights it averages
    target = [p.detach().clone() for p in model.parameters()]
    for k in range(1, 6):
        ema.update(model)
        assert ema.decay() == pytest.approx((1 - 1 / k) ** (gamma + 1), rel=1e-12)
        for avg, w in zip(ema.model.parameters(), target):
            torch.testing.assert_close(avg, w, rtol=0, atol=1e-12)

    # with changing weights theta_tau, the power EMA is the average with weights
    # tau^(gamma+1) - (tau-1)^(gamma+1), normalized by t^(gamma+1)
    ema = EMA(model, gamma=gamma)
    thetas = []
    for t in range(1, 21):
        with torch.no_grad():
            model.weight.copy_(torch.randn(2, 3, dtype=F64))
        thetas.append(model.weight.detach().clone())
        ema.update(model)
    taus = torch.arange(1, 21, dtype=F64)
    w = (taus ** (gamma + 1) - (taus - 1) ** (gamma + 1)) / 20 ** (gamma + 1)
    expected = (w[:, None, None] * torch.stack(thetas)).sum(0)
    torch.testing.assert_close(ema.model.weight, expected, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- 10. bad input


@pytest.mark.parametrize("call,name", [
    (lambda: VPSDE(beta_min=20, beta_max=0.1), "beta_min"),
    (lambda: VPSDE(beta_min=1.0, beta_max=1.0), "beta_max"),
    (lambda: VPSDE(schedule="quadratic"), "schedule"),
    (lambda: samplers.ddim_timesteps(1000, 0), "steps"),
    (lambda: samplers.ddim_timesteps(1000, 1001), "steps"),
    (lambda: edm.karras_sigmas(1.0, 0.5, 10), "sigma_min"),
    (lambda: edm.karras_sigmas(1.0, 1.0, 10), "sigma_max"),
    (lambda: Denoiser(torch.nn.Identity(), "v"), "parameterization"),
    (lambda: DDPMChain(torch.tensor([0.1, 1.5])), "betas"),
    (lambda: EMA(torch.nn.Linear(1, 1), gamma=0), "gamma"),
    (lambda: GaussianMixtureDenoiser([0.5, 0.6], [[0.0], [1.0]], 1.0), "weights"),
])
def test_bad_input_names_the_parameter(call, name):
    with pytest.raises(ValueError, match=name):
        call()
