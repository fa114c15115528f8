"""Adding a sampler is one `SamplerSpec` in one place: a toy sampler registered from this test
module, without touching the library, is accepted by the CLI's params validation and drawn by
the core; the registry is as before once the fixture unregisters it."""
from __future__ import annotations

import pytest
import torch

from diffusion_core.frameworks import DiffusionModel
from diffusion_core.samplers import registry
from diffusion_core.samplers.registry import SamplerSpec
from flows.config.params import ConfigError, parse_params
from tests.tiny import tiny_params

VP_CONFIG = {"framework": "ddpm", "process": {"kind": "vp", "N": 100}, "parameterization": "edm",
             "sigma_data": 0.5, "loss": {"kind": "ddpm"},
             "network": {"kind": "mlp", "dim": 2, "width": 16, "depth": 1, "emb_dim": 8},
             "data_shape": [2]}


def _scaled_prior(model, x, settings, noise, clip, progress):
    """The toy: x_T times `scale`, without a network evaluation."""
    return x * settings["scale"], 0


def _check_scale(settings: dict) -> None:
    if not settings["scale"] > 0:
        raise ValueError(f"scale: must be positive, got {settings['scale']}")


TOY = SamplerSpec("toy_scaled_prior", {"scale": 0.5}, ("vp", "ve"), _scaled_prior, _check_scale)


@pytest.fixture
def toy():
    """TOY registered for one test; afterwards the registry holds what it held before."""
    before = dict(registry.SAMPLERS)
    registry.register(TOY)
    yield TOY
    registry.unregister(TOY.name)
    assert registry.SAMPLERS == before


def _with_samplers(**samplers) -> dict:
    data = tiny_params()
    for section, settings in samplers.items():
        data[section]["sampler"] = settings
    return data


def _refused_field(data: dict) -> str:
    with pytest.raises(ConfigError) as err:
        parse_params(data)
    return str(err.value).split(":", 1)[0]


def test_params_validation_accepts_a_registered_sampler(toy):
    params = parse_params(_with_samplers(ddpm={"name": toy.name}, ncsn={"name": toy.name, "scale": 2.0}))
    assert params.ddpm.sampler == {"name": toy.name} and params.train.frameworks == ["ddpm"]
    assert params.ncsn.sampler == {"name": toy.name, "scale": 2.0}
    assert registry.samplers_for("vp")[-1] == toy.name and not registry.fits_process(toy.name, "subvp")


@pytest.mark.parametrize("settings, process, field", [
    ({"scale": -1.0}, "vp", "sde.sampler.scale"),  # the spec's check
    ({"steps": 5}, "vp", "sde.sampler.steps"),  # not one of the spec's settings
    ({"scale": "big"}, "vp", "sde.sampler.scale"),  # not of its default's type
    ({}, "subvp", "sde.sampler.name"),  # not one of the spec's processes
])
def test_params_validation_asks_the_spec(toy, settings, process, field):
    data = _with_samplers(sde={"name": toy.name, **settings})
    data["sde"]["process"] = process
    assert _refused_field(data) == field


def test_the_core_draws_with_a_registered_sampler(toy):
    torch.manual_seed(0)
    model = DiffusionModel(VP_CONFIG)
    x, nfe = model.sample(4, (2,), {"name": toy.name}, torch.Generator().manual_seed(3))
    x_T = model.process.prior_sampling((4, 2), torch.Generator().manual_seed(3))
    assert nfe == 0 and torch.equal(x, x_T * 0.5)  # the spec's default scale, filled in
    with pytest.raises(ValueError, match="^scale: must be positive"):
        model.sample(4, (2,), {"name": toy.name, "scale": 0.0})


def test_a_name_is_registered_once(toy):
    with pytest.raises(ValueError, match="^name: a sampler 'toy_scaled_prior' is registered already"):
        registry.register(TOY)


def test_without_the_fixture_the_toy_is_unknown():
    assert TOY.name not in registry.SAMPLERS
    assert _refused_field(_with_samplers(ddpm={"name": TOY.name})) == "ddpm.sampler.name"
