"""`ncsn` as a framework of the pipeline: the model's ladder, score, energy and objectives
checked against independent computations, its samplers against the exact score of a
two-mode mixture, bad params stopped before any work, and tiny real runs (Ray Train with 2
workers, MLflow) of a score and an energy model."""
import json

import numpy as np
import pytest
import torch

from diffusion_core.frameworks import DiffusionModel
from diffusion_core.models.analytic import two_mode_mixture
from diffusion_core.models.denoiser import score_of_noise_level
from diffusion_core.models.energy import EnergyDenoiser
from diffusion_core.noise import PerSampleNoise
from diffusion_core.objectives import ncsn
from diffusion_core.objectives.score_matching import geometric_sigmas
from diffusion_core.processes.sde import noise_ladder
from diffusion_core.samplers.langevin import annealed_langevin_dynamics
from flows.config.params import ConfigError, parse_params
from flows.entry.cli import main
from flows.stages import data as stages
from flows.stages import evaluate
from flows.stages import sample as sample_stage
from flows.stages import train as train_stage
from flows.tracking import runs as tracking
from tests.tiny import in_workspace, tiny_params, write_params

F64 = torch.float64


def _model(dim=2, **ncsn_params) -> DiffusionModel:
    params = parse_params(tiny_params(ncsn=ncsn_params))
    torch.manual_seed(0)
    return DiffusionModel(train_stage.model_config(params, "ncsn", {"kind": "vector", "shape": [dim]}))


# --- the model: ladder, score, energy ---------------------------------------------------------
def test_ladder_is_the_ve_discretization_read_from_the_top():
    model = _model(sigma_min=0.02, sigma_max=5.0, num_scales=7)
    assert model.config["process"] == {"kind": "ve", "sigma_min": 0.02, "sigma_max": 5.0, "N": 7}
    assert torch.allclose(noise_ladder(model.process), geometric_sigmas(5.0, 0.02, 7))


def test_eps_parameterization_is_ncsnv2_output_scaling():
    """s(x, sigma) = -F(c_in x, log(sigma) / 4) / sigma: the raw output scaled by 1/sigma."""
    model = _model(parameterization="eps")
    x, sigma = torch.randn(16, 2), torch.rand(16) * 3 + 0.01
    c_in = (sigma**2 + model.config["sigma_data"] ** 2).rsqrt()
    raw = model.denoiser.net(c_in[:, None] * x, torch.log(sigma) / 4)
    assert torch.allclose(score_of_noise_level(model.denoiser)(x, sigma), -raw / sigma[:, None], atol=1e-6)


@pytest.mark.parametrize("parameterization", ["x0", "eps", "edm"])
def test_energy_score_is_minus_grad_of_its_energy(parameterization):
    """E(x~, s) = |x~ - D(x~, s)|^2 / (2 s^2) written out from the raw network; its gradient by
    central differences (float64) against the model's score, at alpha != 1 as well."""
    model = _model(model="energy", parameterization=parameterization)
    model.denoiser.double()
    net, sigma_data = model.denoiser.net, model.config["sigma_data"]

    def energy(x, alpha, sigma):  # E(x / alpha, sigma / alpha), from the raw output
        s = sigma / alpha
        x_t = x / alpha
        total = s**2 + sigma_data**2
        out = net(x_t * total.rsqrt(), torch.log(s[:, 0]) / 4)
        x0 = {"x0": out, "eps": x_t - s * out,
              "edm": sigma_data**2 / total * x_t + s * sigma_data * total.rsqrt() * out}[parameterization]
        return 0.5 * ((x_t - x0) ** 2).sum(1) / s[:, 0] ** 2

    x = torch.randn(8, 2, dtype=F64)
    alpha, sigma = torch.full((8,), 0.8, dtype=F64), torch.linspace(0.05, 3.0, 8, dtype=F64)
    h, grad = 1e-6, torch.zeros_like(x)
    for i in range(2):
        step = torch.zeros_like(x)
        step[:, i] = h
        grad[:, i] = (energy(x + step, alpha[:, None], sigma[:, None])
                      - energy(x - step, alpha[:, None], sigma[:, None])) / (2 * h)
    with torch.no_grad():
        score = model.denoiser.score(x, alpha, sigma)
        pred = model.denoiser(x, alpha, sigma)
    assert torch.allclose(score, -grad, rtol=1e-5, atol=1e-6)
    s = (sigma / alpha)[:, None]
    assert torch.allclose(pred.x0, x / alpha[:, None] - s * pred.eps)
    assert isinstance(model.denoiser, EnergyDenoiser) and not score.requires_grad


def test_energy_model_trains_every_parameter_and_samples_without_any():
    model = _model(model="energy", num_scales=10)
    loss = model.loss(torch.randn(64, 2), torch.Generator().manual_seed(0)).mean()
    loss.backward()
    params = list(model.denoiser.net.parameters())
    assert all(p.grad is not None for p in params) and any(p.grad.abs().sum() > 0 for p in params)
    model.denoiser.zero_grad(set_to_none=True)
    x, nfe = model.sample(32, (2,), {"name": "annealed_langevin", "steps_per_sigma": 2},
                          torch.Generator().manual_seed(1))
    assert torch.isfinite(x).all() and not x.requires_grad and nfe == 2 * 10 + 1
    assert all(p.grad is None for p in params)


# --- the objectives ---------------------------------------------------------------------------
def test_dsm_objective_is_sigma2_weighted_dsm_per_dimension():
    """Replays the objective's draws (level labels, then z) and writes the loss out by hand:
    sigma^2 / 2 |s(x + sigma z, sigma) + z / sigma|^2 / d."""
    model = _model(num_scales=10, sigma_max=10.0, sigma_min=0.01)
    x = torch.randn(256, 2)
    loss = model.loss(x, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    sigma = geometric_sigmas(10.0, 0.01, 10)[torch.randint(0, 10, (256,), generator=g)].float()
    z = torch.randn(x.shape, generator=g)
    score = score_of_noise_level(model.denoiser)(x + sigma[:, None] * z, sigma)
    by_hand = sigma**2 * 0.5 * ((score + z / sigma[:, None]) ** 2).sum(1) / 2
    assert torch.allclose(loss, by_hand, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["score", "energy"])
def test_sliced_objective_averages_to_the_exact_one(kind):
    """Both objectives draw the same levels and perturbations first (same seed), so per row
    ssm - exact has mean 0 over the projections: |mean| < 4 standard errors."""
    model = _model(model=kind, num_scales=10, objective="ssm")
    model.denoiser.double()
    x = torch.randn(4000, 2, dtype=F64)
    exact = ncsn.exact_objective(model, model.denoiser, x, torch.Generator().manual_seed(5))
    ssm = model.loss(x, torch.Generator().manual_seed(5))
    diff = (ssm - exact).detach()
    assert abs(diff.mean().item()) < 4 * diff.std().item() / len(diff) ** 0.5
    assert diff.std() > 0  # the projections did differ from the trace


# --- the samplers through the model -----------------------------------------------------------
def _analytic_model(sigma_max=20.0, sigma_min=1.0, num_scales=10) -> DiffusionModel:
    """An ncsn model whose denoiser is the exact one of 0.8 N((5,5), I) + 0.2 N((-5,-5), I)."""
    model = _model(sigma_max=sigma_max, sigma_min=sigma_min, num_scales=num_scales)
    model.denoiser = two_mode_mixture()
    return model


def test_annealed_langevin_through_the_model_recovers_the_weights_plain_does_not():
    """Song & Ermon (2019), fig. 3, through the pipeline's sampler adapters and the model's
    prior N(0, sigma_max^2 I): annealing over sigma = 20 -> 1 finds the 0.8 / 0.2 weights within
    0.05; plain Langevin at sigma_L leaves each point in its starting basin (about half each)."""
    model, mix = _analytic_model(), two_mode_mixture()
    annealed = {"name": "annealed_langevin", "steps_per_sigma": 200, "eps": 0.1}
    x, nfe = model.sample(3000, (2,), annealed, torch.Generator().manual_seed(8))
    x_plain, nfe_plain = model.sample(3000, (2,), {"name": "langevin", "steps": 1000, "step_size": 0.1},
                                      torch.Generator().manual_seed(8))
    weight, plain = mix.component_fractions(x)[0].item(), mix.component_fractions(x_plain)[0].item()
    print(f"\nweight of (5,5): annealed {weight:.3f} (NFE {nfe}), plain {plain:.3f} (NFE {nfe_plain})")
    assert abs(weight - 0.8) < 0.05 and abs(plain - 0.8) > 0.2
    assert nfe == 10 * 200 + 1 and nfe_plain == 1000 + 1


def test_sampler_takes_per_sample_noise_explicitly():
    """model.sample with per-sample seeds equals annealed_langevin_dynamics fed the same draws
    as one explicit noise tensor: the prior, then one draw per step."""
    model = _analytic_model(num_scales=4)
    settings = {"name": "annealed_langevin", "steps_per_sigma": 3, "eps": 0.05}
    x, nfe = model.sample(5, (2,), settings, PerSampleNoise(range(5)))
    source = PerSampleNoise(range(5))
    prior = source.normal((5, 2)) * 20.0
    noise = torch.stack([source.normal((5, 2)) for _ in range(12)])
    ref, ref_nfe = annealed_langevin_dynamics(score_of_noise_level(model.denoiser), prior,
                                              geometric_sigmas(20.0, 1.0, 4), 0.05, 3, noise=noise)
    assert nfe == ref_nfe == 13 and torch.allclose(x, ref, atol=1e-5)


# --- bad input: named, before any work --------------------------------------------------------
@pytest.mark.parametrize("change, field", [
    ({"sigma_min": 0.0}, "ncsn.sigma_min"),
    ({"sigma_min": -0.1}, "ncsn.sigma_min"),
    ({"sigma_max": 0.005}, "ncsn.sigma_max"),
    ({"sigma_max": 0.01}, "ncsn.sigma_max"),
    ({"num_scales": 1}, "ncsn.num_scales"),
    ({"model": "flow"}, "ncsn.model"),
    ({"objective": "mle"}, "ncsn.objective"),
    ({"sampler": {"name": "annealed_langevin", "eps": 0.0}}, "ncsn.sampler.eps"),
    ({"sampler": {"name": "annealed_langevin", "eps": -1e-5}}, "ncsn.sampler.eps"),
    ({"sampler": {"name": "langevin", "step_size": -0.1}}, "ncsn.sampler.step_size"),
    ({"sampler": {"name": "annealed_langevin", "steps_per_sigma": 0}}, "ncsn.sampler.steps_per_sigma"),
    ({"sampler": {"name": "ddim"}}, "ncsn.sampler.name"),
])
def test_bad_ncsn_params_name_the_field(change, field):
    data = tiny_params()
    data["ncsn"].update(change)
    with pytest.raises(ConfigError) as err:
        parse_params(data)
    assert str(err.value).startswith(field)


@pytest.mark.parametrize("meta", [{"kind": "vector", "shape": [65]},
                                  {"kind": "image", "shape": [1, 16, 16]}])
def test_exact_score_matching_refuses_more_than_64_dims(meta):
    params = parse_params(tiny_params(ncsn={"objective": "exact"}))
    with pytest.raises(ConfigError, match=r"^ncsn\.objective: .*at most 64 dims"):
        train_stage.model_config(params, "ncsn", meta)
    train_stage.model_config(params, "ncsn", {"kind": "image", "shape": [1, 8, 8]})  # digits: allowed


def test_cli_train_with_exact_on_65_dims_exits_2_before_any_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr("flows.stages.train.fit", lambda *a, **k: pytest.fail("training started"))
    np.savez(tmp_path / "wide.npz", x=np.random.default_rng(0).uniform(-1, 1, (600, 65)))
    data = tiny_params(source=f"npz:{tmp_path / 'wide.npz'}", ncsn={"objective": "exact"},
                       train={"frameworks": ["ncsn"]}, data={"test_size": 100, "val_size": 100})
    path = write_params(tmp_path, data)
    assert main(["prepare", "--params", str(path)]) == 0
    assert main(["train", "--framework", "ncsn", "--params", str(path)]) == 2
    assert "ncsn.objective" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "models").exists()


# --- tiny real runs ---------------------------------------------------------------------------
def _tiny_ncsn(tag: str, **ncsn_params) -> dict:
    data = tiny_params(ncsn={"num_scales": 10, "sigma_max": 5.0, "sigma_min": 0.05, **ncsn_params,
                             "sampler": {"name": "annealed_langevin", "steps_per_sigma": 2,
                                         "eps": 5e-4}},
                       train={"frameworks": ["ncsn"], "out_dir": f"models-{tag}"},
                       sample={"out_dir": f"samples-{tag}"}, evaluate={"out_dir": f"metrics-{tag}"})
    if "nfe_sweep" in data["evaluate"]:
        data["evaluate"]["nfe_sweep"] = []  # the sweep's samplers walk DDPM's chain
    return data


def _run_stages(params) -> tuple[dict, dict]:
    """Train (Ray Train, 2 workers), sample and evaluate: the training summary and the metrics."""
    summary = train_stage.train(params, "ncsn")
    sample_stage.sample(params, "ncsn")
    return summary, evaluate.evaluate(params, "ncsn")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A score model and an energy model (sliced score matching) through the stages, each on the
    tiny checkerboard with 2 Ray workers (the Prefect flow that chains the same stages is
    tests/test_orchestration.py's)."""
    root = tmp_path_factory.mktemp("ncsn")
    with in_workspace(root):
        score_params = parse_params(_tiny_ncsn("score"))
        stages.prepare(score_params)
        _, score = _run_stages(score_params)
        summary, energy = _run_stages(parse_params(_tiny_ncsn("energy", model="energy", objective="ssm")))
        yield root, {"score": score, "energy": energy}, summary


@pytest.mark.slow  # Ray Train, Ray sampling and evaluation
@pytest.mark.parametrize("tag", ["score", "energy"])
def test_tiny_runs_train_sample_evaluate_and_track(runs, tag):
    root, results, _ = runs
    result = results[tag]
    assert result["framework"] == "ncsn" and result["sampler"] == "annealed_langevin"
    assert result["nfe"] == 10 * 2 + 1
    assert np.isfinite(result["swd"]) and 0 <= result["off_support"] <= 1
    config = json.loads((root / f"models-{tag}/ncsn/model.json").read_text())
    assert config["model_kind"] == tag and config["process"]["kind"] == "ve"
    assert config["loss"]["kind"] == {"score": "ncsn", "energy": "ncsn_ssm"}[tag]
    x = np.load(root / f"samples-{tag}/ncsn/samples.npz")["x"]
    assert x.shape == (500, 2) and np.isfinite(x).all()
    client = tracking.client()
    run = client.get_run(tracking.load_run_id(root / f"models-{tag}/ncsn"))
    assert run.data.tags["framework"] == "ncsn" and run.data.params["ncsn.model"] == tag
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert len(losses) == 60 // 20 and all(np.isfinite(m.value) for m in losses)
    assert run.data.metrics["eval_nfe"] == 21 and "eval_swd_floor" in run.data.metrics


@pytest.mark.slow  # Ray Train
def test_energy_model_trained_on_two_ddp_workers(runs):
    _, _, summary = runs
    assert summary["world_size"] == 2 and summary["steps"] == 60
