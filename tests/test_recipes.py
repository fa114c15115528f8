"""Named recipes: a run is a framework, or framework-recipe with the recipe's settings laid over
the framework's params section; the recipe is recorded in the model's config and refused with a
message naming the field when it cannot work."""
import pytest

from flows.config.params import ConfigError, load_params, params_with_sampler, parse_params
from flows.config.recipes import recipe_of, split_run
from flows.config.sweep import sweep_points
from flows.stages.train import model_config
from tests.tiny import ROOT, tiny_params

DIGITS = {"kind": "image", "shape": [1, 8, 8]}


def test_the_default_runs_are_each_paper_recipe_and_an_improved_one():
    params = load_params(ROOT / "params.yaml")
    keys = params.train.frameworks
    assert {split_run(k)[0] for k in keys} == {"ddpm", "ncsn", "sde"}
    assert {k for k in keys if recipe_of(k) == "paper"} == {"ddpm-paper", "ncsn-paper", "sde-paper"}
    assert any(recipe_of(k) != "paper" for k in keys)


def test_each_paper_recipe_is_its_paper():
    params = load_params(ROOT / "params.yaml")
    ddpm = model_config(params, "ddpm-paper", DIGITS)
    assert ddpm["framework"] == "ddpm" and ddpm["recipe"] == "paper"
    assert ddpm["parameterization"] == "eps" and ddpm["loss"]["kind"] == "ddpm"  # L_simple, t ~ U{1..N}
    assert ddpm["process"] == {"kind": "vp", "beta_min": 0.1, "beta_max": 20.0, "N": 1000,
                               "schedule": "linear"}  # beta = linspace(1e-4, 0.02, 1000)
    ncsn = model_config(params, "ncsn-paper", DIGITS)
    assert ncsn["process"]["kind"] == "ve" and ncsn["loss"] == {"kind": "ncsn"}
    assert ncsn["parameterization"] == "eps"  # NCSNv2's s = -F / sigma
    sde = model_config(params, "sde-paper", DIGITS)
    assert sde["loss"]["weighting"] == "sigma2" and not sde["loss"]["importance"]
    assert params.framework("ncsn-paper").sampler["name"] == "annealed_langevin"
    for key in ("ddpm-paper", "ncsn-paper", "sde-paper"):
        assert params.training(key, "image").optimizer.lr_schedule == "constant"
    assert ddpm["conditioning"] == "ddpm" and ddpm["network"]["embedding"] == "positional"  # x_t, t
    assert ncsn["conditioning"] == "ncsnv2" and ncsn["process"]["N"] == 24  # NCSNv2's technique 2
    assert params.training("ncsn-paper", "image").optimizer.grad_clip is None
    edm = model_config(params, "ddpm-edm", DIGITS)
    assert edm["recipe"] == "edm" and edm["parameterization"] == "edm" and edm["loss"]["kind"] == "lognormal"
    assert params.framework("ddpm-edm").sampler["name"] == "heun"


def test_a_framework_alone_is_its_section_as_written():
    params = parse_params(tiny_params())
    config = model_config(params, "ddpm", DIGITS)
    assert config["recipe"] == "custom" and config["framework"] == "ddpm"
    assert params.framework("ddpm") is params.ddpm


@pytest.mark.parametrize("change, field", [
    ({"train": {"frameworks": ["ddpm-fancy"]}}, "train.frameworks"),
    ({"train": {"frameworks": ["gan-paper"]}}, "train.frameworks"),
    ({"train": {"frameworks": ["ddpm-paper", "ddpm-paper"]}}, "train.frameworks"),
    ({"ddpm": {"recipes": {"paper": {"parameterization": "v"}}}}, "ddpm.recipes.paper.parameterization"),
    ({"ddpm": {"recipes": {"paper": {"sampler": {"name": "annealed_langevin"}}}}}, "ddpm.recipes.paper.sampler.name"),
    ({"ncsn": {"recipes": {"paper": {"sampler": {"name": "ddim"}}}}}, "ncsn.recipes.paper.sampler.name"),
    ({"sde": {"recipes": {"paper": {"likelihood": {"probes": 2}}}}}, "sde.recipes.paper.likelihood"),
    ({"sde": {"recipes": {"Paper-2": {}}}}, "sde.recipes"),
    ({"ddpm": {"lr_schedule": "linear"}}, "ddpm.lr_schedule"),
    ({"ddpm": {"sampler": {"name": "annealed_langevin"}}}, "ddpm.sampler.name"),
])
def test_a_recipe_or_run_that_cannot_work_is_refused_naming_the_field(change, field):
    data = tiny_params()
    for section, values in change.items():
        data[section] = {**data[section], **values}
    with pytest.raises(ConfigError, match=f"^{field}"):
        parse_params(data)


def test_a_recipe_runs_sampler_can_be_swapped_for_a_sweep():
    params = load_params(ROOT / "params.yaml")
    swapped = params_with_sampler(params, "ddpm-edm", {"name": "ddim", "steps": 10}, seed=7)
    assert swapped.framework("ddpm-edm").sampler == {"name": "ddim", "steps": 10}
    assert swapped.framework("ddpm-paper").sampler == params.framework("ddpm-paper").sampler
    assert swapped.sample.seed == 7


def test_a_sweep_entry_for_a_framework_serves_its_recipes():
    sweep = [{"name": "heun", "steps": [9], "frameworks": ["ddpm"]},
             {"name": "ddim", "steps": [5], "frameworks": ["ddpm-edm"]}]
    assert [p["name"] for p in sweep_points(sweep, "ddpm-paper", "vp")] == ["heun"]
    assert [p["name"] for p in sweep_points(sweep, "ddpm-edm", "vp")] == ["heun", "ddim"]
    assert sweep_points(sweep, "sde-paper", "vp") == []
