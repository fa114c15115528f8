"""Score SDEs checked against independent derivations: VP / VE / sub-VP marginals against their
moment ODEs, the DDPM and NCSN ladders, PC and probability-flow samplers and the PF-ODE
likelihood driven by the exact score of a Gaussian mixture, and bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from diffusion_core.evaluation.metrics import sliced_wasserstein
from diffusion_core.likelihood.pf_ode import bits_per_dim, dequantize, log_likelihood
from diffusion_core.models.analytic import GaussianMixtureDenoiser, gmm8_mixture
from diffusion_core.processes.ddpm_chain import DDPMChain
from diffusion_core.processes.sde import VESDE, VPSDE, SubVPSDE
from diffusion_core.samplers import sde as S

F64 = torch.float64
PROCESSES = {"vp": VPSDE, "ve": VESDE, "subvp": SubVPSDE}
T_EPS = {"vp": 1e-3, "ve": 1e-5, "subvp": 1e-3}  # VP's 1/N puts each grid point on a DDPM rung


def exact_score(mixture: GaussianMixtureDenoiser, sde):
    """The analytic score of the mixture's noisy marginal at time t: x_t = alpha x0 + sigma z."""
    def score_fn(x, t):
        alpha, sigma = sde.alpha_sigma(t)
        return mixture.score(x, alpha, sigma)
    return score_fn


# --------------------------------------------------------------------------- processes


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_marginal_prob_solves_the_moment_odes(name):
    """For dx = f(t) x dt + g(t) dw: dm/dt = f m, dv/dt = 2 f v + g^2, from m(0) = 1 and
    v(0) = sigma(0)^2 (0 for VP and sub-VP; sigma_min^2 for VE, Song et al.'s convention)."""
    sde = PROCESSES[name]()
    one = torch.ones(1, 1, dtype=F64)

    def rhs(t, y):
        drift, diffusion = sde.sde(one, torch.tensor(t, dtype=F64))
        f = float(drift[0, 0])
        return [f * y[0], 2 * f * y[1] + float(diffusion[0]) ** 2]

    v0 = float(sde.alpha_sigma(torch.zeros(1, dtype=F64))[1][0]) ** 2
    times = np.linspace(0.0, 1.0, 12)[1:]
    sol = solve_ivp(rhs, (0.0, 1.0), [1.0, v0], method="DOP853", t_eval=times,
                    rtol=1e-11, atol=1e-13)
    assert sol.success
    x0 = torch.full((len(times), 3), 1.7, dtype=F64)
    mean, std = sde.marginal_prob(x0, torch.as_tensor(times))
    np.testing.assert_allclose(mean[:, 0].numpy() / 1.7, sol.y[0], rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(std.numpy() ** 2, sol.y[1], rtol=1e-8, atol=1e-12)


def test_ve_discretization_is_ncsn_geometric_ladder():
    sde = VESDE(sigma_min=0.01, sigma_max=50, N=1000)
    expected = np.exp(np.linspace(np.log(0.01), np.log(50), 1000))
    np.testing.assert_allclose(sde.discrete_sigmas.numpy(), expected, rtol=1e-14, atol=0)
    i = torch.arange(1000)
    t = i.to(F64) / 999
    x = torch.randn(1000, 2, dtype=F64)
    f, g = sde.discretize(x, t)
    assert bool((f == 0).all())
    previous = np.concatenate([[0.0], expected[:-1]])
    np.testing.assert_allclose(g.numpy(), np.sqrt(expected**2 - previous**2), rtol=1e-12)
    assert float(g[0]) == pytest.approx(0.01) and float((g**2).sum()) == pytest.approx(50**2)
    # the ladder sits on the continuous sigma(t) at t_i = i / (N - 1)
    np.testing.assert_allclose(sde.alpha_sigma(t)[1].numpy(), expected, rtol=1e-12)


def test_vp_discretization_is_ddpm_betas():
    sde = VPSDE(beta_min=0.1, beta_max=20, N=1000)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=F64)
    torch.testing.assert_close(sde.discrete_betas, betas, rtol=0, atol=1e-12)
    x = torch.randn(1000, 2, dtype=F64)
    f, g = sde.discretize(x, (torch.arange(1000, dtype=F64) + 1) / 1000)
    torch.testing.assert_close(g, betas.sqrt())
    torch.testing.assert_close(f, ((1 - betas).sqrt() - 1)[:, None] * x)


# --------------------------------------------------------------------------- single steps


def test_vp_ancestral_step_is_ddpm_mean_and_ve_steps_share_ncsn_mean():
    """With zero noise, VP ancestral = DDPM's mu_theta (eq. 11 of Ho et al.); VE ancestral and
    reverse diffusion both step x + (sigma_i^2 - sigma_{i-1}^2) s."""
    g = torch.Generator().manual_seed(0)
    x, s = torch.randn(5, 3, generator=g, dtype=F64), torch.randn(5, 3, generator=g, dtype=F64)
    score_fn, zero = (lambda x_, t_: s), torch.zeros_like(x)
    vp, index = VPSDE(), torch.tensor([0, 3, 400, 998, 999])
    t = (index + 1).to(F64) / vp.N
    _, mean = S.ancestral(score_fn, vp, x, t, t, zero)
    chain = DDPMChain.from_process(vp)
    eps = -chain.sqrt_one_minus_alphas_cumprod[index][:, None] * s
    torch.testing.assert_close(mean, chain.mean_from_eps(x, eps, index))
    ve = VESDE()
    t = index.to(F64) / (ve.N - 1)
    a, _ = S.ancestral(score_fn, ve, x, t, t, zero)
    r, _ = S.reverse_diffusion(score_fn, ve, x, t, t, zero)
    sig = ve.discrete_sigmas
    gap = sig[index] ** 2 - torch.where(index == 0, 0.0, sig[(index - 1).clamp(min=0)] ** 2)
    torch.testing.assert_close(a, x + gap[:, None] * s)
    torch.testing.assert_close(r, a)


def test_langevin_step_size_is_set_by_the_noise_level():
    """e = 2 a (snr sigma_t)^2 for every sample, whatever its batch (a = 1 on VE, 1 - beta_i on
    VP); on a point mass's noisy marginal, where the Fisher bound |s|^2 ~ d / sigma^2 is tight,
    each sample's ||e s|| / ||sqrt(2e) z|| is snr to within chi-square spread."""
    g = torch.Generator().manual_seed(1)
    for sde, t in ((VESDE(), 0.5), (VPSDE(), 0.3005)):
        sigma = float(sde.alpha_sigma(torch.tensor(t, dtype=F64))[1])
        x, z = sigma * torch.randn(64, 400, generator=g, dtype=F64), torch.randn(64, 400, generator=g, dtype=F64)

        def score_fn(x_, t_, sigma=sigma):  # the data is the point 0
            return -x_ / sigma**2

        times = torch.full((64,), t, dtype=F64)
        new, mean = S.langevin(score_fn, sde, x, times, 0.16, z)
        a = 1 - float(sde.discrete_betas[300]) if isinstance(sde, VPSDE) else 1.0
        step = 2 * a * (0.16 * sigma) ** 2
        torch.testing.assert_close(mean, x + step * score_fn(x, t))
        torch.testing.assert_close(new, mean + (2 * step) ** 0.5 * z)
        ratio = (mean - x).norm(dim=1) / (new - mean).norm(dim=1)
        assert float((ratio / 0.16 - 1).abs().max()) < 0.25 and abs(float(ratio.mean()) - 0.16) < 0.005
        alone, _ = S.langevin(score_fn, sde, x[3:4], times[3:4], 0.16, z[3:4])
        torch.testing.assert_close(alone, new[3:4], rtol=0, atol=0)


# --------------------------------------------------------------------------- samplers


def _sample(name: str, sampler: str, mixture, n: int, seed: int):
    sde = PROCESSES[name]()
    score_fn = exact_score(mixture, sde)
    x_T = sde.prior_sampling((n, 2), torch.Generator().manual_seed(seed))
    noise = torch.Generator().manual_seed(seed + 1)
    if sampler == "pc":
        grid = S.time_grid(sde.T, T_EPS[name], sde.N)
        x, nfe = S.pc_sampler(score_fn, sde, x_T, grid, "reverse_diffusion", "langevin",
                              snr=0.16, n_corrector_steps=1, generator=noise)
        assert nfe == 2 * sde.N
    elif sampler in ("ancestral", "euler_maruyama"):
        grid = S.time_grid(sde.T, T_EPS[name], sde.N)
        x, nfe = S.pc_sampler(score_fn, sde, x_T, grid, sampler, "none", generator=noise)
        assert nfe == sde.N
    elif sampler == "rk45":
        x, nfe = S.probability_flow_ode(score_fn, sde, x_T, "rk45", rtol=1e-5, atol=1e-5,
                                        t_eps=T_EPS[name])
        assert 20 < nfe < 400
    else:
        x, nfe = S.probability_flow_ode(score_fn, sde, x_T, "heun", steps=50, t_eps=T_EPS[name])
        assert nfe == 100
    return x


@pytest.mark.parametrize("name,sampler", [
    ("vp", "pc"), ("ve", "pc"), ("vp", "rk45"), ("ve", "rk45"), ("vp", "heun"), ("ve", "heun"),
    ("vp", "ancestral"), ("ve", "ancestral"), ("subvp", "euler_maruyama"), ("subvp", "rk45")])
def test_samplers_reproduce_gaussian_mixture(name, sampler):
    """Component weights within 0.04, SWD to a data sample inside the spread of the noise floor
    (SWD between two data samples of the same size: its mean + 3 std over 16 draws)."""
    m, n = gmm8_mixture(), 2000
    g = torch.Generator().manual_seed(5)
    real = m.sample(n, g)[0].numpy()
    floors = np.array([sliced_wasserstein(m.sample(n, g)[0].numpy(), real) for _ in range(16)])
    x = _sample(name, sampler, m, n, seed=7)
    assert x.shape == (n, 2) and x.dtype == torch.float32 and bool(torch.isfinite(x).all())
    fractions = m.component_fractions(x)
    assert float((fractions - m.weights).abs().max()) < 0.04, fractions
    swd = sliced_wasserstein(x.numpy(), real)
    assert swd < floors.mean() + 3 * floors.std(), (swd, floors.mean(), floors.std())
    k = m.nearest_component(x)
    spread = float((x.double() - m.means[k]).std(0).mean())
    assert abs(spread - m.std) < 0.1 * m.std, spread


def test_pc_sampler_is_reproducible_and_reports_progress():
    sde, m = VESDE(N=50), gmm8_mixture()
    x_T = sde.prior_sampling((16, 2), torch.Generator().manual_seed(0))
    calls = []

    def run():
        return S.pc_sampler(exact_score(m, sde), sde, x_T, S.time_grid(1.0, 1e-5, 50),
                            n_corrector_steps=2, generator=torch.Generator().manual_seed(1),
                            progress=lambda i, n: calls.append((i, n)))

    (a, nfe), (b, _) = run(), run()
    assert nfe == 150 and torch.equal(a, b) and calls[-1] == (50, 50) and len(calls) == 100


# --------------------------------------------------------------------------- likelihood


def _mixture_points(n: int = 300):
    m = gmm8_mixture()
    x, _ = m.sample(n, torch.Generator().manual_seed(0))
    return m, x.double()


def test_pf_ode_likelihood_exact_divergence_matches_analytic_density():
    m, x = _mixture_points()
    sde = VPSDE()
    result = log_likelihood(exact_score(m, sde), sde, x, "exact", rtol=1e-5, atol=1e-5)
    error = (result.logp - m.log_prob(x)).abs().mean()
    assert float(error) < 0.02, float(error)
    assert result.nfe > 0 and result.latent.shape == x.shape and bool((result.stderr == 0).all())


@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
def test_pf_ode_likelihood_hutchinson_within_reported_standard_error(probe):
    m, x = _mixture_points()
    sde = VPSDE()
    result = log_likelihood(exact_score(m, sde), sde, x, "hutchinson", probe, n_probes=4,
                            generator=torch.Generator().manual_seed(3))
    error = float((result.logp - m.log_prob(x)).mean())
    stderr = float((result.stderr**2).sum().sqrt() / len(x))  # of the mean over points
    assert bool(torch.isfinite(result.stderr).all()) and stderr > 0
    assert abs(error) < 3 * stderr, (error, stderr)


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_pf_ode_round_trip_on_gaussian_data(name):
    """Gaussian data N(mu, s^2 I) -> latent -> data within 1e-3; the latent is also the closed
    form of the (linear) flow: x_T = alpha_T mu + sqrt(v_T / v_eps) (x - alpha_eps mu)."""
    mu, s, eps = torch.tensor([0.5, -0.3, 1.0], dtype=F64), 0.7, 1e-3
    m = GaussianMixtureDenoiser([1.0], mu[None], s)
    sde = PROCESSES[name]()
    x = mu + s * torch.randn(200, 3, generator=torch.Generator().manual_seed(4), dtype=F64)
    kwargs = dict(method="rk45", rtol=1e-8, atol=1e-8, t_eps=eps)
    z, _ = S.probability_flow_ode(exact_score(m, sde), sde, x, direction="encode", **kwargs)
    back, _ = S.probability_flow_ode(exact_score(m, sde), sde, z, direction="decode", **kwargs)
    assert float((back - x).abs().max()) < 1e-3
    (a0, s0), (a1, s1) = (sde.alpha_sigma(torch.tensor(t, dtype=F64)) for t in (eps, 1.0))
    ratio = ((a1**2 * s**2 + s1**2) / (a0**2 * s**2 + s0**2)).sqrt()
    torch.testing.assert_close(z, a1 * mu + ratio * (x - a0 * mu), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("levels", [256, 17])
def test_bits_per_dim_of_the_uniform_density(levels):
    """The uniform density on the dequantized cube [-1 - d/2, 1 + d/2)^D (d = 2 / (levels - 1))
    is log2(levels) bits/dim exactly, and dequantize fills each value's bin."""
    dims, width = 12, 2 / (levels - 1)
    logp = torch.full((3,), -dims * math.log(levels * width))
    x = torch.randint(0, levels, (3, dims)).double() * width - 1
    xd = dequantize(x, levels, torch.Generator().manual_seed(0))
    assert bool(((xd - x).abs() <= width / 2).all()) and float((xd - x).std()) > width / 6
    torch.testing.assert_close(bits_per_dim(logp, dims, levels, x=xd),
                               torch.full((3,), math.log2(levels), dtype=F64))
    assert float(bits_per_dim([-math.log(2.0)], 1, levels=None)) == pytest.approx(1.0)


def test_off_grid_data_is_refused_for_bits_per_dim():
    with pytest.raises(ValueError, match="grid of 17 levels"):
        dequantize(torch.tensor([[0.0, 0.03]]), 17)
    with pytest.raises(ValueError, match="x must lie in"):
        dequantize(torch.tensor([[0.0, 2.0]]), 17)


# --------------------------------------------------------------------------- bad input


def _bad_calls():
    sde, m = VPSDE(), gmm8_mixture()
    score, x = exact_score(m, sde), torch.zeros(4, 2)
    grid = S.time_grid(1.0, 1e-3, 1000)
    return {
        "predictor": lambda: S.pc_sampler(score, sde, x, grid, predictor="leapfrog"),
        "corrector": lambda: S.pc_sampler(score, sde, x, grid, corrector="hmc"),
        "time_grid": lambda: S.pc_sampler(score, sde, x, [0.5, 0.7, 0.1], "euler_maruyama"),
        "eps": lambda: S.time_grid(1.0, 1.5, 10),
        "snr": lambda: S.pc_sampler(score, sde, x, grid, snr=0.0),
        "rtol": lambda: S.probability_flow_ode(score, sde, x, rtol=0.0),
        "atol": lambda: log_likelihood(score, sde, x.double(), atol=-1e-5),
        "method": lambda: S.probability_flow_ode(score, sde, x, method="rk4"),
        "divergence": lambda: log_likelihood(score, sde, x.double(), divergence="trace"),
        "probe": lambda: log_likelihood(score, sde, x.double(), probe="uniform"),
        "sigma_min": lambda: VESDE(sigma_min=50, sigma_max=0.01),
        "beta_min": lambda: SubVPSDE(beta_min=20, beta_max=0.1),
        "beta_max": lambda: VPSDE(beta_min=20, beta_max=0.1),
        "x must lie": lambda: bits_per_dim(torch.zeros(2), 2,
                                           x=torch.tensor([[0.0, 1.5], [-2.0, 0.0]])),
        "levels": lambda: bits_per_dim(torch.zeros(2), 2, levels=1),
    }


@pytest.mark.parametrize("parameter", sorted(_bad_calls()))
def test_bad_input_raises_value_error_naming_parameter(parameter):
    with pytest.raises(ValueError, match=parameter):
        _bad_calls()[parameter]()


def test_ladder_predictors_need_the_process_ladder():
    sde, m = VPSDE(), gmm8_mixture()
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="time_grid"):
        S.pc_sampler(exact_score(m, sde), sde, x, S.time_grid(1.0, 1e-3, 100))
    with pytest.raises(ValueError, match="time_grid"):  # right length, rungs skipped
        S.pc_sampler(exact_score(m, sde), sde, x, S.time_grid(0.9, 1e-3, 1000))
    with pytest.raises(ValueError, match="predictor"):
        sub = SubVPSDE()
        S.pc_sampler(exact_score(m, sub), sub, x, S.time_grid(1.0, 1e-3, 1000), "ancestral")


@pytest.mark.parametrize("process", [VPSDE(0.1, 20.0), SubVPSDE(0.1, 20.0), VESDE(0.01, 50.0),
                                     VPSDE(schedule="cosine")], ids=["vp", "subvp", "ve", "vp-cosine"])
def test_time_of_noise_level_closed_forms_match_the_bisection(process):
    """The closed forms against the generic bisection (SDE.time_of_noise_level); the round trip
    is test_sampler_contracts.py's test_noise_level_round_trips_up_to_T."""
    from diffusion_core.processes.sde import SDE

    t = torch.linspace(1e-5, 1.0, 257, dtype=torch.float64)
    s = process.noise_level(t)
    closed = process.time_of_noise_level(s, 1e-5)
    bisection = SDE.time_of_noise_level(process, s, 1e-5)
    assert torch.allclose(closed, bisection, atol=1e-9, rtol=0)
