"""Contracts every sampler keeps (issue 15): ladder predictors at any rung count sit on the
continuous marginals and reach the sample-distance floor; sample i does not depend on its batch;
every documented schedule is finite up to t = T and samples end to end; a sampler that cannot
work on a process is refused naming the setting. Driven by exact Gaussian-mixture denoisers or a
tiny random MLP on 2-D data."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from diffusion_core.evaluation.metrics import sliced_wasserstein
from diffusion_core.frameworks import DiffusionModel
from diffusion_core.likelihood.pf_ode import log_likelihood
from diffusion_core.models.analytic import gmm8_mixture
from diffusion_core.models.denoiser import score_of_time
from diffusion_core.noise import PerSampleNoise
from diffusion_core.processes.ddpm_chain import DDPMChain
from diffusion_core.processes.sde import VESDE, VPSDE, SubVPSDE
from diffusion_core.samplers import registry
from diffusion_core.samplers import sde as S
from diffusion_core.samplers.rk45 import rk45_solve

F64 = torch.float64
N_SAMPLES = 2000


class _Exact:
    """A model stand-in for `registry.draw`: a process and an exact mixture denoiser."""

    def __init__(self, process, denoiser):
        self.process, self.denoiser = process, denoiser

    @property
    def chain(self) -> DDPMChain:
        return DDPMChain.from_process(self.process)


@pytest.fixture(scope="module")
def gmm8():
    """The mixture, a reference sample and the noise floor: the mean SWD between the reference
    and 8 fresh data sets of the same size (one such SWD alone scatters by ~25%)."""
    m, g = gmm8_mixture(), torch.Generator().manual_seed(0)
    real = m.sample(N_SAMPLES, g)[0].numpy()
    floor = np.mean([sliced_wasserstein(m.sample(N_SAMPLES, g)[0].numpy(), real) for _ in range(8)])
    return m, real, float(floor)


def _assert_at_floor(m, x, real, floor, factor=1.5):
    assert x.shape == (N_SAMPLES, 2) and bool(torch.isfinite(x).all())
    swd = sliced_wasserstein(x.numpy(), real)
    assert swd < factor * floor, (swd, floor)


# --------------------------------------------------------------------------- A. ladders


LADDER_PROCESSES = {"vp": VPSDE, "vp-cosine": lambda: VPSDE(schedule="cosine"), "ve": VESDE}


@pytest.mark.parametrize("steps", [50, 100])
@pytest.mark.parametrize("name", sorted(LADDER_PROCESSES))
def test_coarse_ladder_rungs_carry_the_continuous_noise_level(name, steps):
    """Each rung of process.ladder(steps) has the continuous marginal's noise level at its
    time, to 1e-6: DDIM's construction alpha_bar_i = alpha(t_i)^2 for VP, the geometric sigma
    for VE. (The fine chain's formula at 50 rungs, `with_steps`, is 2.4x off at the top.)"""
    process = LADDER_PROCESSES[name]()
    ladder = process.ladder(steps)
    times = ladder.ladder_times()
    assert ladder.N == steps and len(times) == steps
    assert torch.equal(ladder.timestep_index(times), torch.arange(steps - 1, -1, -1))
    alpha, sigma = ladder.rung_alpha_sigma(times)
    torch.testing.assert_close(sigma / alpha, process.noise_level(times), rtol=1e-6, atol=0)
    if isinstance(process, VPSDE):  # the chain the ladder steps is the one it reports
        chain = DDPMChain.from_process(ladder)
        torch.testing.assert_close(chain.noise_level(torch.arange(steps)).flip(0),
                                   process.noise_level(times), rtol=1e-6, atol=0)


def test_ladder_at_the_process_resolution_is_ddpms_chain():
    """At steps == N the linear VP ladder is DDPM's own beta = linspace(1e-4, 0.02), which the
    continuous marginals would not give (first beta 1.0994e-4, last 0.019792), so it stays."""
    process = VPSDE()
    assert process.ladder(1000) is process
    torch.testing.assert_close(process.discrete_betas, torch.linspace(1e-4, 0.02, 1000, dtype=F64),
                               rtol=0, atol=1e-12)
    marginal = process.marginal_betas(1000)
    assert float(marginal[0]) == pytest.approx(1.0994e-4, rel=1e-4)
    assert float(marginal[-1]) == pytest.approx(0.019792, rel=1e-4)


@pytest.mark.parametrize("predictor", ["reverse_diffusion", "ancestral"])
@pytest.mark.parametrize("steps", [50, 100])
@pytest.mark.parametrize("kind", ["vp", "ve"])
def test_ladder_predictors_reach_the_floor_on_coarse_ladders(kind, steps, predictor, gmm8):
    """PC sampling (default Langevin corrector) with the exact gmm8 denoiser on a ladder of
    50 or 100 rungs: SWD to data within 1.5x the noise floor (measured: 0.9-1.05x)."""
    m, real, floor = gmm8
    process = VPSDE() if kind == "vp" else VESDE()
    x_T = process.prior_sampling((N_SAMPLES, 2), torch.Generator().manual_seed(1))
    settings = {"name": "pc", "predictor": predictor, "steps": steps}
    x, nfe = registry.draw(_Exact(process, m), x_T, settings, torch.Generator().manual_seed(2))
    assert nfe == 2 * steps
    _assert_at_floor(m, x, real, floor)


# --------------------------------------------------------------------------- B. sample i


VP_CONFIG = {"framework": "ddpm", "process": {"kind": "vp", "N": 100}, "parameterization": "edm",
             "sigma_data": 0.5, "loss": {"kind": "ddpm"},
             "network": {"kind": "mlp", "dim": 2, "width": 16, "depth": 1, "emb_dim": 8},
             "data_shape": [2]}
VE_CONFIG = {**VP_CONFIG, "framework": "ncsn", "loss": {"kind": "ncsn"},
             "process": {"kind": "ve", "sigma_min": 0.01, "sigma_max": 5.0, "N": 20}}
# Few steps of each sampler (and a 100-step chain for DDPM's ancestral sampler, which walks all
# of it): the contract is about bookkeeping, not quality.
FEW_STEPS = {"ancestral": {}, "ddim": {"steps": 5, "eta": 1.0}, "heun": {"steps": 5}, "dpmpp_2m": {"steps": 5},
             "pc": {"steps": 5}, "ode": {"steps": 5, "rtol": 1e-4, "atol": 1e-4},
             "annealed_langevin": {"steps_per_sigma": 2}, "langevin": {"steps": 20}}


def _every_setting():
    for name, few in FEW_STEPS.items():
        if name == "pc":
            yield from ({"name": name, **few, "predictor": p, "corrector": c}
                        for p in S.PREDICTORS for c in S.CORRECTORS)
        elif name == "ode":
            yield from ({"name": name, **few, "solver": s} for s in S.ODE_METHODS)
        else:
            yield {"name": name, **few}


def _cases():
    for kind, config in (("vp", VP_CONFIG), ("ve", VE_CONFIG)):
        for settings in _every_setting():
            if registry.fits_process(settings["name"], kind) and not (
                    settings.get("predictor") == "ancestral" and kind not in S.ANCESTRAL_KINDS):
                yield pytest.param(config, settings, id=f"{kind}-" + "-".join(
                    str(settings[k]) for k in ("name", "predictor", "corrector", "solver") if k in settings))


def test_every_sampler_is_in_the_batch_contract():
    assert set(FEW_STEPS) == set(registry.SAMPLERS)
    covered = {(p.values[1]["name"], p.values[0]["process"]["kind"]) for p in _cases()}
    assert covered == {(name, kind) for name, spec in registry.SAMPLERS.items()
                       for kind in spec.processes if kind != "subvp"}


@pytest.fixture(scope="module")
def tiny_models():
    """One DiffusionModel per config, a random-weight MLP (seeded)."""
    models = {}
    for config in (VP_CONFIG, VE_CONFIG):
        torch.manual_seed(0)
        models[config["process"]["kind"]] = DiffusionModel(config)
    return models


@pytest.mark.parametrize("config,settings", list(_cases()))
def test_sample_i_does_not_depend_on_its_batch(config, settings, tiny_models):
    """Seeds drawn as one batch of 6 equal the same seeds drawn as batches of 1, 2 and 3, and
    in a shuffled order (PerSampleNoise; per-sample RK45 step control and Langevin steps)."""
    model, seeds = tiny_models[config["process"]["kind"]], [101, 102, 103, 104, 105, 106]

    def draw(part):
        return model.sample(len(part), (2,), settings, PerSampleNoise(part))[0]

    whole = draw(seeds)
    assert whole.shape == (6, 2) and bool(torch.isfinite(whole).all())
    parts = torch.cat([draw(seeds[:1]), draw(seeds[1:3]), draw(seeds[3:])])
    order = [4, 0, 5, 2, 1, 3]
    shuffled = draw([seeds[i] for i in order])
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shuffled, whole[order], rtol=1e-5, atol=1e-5)


def _pf_drift(sde, m):
    reverse = sde.reverse(score_of_time(m, sde), probability_flow=True)
    return lambda t, y: reverse.sde(y, t)[0].double()


def test_rk45_controls_each_sample_as_scipy_controls_one():
    """Sample by sample, the torch RK45 is as accurate as scipy's RK45 at the same tolerance
    against a DOP853 reference at 1e-10, at about its NFE (measured: 85 vs 86 on average); in a
    batch each sample ends where it ends alone, and NFE counts batched evaluations: those of
    the slowest sample, 2 + 6 per step."""
    m, sde = gmm8_mixture(), VPSDE()
    drift = _pf_drift(sde, m)
    x = sde.prior_sampling((4, 2), torch.Generator().manual_seed(4)).double()
    ends, counts, scipy_counts = [], [], []
    for row in x:
        def fun(t, y):
            return drift(torch.tensor([t], dtype=F64), torch.from_numpy(y)[None])[0].numpy()
        reference = solve_ivp(fun, (1.0, 1e-3), row.numpy(), method="DOP853", rtol=1e-10, atol=1e-10)
        scipy = solve_ivp(fun, (1.0, 1e-3), row.numpy(), method="RK45", rtol=1e-5, atol=1e-5)
        end, nfe = rk45_solve(drift, row[None], 1.0, 1e-3, 1e-5, 1e-5)
        error = np.abs(end[0].numpy() - reference.y[:, -1]).max()
        assert error < max(2 * np.abs(scipy.y[:, -1] - reference.y[:, -1]).max(), 1e-4), error
        ends.append(end[0])
        counts.append(nfe)
        scipy_counts.append(scipy.nfev)
    assert abs(np.mean(counts) / np.mean(scipy_counts) - 1) < 0.2, (counts, scipy_counts)
    batch, nfe = rk45_solve(drift, x, 1.0, 1e-3, 1e-5, 1e-5)
    torch.testing.assert_close(batch, torch.stack(ends), rtol=1e-12, atol=1e-12)
    assert nfe == max(counts) and (nfe - 2) % 6 == 0


def test_rk45_refuses_a_drift_that_is_not_finite():
    """A step that meets a NaN is rejected until the step size underflows: an error, no hang."""
    def drift(t, y):
        return torch.where((t < 0.5)[:, None], torch.nan, -y)

    with pytest.raises(RuntimeError, match="RK45"):
        rk45_solve(drift, torch.ones(2, 1), 1.0, 0.1, 1e-5, 1e-5)


# --------------------------------------------------------------------------- C. schedules to T


SCHEDULES = {"vp-linear": VPSDE, "vp-cosine": lambda: VPSDE(schedule="cosine"),
             "subvp": SubVPSDE, "ve": VESDE}


def _times(process, dtype):
    """A grid of [0, 1] with exactly 1.0 and the cosine's clip time and its neighbours."""
    t = torch.cat([torch.linspace(0, 1, 101, dtype=F64), torch.tensor([0.999, 1 - 1e-7], dtype=F64)])
    if hasattr(process, "clip_time"):
        t = torch.cat([t, process.clip_time + torch.tensor([-1e-6, 0.0, 1e-6], dtype=F64)])
    return t.sort().values.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_processes_are_finite_up_to_T(name, dtype):
    """beta, alpha, sigma, drift and diffusion are finite at every t in [0, 1], 1.0 included,
    and float32 agrees with float64 (alpha to 1e-3 relative where it is ~5e-5)."""
    process = SCHEDULES[name]()
    t = _times(process, dtype)
    assert t[-1] == 1.0
    alpha, sigma = process.alpha_sigma(t)
    x = torch.ones(len(t), 2, dtype=dtype)
    drift, diffusion = process.sde(x, t)
    values = [alpha, sigma, drift, diffusion] + ([process.beta(t)] if hasattr(process, "beta") else [])
    assert all(bool(torch.isfinite(v).all()) for v in values), name
    assert bool((alpha > 0).all()) and bool((sigma >= 0).all()) and bool((diffusion >= 0).all())
    alpha64, sigma64 = process.alpha_sigma(t.double())
    torch.testing.assert_close(alpha.double(), alpha64, rtol=1e-3, atol=0)
    torch.testing.assert_close(sigma.double(), sigma64, rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_noise_level_round_trips_up_to_T(name):
    """time_of_noise_level(noise_level(t)) == t on (0, 1], 1.0 and the cosine's clip included."""
    process = SCHEDULES[name]()
    t = _times(process, F64)[1:]
    torch.testing.assert_close(process.time_of_noise_level(process.noise_level(t)), t,
                               rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", ["vp-linear", "vp-cosine", "subvp"])
def test_log_alpha_falls_at_half_beta(name):
    """d log alpha / dt = -beta / 2, numerically (central differences; backward at t = 1),
    across the cosine's clip time."""
    process, h = SCHEDULES[name](), 1e-7
    t = _times(process, F64)[1:]

    def log_alpha(u):
        return torch.log(process.alpha_sigma(u)[0])

    central = (log_alpha(t + h) - log_alpha(t - h)) / (2 * h)
    backward = (3 * log_alpha(t) - 4 * log_alpha(t - h) + log_alpha(t - 2 * h)) / (2 * h)
    slope = torch.where(t + h > 1, backward, central)
    near_kink = (t - getattr(process, "clip_time", -1.0)).abs() < 2 * h
    torch.testing.assert_close(slope[~near_kink], -0.5 * process.beta(t)[~near_kink],
                               rtol=1e-5, atol=1e-6)


def test_cosine_chain_sits_on_the_continuous_marginal():
    """The cosine's discrete chain is Nichol & Dhariwal's (last beta clipped to 0.999), and
    every rung, the last included, is the continuous marginal at t_i = (i + 1) / N: the
    clip time is placed to make the continuous process lose the clipped step's log 1000."""
    process = VPSDE(schedule="cosine")
    chain = DDPMChain.from_process(process)
    assert 1 - 1 / process.N < process.clip_time < 1
    assert float(process.discrete_betas[-1]) == pytest.approx(0.999, rel=1e-12)
    assert float(process.discrete_betas[:-1].max()) < 0.999
    times = (torch.arange(process.N, dtype=F64) + 1) / process.N
    torch.testing.assert_close(process.alpha_sigma(times)[0] ** 2, chain.alphas_cumprod,
                               rtol=1e-9, atol=0)
    assert float(chain.noise_level(process.N - 1)) == pytest.approx(float(process.noise_level(1.0)))


COSINE_CONFIG = {"framework": "sde", "process": {"kind": "vp", "schedule": "cosine"},
                 "parameterization": "eps", "sigma_data": 0.5, "loss": {"kind": "dsm"}}


@pytest.mark.parametrize("settings", [
    {"name": "pc", "predictor": "euler_maruyama", "corrector": "none", "steps": 100},
    {"name": "ode", "solver": "euler", "steps": 100},
    {"name": "ode", "solver": "heun", "steps": 50},
    {"name": "ode", "solver": "rk45"},
    {"name": "heun", "steps": 35},
    {"name": "dpmpp_2m", "steps": 20}], ids=lambda s: s.get("predictor", s.get("solver", s["name"])))
def test_cosine_process_samples_end_to_end(settings, gmm8):
    """The continuous-time samplers integrate the cosine process from t = 1 (finite now) and
    reach the floor with the exact denoiser (measured 0.9-0.95x); Heun/EDM from
    min(the chain's top level ~20,000, 80) does so in EDM's 18 steps (35 NFE)."""
    m, real, floor = gmm8
    model = DiffusionModel(COSINE_CONFIG, network=torch.nn.Identity())
    model.denoiser = m
    x, nfe = model.sample(N_SAMPLES, (2,), settings, torch.Generator().manual_seed(3))
    assert settings["name"] != "heun" or nfe == 35
    _assert_at_floor(m, x, real, floor)


def test_cosine_log_likelihood_is_finite_and_exact():
    m, process = gmm8_mixture(), VPSDE(schedule="cosine")
    x = m.sample(6, torch.Generator().manual_seed(5))[0].double()
    result = log_likelihood(score_of_time(m, process), process, x, "exact")
    assert bool(torch.isfinite(result.logp).all()) and bool(torch.isfinite(result.latent).all())
    torch.testing.assert_close(result.logp, m.log_prob(x), rtol=0, atol=0.02)


# --------------------------------------------------------------------------- D. refusals


@pytest.mark.parametrize("settings,process,message", [
    ({"name": "langevin"}, {"kind": "vp"}, r"^name: sampler 'langevin' .* vp process"),
    ({"name": "ddim"}, {"kind": "ve"}, r"^name: sampler 'ddim' .* ve process"),
    ({"name": "heun"}, {"kind": "subvp"}, r"^name: sampler 'heun' .* subvp process"),
    ({"name": "pc", "predictor": "ancestral"}, {"kind": "subvp"}, r"^predictor: 'ancestral'.*subvp"),
    ({"name": "pc", "steps": 2000}, {"kind": "vp"}, r"^steps: .*N = 1000"),
    ({"name": "pc", "predictor": "ancestral", "steps": 30}, {"kind": "ve", "N": 20}, r"^steps: .*N = 20"),
    ({"name": "ddim", "steps": 2000}, {"kind": "vp"}, r"^steps"),
    ({"name": "ode", "solver": "rk4"}, {"kind": "vp"}, r"^solver"),
    ({"name": "pc", "stpes": 10}, {"kind": "vp"}, r"^stpes"),
])
def test_check_fits_refuses_naming_the_setting(settings, process, message):
    with pytest.raises(ValueError, match=message):
        registry.check_fits(settings, process)


def test_check_fits_accepts_what_works_and_draw_checks_it():
    """Coarse ladders of any size from 2 to N now work (VP: the marginal chain, no beta_max /
    steps < 1 limit); a built process is accepted too; draw refuses a misfit."""
    for steps in (2, 10, 1000):
        resolved = registry.check_fits({"name": "pc", "steps": steps}, {"kind": "vp"})
        assert resolved["steps"] == steps and resolved["predictor"] == "reverse_diffusion"
    assert registry.check_fits({"name": "pc", "predictor": "ancestral"}, VESDE())["name"] == "pc"
    with pytest.raises(ValueError, match="^name:"):
        registry.draw(_Exact(SubVPSDE(), gmm8_mixture()), torch.zeros(2, 2), {"name": "ddim"}, None)
    small = VPSDE().ladder(2)
    alpha, sigma = small.rung_alpha_sigma(small.ladder_times())
    torch.testing.assert_close(sigma / alpha, VPSDE().noise_level(torch.tensor([1.0, 0.5], dtype=F64)))
