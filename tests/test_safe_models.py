"""Nothing from a registry or a checkpoint runs pickled code: the registered pyfunc is logged as
code with weights read as a state dict (weights_only, mapped to the CPU), and a model whose
framework, network or data shape differs from what was registered is refused, naming it."""
import json

import pytest
import torch
import yaml

from diffusion_core.frameworks import DiffusionModel
from flows.config.params import parse_params
from flows.stages import data as stages
from flows.stages import train as train_stage
from flows.tracking import registry
from flows.tracking import runs as tracking
from flows.tracking.sampler_model import check_fits
from tests.tiny import fd_record, in_workspace, tiny_params

DIGITS = {"kind": "image", "shape": [1, 8, 8]}


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    root = tmp_path_factory.mktemp("safe")
    with in_workspace(root):
        params = parse_params(tiny_params("digits"))
        stages.prepare(params)
        model_dir = root / "models" / "ddpm"
        DiffusionModel(train_stage.model_config(params, "ddpm", DIGITS)).save(model_dir)
        tracking.save_run_id(model_dir, tracking.start_run("digits", "ddpm", {}, {}), "digits")
        (root / "metrics").mkdir()
        (root / "metrics" / "ddpm.json").write_text(json.dumps(fd_record(2.5)))
        registry.register(params, "ddpm")
        yield root, params


def test_the_registered_model_is_code_and_weights_not_a_pickle(registered):
    version = tracking.client().get_model_version_by_alias("digits-ddpm", "champion")
    import mlflow

    # the logged model's own stored files (a models:/ download adds registered_model_meta to them)
    uri = tracking.client().get_model_version_download_uri("digits-ddpm", version.version)
    local = mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=tracking.tracking_uri())
    flavor = yaml.safe_load(open(f"{local}/MLmodel"))["flavors"]["python_function"]
    assert flavor.get("model_code_path", "").endswith("sampler_model.py")
    assert "python_model" not in flavor  # no cloudpickled object to load
    from pathlib import Path

    assert not [p for p in Path(local).rglob("*.pkl")]
    assert registry.load_sampler("digits-ddpm").predict(None, params={"num_samples": 2}).shape == (2, 1, 8, 8)


def test_a_model_that_is_not_the_registered_one_is_refused():
    spec = {"framework": "ddpm-paper", "shape": [1, 8, 8], "network": {"kind": "unet", "base": 16}}
    config = {"framework": "ddpm", "data_shape": [1, 8, 8], "network": {"kind": "unet", "base": 16}}
    check_fits(spec, config)
    with pytest.raises(ValueError, match="framework is 'ncsn'"):
        check_fits(spec, {**config, "framework": "ncsn"})
    with pytest.raises(ValueError, match="network is"):
        check_fits(spec, {**config, "network": {"kind": "unet", "base": 32}})
    with pytest.raises(ValueError, match="data shape is"):
        check_fits(spec, {**config, "data_shape": [3, 8, 8]})


def test_weights_of_another_network_are_refused_naming_it(tmp_path):
    params = parse_params(tiny_params("digits"))
    small = train_stage.model_config(params, "ddpm", DIGITS)
    DiffusionModel(small).save(tmp_path / "model")
    wide = {**small, "network": {**small["network"], "base": 32}}
    (tmp_path / "model" / "model.json").write_text(json.dumps(wide))
    with pytest.raises(ValueError, match="does not fit the network"):
        DiffusionModel.load(tmp_path / "model")


def test_weights_saved_on_another_device_load_on_the_cpu(tmp_path, monkeypatch):
    """torch.load is always given map_location="cpu": a state dict saved from a GPU loads on a
    CPU-only node. Simulated by checking the call."""
    params = parse_params(tiny_params("digits"))
    DiffusionModel(train_stage.model_config(params, "ddpm", DIGITS)).save(tmp_path / "model")
    seen = {}
    real = torch.load

    def recording(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording)
    DiffusionModel.load(tmp_path / "model")
    assert seen == {"map_location": "cpu", "weights_only": True}
