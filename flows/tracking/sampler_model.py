"""The registered pyfunc, logged as code (MLflow's models from code): this file is copied into
the model and run when it is loaded, so loading a registry version unpickles nothing. Its
weights are a state dict read with `weights_only`, mapped to the CPU.

``predict(None, params={"num_samples", "seed", "sampler", "steps"})`` draws samples with the
sample stage's seed scheme and sampler code: sample i of seed s is the pipeline's sample i of
``sample.seed = s``. A model whose framework, network or data shape differs from the one the
version was registered with is refused, naming what differs.
"""
from __future__ import annotations

import json
from pathlib import Path

import mlflow

from diffusion_core.frameworks import DiffusionModel
from diffusion_core.samplers.registry import SAMPLER_SETTINGS
from flows.config.params import Params, parse_params
from flows.config.recipes import split_run
from flows.config.sampling import draw_samples, params_with_sampler, sample_seeds


def check_fits(spec: dict, config: dict) -> None:
    """The model's config must be what the version was registered with: ValueError naming what
    differs (framework, network, data shape)."""
    expected = {"framework": split_run(spec["framework"])[0], "network": spec.get("network"),
                "data shape": list(spec["shape"])}
    found = {"framework": config.get("framework"), "network": config.get("network"),
             "data shape": config.get("data_shape")}
    for what, value in expected.items():
        if value is not None and found[what] != value:
            raise ValueError(f"the model's {what} is {found[what]!r}, but this version was "
                             f"registered for {value!r}: refusing to load it")


class SamplerModel(mlflow.pyfunc.PythonModel):
    """pyfunc flavour of a trained framework: predict draws samples."""

    # predict takes no input data (params say what to draw): MLflow's type-hint validation
    # has nothing to check, so it is switched off rather than warned about
    _skip_type_hint_validation = True

    def load_context(self, context):
        self.spec = json.loads(Path(context.artifacts["spec"]).read_text())
        model_dir = Path(context.artifacts["model_dir"])
        check_fits(self.spec, json.loads((model_dir / "model.json").read_text()))
        self.model = DiffusionModel.load(model_dir)

    def predict(self, context, model_input, params=None):
        spec, p = self.spec, {**self.spec["defaults"], **(params or {})}
        for key in ("num_samples", "steps"):
            if isinstance(p[key], bool) or not isinstance(p[key], int) or p[key] < 1:
                raise ValueError(f"{key} must be a positive integer, got {p[key]!r}")
        run_params = _with_sampler(spec, p["sampler"], p["steps"], p["seed"])
        seeds = sample_seeds(run_params, 0, p["num_samples"])
        x, _ = draw_samples(run_params, spec["framework"], self.model, seeds, spec["kind"],
                            tuple(spec["shape"]))
        return x


def _with_sampler(spec: dict, sampler: str, steps: int, seed: int) -> Params:
    """The stored params with sample.seed and the framework's sampler replaced: the stored
    settings when the sampler is the trained default, else the named sampler's defaults;
    ``steps`` applies to samplers that take steps."""
    settings = dict(spec["sampler"]) if sampler == spec["sampler"]["name"] else {"name": sampler}
    if "steps" in SAMPLER_SETTINGS.get(sampler, {}):
        settings["steps"] = int(steps)
    return params_with_sampler(parse_params(spec["params"]), spec["framework"], settings, seed)


mlflow.models.set_model(SamplerModel())
