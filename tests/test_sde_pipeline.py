"""`sde` as a framework of the pipeline: a tiny real run through the stages (Ray Train with 2
workers, MLflow, shards), the NLL recorded by evaluate, cross-framework sampling (a ddpm model
through the VP reverse SDE and PF-ODE, an sde model through DDPM's chain), the continuous DSM
loss against its closed form, and bad params stopped before any work, naming the field."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion_core.frameworks import DiffusionModel
from diffusion_core.models.analytic import GaussianMixtureDenoiser
from diffusion_core.noise import PerSampleNoise
from diffusion_core.objectives.continuous_dsm import (
    continuous_dsm_loss,
    draw_times,
    dsm_weight,
)
from diffusion_core.processes.ddpm_chain import DDPMChain
from diffusion_core.processes.sde import VESDE, VPSDE, SubVPSDE
from diffusion_core.samplers import registry as sampler_registry
from flows.config.params import ConfigError, parse_params
from flows.entry.cli import main
from flows.stages import likelihood_eval
from flows.stages import sample as sample_stage
from flows.stages import train as train_stage
from flows.tracking import runs as tracking
from tests.tiny import TINY_SDE, in_workspace, tiny_params, write_params

F64 = torch.float64


# --- the continuous DSM loss ------------------------------------------------------------------
@pytest.mark.parametrize("process", [VPSDE(), SubVPSDE(), VESDE(0.01, 5.0)])
@pytest.mark.parametrize("weighting", ["sigma2", "likelihood", "lognormal"])
def test_dsm_loss_of_the_optimal_denoiser_is_the_closed_form(process, weighting):
    """For x0 ~ N(mu, s^2 I) the optimal eps-prediction E[z | x_t] leaves the residual variance
    Var(z | x_t) = a^2 s^2 / (a^2 s^2 + sigma^2) per dim, so with t, z drawn from the same
    generator the loss is that value times lambda(t) / sigma^2, up to Monte Carlo error."""
    mu, s, n = torch.tensor([0.4, -1.0], dtype=F64), 0.6, 20000
    optimal = GaussianMixtureDenoiser([1.0], mu[None], s)
    x0 = mu + s * torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    loss = continuous_dsm_loss(optimal, process, x0, 1e-3, weighting, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    t = 1e-3 + (1 - 1e-3) * torch.rand(n, generator=g, dtype=F64)  # the loss's own first draw
    alpha, sigma = process.alpha_sigma(t)
    expected = alpha**2 * s**2 / (alpha**2 * s**2 + sigma**2)
    if weighting == "likelihood":
        expected = expected * process.sde(x0, t)[1] ** 2 / sigma**2
    if weighting == "lognormal":  # the EDM emphasis over t, see the test below
        s_t = sigma / alpha
        density = torch.exp(-0.5 * ((s_t.log() + 1.2) / 1.2) ** 2) / (s_t * 1.2 * (2 * np.pi) ** 0.5)
        ds_dt = process.sde(x0, t)[1] ** 2 / (2 * s_t * alpha**2)
        expected = expected * (1 - 1e-3) * density * ds_dt * (1 + s_t**2 / 0.25)
    ratio = (loss - expected) / expected  # each term: a chi-square(2)/2 - 1 error
    assert abs(float(ratio.mean())) < 4 * float(ratio.std()) / n**0.5


@pytest.mark.parametrize("process", [VPSDE(), VPSDE(schedule="cosine"), SubVPSDE(), VESDE(0.01, 50.0)])
def test_dsm_weights_integrate_to_their_noise_level_distributions(process):
    """Over t in [eps, 0.99]: the likelihood weight g^2 / sigma^2 integrates to ln s^2(1) - ln s^2(eps)
    (uniform in log noise level), and the lognormal weight over (1 + s^2 / sigma_d^2) to the
    lognormal probability of [s(eps), s(0.99)], Phi((ln s - p_mean) / p_std) differences."""
    from scipy.stats import norm

    eps, t = 1e-3, torch.linspace(1e-3, 0.99, 400001, dtype=F64)  # cosine's s(1) is infinite
    alpha, sigma = process.alpha_sigma(t)
    s = sigma / alpha
    likelihood = torch.trapezoid(dsm_weight(process, t, "likelihood", eps), t)
    assert float(likelihood) == pytest.approx(float(2 * torch.log(s[-1] / s[0])), rel=1e-5)
    weight = dsm_weight(process, t, "lognormal", eps, -1.2, 1.2, 0.7) / (1 + s**2 / 0.49)
    mass = norm.cdf((np.log(float(s[-1])) + 1.2) / 1.2) - norm.cdf((np.log(float(s[0])) + 1.2) / 1.2)
    assert float(torch.trapezoid(weight, t)) / (1 - eps) == pytest.approx(mass, rel=1e-4)


@pytest.mark.parametrize("process", [VPSDE(), SubVPSDE(), VESDE(0.01, 50.0)])
@pytest.mark.parametrize("weighting", ["likelihood", "lognormal"])
def test_importance_sampled_times_keep_the_objective(process, weighting):
    """t drawn from the weighting's own ln s distribution: w(t) r(t) is the constant (likelihood)
    or EDM's 1 + s^2 / sigma_d^2 times a constant (lognormal), ln s has the lognormal's moments,
    and the optimal denoiser's loss matches the objective integrated over t by quadrature."""
    mu, s0, n, eps = torch.tensor([0.4, -1.0], dtype=F64), 0.6, 40000, 1e-3
    t, ratio = draw_times(process, n, eps, weighting, True, -1.2, 1.2, torch.Generator().manual_seed(5))
    assert bool((t >= eps).all() and (t <= 1).all())
    level = process.noise_level(t)
    product = dsm_weight(process, t, weighting, eps, -1.2, 1.2, 0.5) * ratio
    if weighting == "lognormal":
        product = product / (1 + level**2 / 0.25)
        assert float(level.log().mean()) == pytest.approx(-1.2, abs=0.03)
        assert float(level.log().std()) == pytest.approx(1.2, abs=0.03)
    torch.testing.assert_close(product, product[:1].expand(n), rtol=1e-6, atol=0)
    optimal = GaussianMixtureDenoiser([1.0], mu[None], s0)
    x0 = mu + s0 * torch.randn(n, 2, generator=torch.Generator().manual_seed(6), dtype=F64)
    loss = continuous_dsm_loss(optimal, process, x0, eps, weighting, torch.Generator().manual_seed(7),
                               importance=True)
    grid = torch.linspace(eps, 1, 200001, dtype=F64)
    alpha, sigma = process.alpha_sigma(grid)
    residual = alpha**2 * s0**2 / (alpha**2 * s0**2 + sigma**2)
    objective = torch.trapezoid(dsm_weight(process, grid, weighting, eps) * residual, grid) / (1 - eps)
    assert abs(float(loss.mean() - objective)) < 4 * float(loss.std()) / n**0.5, (loss.mean(), objective)


# --- cross-framework sampling through the adapters --------------------------------------------
class _Exact:
    """A model stand-in: a process and the exact denoiser of a 2-D Gaussian mixture."""

    def __init__(self, process):
        self.process = process
        self.denoiser = GaussianMixtureDenoiser([0.5, 0.5], [[2.0, 0.0], [-2.0, 0.0]], 0.3)

    @property
    def chain(self) -> DDPMChain:
        return DDPMChain.from_process(self.process)


@pytest.mark.parametrize("process, settings, nfe", [
    (VPSDE(), {"name": "pc", "steps": 200}, 400),
    (VPSDE(), {"name": "pc", "predictor": "ancestral", "corrector": "none", "steps": 100}, 100),
    (VESDE(0.01, 10.0), {"name": "pc", "predictor": "ancestral", "steps": 200}, 400),
    (SubVPSDE(), {"name": "pc", "predictor": "euler_maruyama", "corrector": "none", "steps": 300}, 300),
    (VPSDE(), {"name": "ode", "solver": "heun", "steps": 40}, 81),
    (VESDE(0.01, 10.0), {"name": "ode"}, None),
    (VPSDE(), {"name": "ddim", "steps": 50, "spacing": "karras"}, 50),
])
def test_sampler_adapters_reproduce_the_mixture(process, settings, nfe):
    """Modes' weights within 0.05 and their spread within 10% of the truth, for the ladder
    predictors on a coarser ladder (process.with_steps) as well."""
    model, n = _Exact(process), 2000
    x_T = process.prior_sampling((n, 2), torch.Generator().manual_seed(0))
    x, used = sampler_registry.draw(model, x_T, settings, torch.Generator().manual_seed(1))
    assert nfe is None or used == nfe
    right = (x[:, 0] > 0).double().mean()
    assert abs(float(right) - 0.5) < 0.05
    centre = torch.where(x[:, :1] > 0, 2.0, -2.0)
    spread = (x.double() - torch.cat([centre, torch.zeros_like(centre)], 1)).std(0)
    assert bool((spread - 0.3).abs().max() < 0.03), spread


def test_ladder_predictors_walk_the_coarser_discretization():
    vp = VPSDE(0.1, 20, 1000).with_steps(50)
    torch.testing.assert_close(vp.discrete_betas, torch.linspace(0.1 / 50, 20 / 50, 50, dtype=F64))
    assert torch.equal(vp.timestep_index(vp.ladder_times()), torch.arange(49, -1, -1))
    ve = VESDE(0.01, 50, 1000).with_steps(10)
    assert torch.equal(ve.timestep_index(ve.ladder_times()), torch.arange(9, -1, -1))
    assert ve.discrete_sigmas.numel() == 10 and float(ve.discrete_sigmas[0]) == pytest.approx(0.01)


# --- a tiny real pipeline run ------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipeline(tiny_vp_runs):
    """The session's tiny ddpm and sde runs (prepare -> train -> sample -> evaluate on the
    checkerboard), worked on in their folder."""
    with in_workspace(tiny_vp_runs[0]):
        yield tiny_vp_runs


@pytest.mark.slow  # Ray Train, Ray sampling and evaluation
def test_sde_runs_through_the_stages_and_records_the_nll(pipeline):
    root, params, out = pipeline
    trained, sampled, result = out["sde"]
    assert trained["steps"] == params.vector.steps and trained["world_size"] == 2
    config = json.loads((root / "models/sde/model.json").read_text())
    assert config["process"]["kind"] == "vp" and config["loss"]["kind"] == "dsm"
    assert config["loss"]["weighting"] == params.sde.weighting
    assert sampled["sampler"] == "pc" and sampled["nfe"] == 60  # 30 predictor + 30 corrector
    saved = json.loads((root / "metrics/sde.json").read_text())
    for key in ("swd", "swd_floor", "off_support", "nll", "nll_nfe", "data_entropy", "vlb_total",
                "vlb_prior", "vlb_denoising", "vlb_reconstruction"):
        assert key in saved, key
    assert saved["nll_unit"] == "nats" and saved["nll_method"] == "exact" and saved["nll_nfe"] > 0
    assert saved["data_entropy"] == pytest.approx(np.log(8), abs=1e-9)  # uniform on 8 unit cells
    assert np.isfinite(saved["nll"]) and saved["vlb_nfe"] == 1000
    assert 0 < saved["nll_sem"] < 1  # the sampling error of the mean over the held-out points
    run = tracking.client().get_run(tracking.load_run_id(root / "models/sde"))
    assert run.data.tags["framework"] == "sde"
    assert run.data.params["sde.weighting"] == params.sde.weighting and "sde.likelihood" in " ".join(run.data.params)
    assert {"eval_nll", "eval_nll_nfe", "eval_swd", "eval_vlb_total"} <= set(run.data.metrics)


@pytest.mark.slow  # the sample stage on Ray
def test_ddpm_model_is_sampled_by_the_vp_reverse_sde_and_pf_ode_in_the_sample_stage(pipeline):
    """The sampler is a parameter of the sample stage: ddpm.sampler = pc or ode."""
    root, params, _ = pipeline
    data = tiny_params(train={"frameworks": ["ddpm", "sde"]}, sde=TINY_SDE)
    for sampler, nfe in (({"name": "pc", "predictor": "ancestral", "corrector": "none",
                           "steps": 40}, 40), ({"name": "ode", "solver": "heun", "steps": 6}, 13)):
        data["ddpm"]["sampler"] = sampler
        data["sample"]["out_dir"] = str(root / f"samples_{sampler['name']}")
        info = sample_stage.sample(parse_params(data), "ddpm")
        x = np.load(root / f"samples_{sampler['name']}/ddpm/samples.npz")["x"]
        assert info["nfe"] == nfe and x.shape == (params.vector.num_samples, 2)
        assert np.isfinite(x).all() and np.abs(x).max() < 10


@pytest.mark.slow  # its model comes from the Ray pipeline fixture
def test_sde_model_is_sampled_through_ddpm_chain_and_per_sample_noise_fixes_it(pipeline):
    root, _, _ = pipeline
    model = DiffusionModel.load(root / "models/sde")
    x, nfe = model.sample(8, (2,), {"name": "ddim", "steps": 10}, PerSampleNoise(range(8)))
    y, _ = model.sample(3, (2,), {"name": "ddim", "steps": 10}, PerSampleNoise(range(3)))
    assert nfe == 10 and torch.allclose(x[:3], y, atol=1e-5)
    z, nfe = model.sample(8, (2,), {"name": "pc", "predictor": "euler_maruyama",
                                    "corrector": "none", "steps": 20}, PerSampleNoise(range(8)))
    w, _ = model.sample(3, (2,), {"name": "pc", "predictor": "euler_maruyama",
                                  "corrector": "none", "steps": 20}, PerSampleNoise(range(3)))
    assert nfe == 20 and torch.allclose(z[:3], w, atol=1e-5)


@pytest.mark.slow  # the evaluate stage's NLL of a saved U-Net (PF-ODE solves, the 1000-term bound): ~7 s
def test_image_nll_is_in_bits_per_dim_with_its_dequantization(tmp_path):
    """An untrained tiny U-Net's NLL of digit-like 17-level data, and the VLB beside it."""
    data = tiny_params(source="digits", train={"out_dir": str(tmp_path)},
                       sde={"likelihood": {"rtol": 1e-3, "atol": 1e-3}}, image={"nll_points": 8})
    params = parse_params(data)
    config = train_stage.model_config(params, "ddpm", {"kind": "image", "shape": [1, 8, 8]})
    DiffusionModel(config).save(tmp_path / "ddpm")
    test = (np.random.default_rng(0).integers(0, 17, (20, 1, 8, 8)) / 8 - 1).astype(np.float32)
    out = likelihood_eval.nll_metrics(params, "ddpm", test)
    assert out["nll_unit"] == "bits/dim" and out["nll_method"] == "hutchinson"
    assert "17 levels" in out["nll_dequantization"] and out["nll_points"] == 8
    assert np.isfinite(out["nll"]) and out["nll"] > 0 and out["vlb_total"] > 0
    with pytest.raises(ValueError, match="grid of 17 levels.*image.nll_points"):
        likelihood_eval.nll_metrics(params, "ddpm", test.clip(max=0.5) + 0.01)
    with pytest.raises(ValueError, match="must lie in"):
        likelihood_eval.nll_metrics(params, "ddpm", test * 3)


def test_toy_entropy_of_gmm8_is_its_analytic_value():
    """Eight well-separated modes of std 0.15: log 8 + log(2 pi e 0.15^2) up to overlap terms."""
    assert likelihood_eval.toy_entropy("gmm8") == pytest.approx(
        np.log(8) + np.log(2 * np.pi * np.e * 0.15**2), abs=0.01)
    assert likelihood_eval.toy_entropy("moons") is None


# --- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("change, field", [
    ({"process": "vpx"}, "sde.process"),
    ({"sampler": {"name": "leapfrog"}}, "sde.sampler.name"),
    ({"sampler": {"name": "pc", "predictor": "rk4"}}, "sde.sampler.predictor"),
    ({"sampler": {"name": "pc", "corrector": "hmc"}}, "sde.sampler.corrector"),
    ({"sampler": {"name": "pc", "snr": 0}}, "sde.sampler.snr"),
    ({"sampler": {"name": "pc", "eps": 1.5}}, "sde.sampler.eps"),
    ({"sampler": {"name": "pc", "steps": 2000}}, "sde.sampler.steps"),  # a ladder of more rungs than N
    ({"sampler": {"name": "ode", "solver": "rk4"}}, "sde.sampler.solver"),
    ({"sampler": {"name": "ode", "rtol": 0.0}}, "sde.sampler.rtol"),
    ({"sampler": {"name": "ode", "atol": -1e-5}}, "sde.sampler.atol"),
    ({"process": "ve", "sampler": {"name": "ddim"}}, "sde.sampler.name"),
    ({"process": "subvp", "sampler": {"name": "pc", "predictor": "ancestral"}},
     "sde.sampler.predictor"),
    ({"beta_min": 30.0}, "sde.beta_min"),
    ({"sigma_min": 60.0}, "sde.sigma_min"),
    ({"eps": 0.0}, "sde.eps"),
    ({"weighting": "uniform"}, "sde.weighting"),
    ({"likelihood": {"method": "trace"}}, "sde.likelihood.method"),
    ({"likelihood": {"rtol": 0.0}}, "sde.likelihood.rtol"),
    ({"likelihood": {"probes": 0}}, "sde.likelihood.probes"),
])
def test_bad_sde_params_name_the_field(change, field):
    data = tiny_params()
    data["sde"].update(change)
    with pytest.raises(ConfigError) as err:
        parse_params(data)
    assert str(err.value).startswith(field), str(err.value)


def test_cross_framework_sampler_is_checked_in_the_ddpm_section_too():
    data = tiny_params()
    data["ddpm"]["sampler"] = {"name": "ode", "solver": "euler", "rtol": 0.0}
    with pytest.raises(ConfigError, match="^ddpm.sampler.rtol"):
        parse_params(data)


def test_cli_refuses_bad_sde_params_before_any_work(tmp_path, capsys):
    data = tiny_params(train={"frameworks": ["sde"], "out_dir": str(tmp_path / "models")})
    data["data"]["out_dir"] = str(tmp_path / "shards")
    data["sde"]["sampler"] = {"name": "pc", "predictor": "leapfrog"}
    assert main(["train", "--framework", "sde", "--params", str(write_params(tmp_path, data))]) == 2
    assert "sde.sampler.predictor" in capsys.readouterr().err
    assert not Path(tmp_path / "models").exists() and not Path(tmp_path / "shards").exists()
