"""How a sample is drawn, and a registered version's sampler.

Sample i of `sample.seed = s` is drawn from its own seed (`sample_seeds`) by `draw_samples`, so
the sample stage's actors, the quality-against-NFE sweep and a registered version all draw the
same sample i, whichever worker or batch draws it. The draw sits here, in the lowest layer that
runs models (tracking, below distributed and stages), so that all three import it downwards.

`RegisteredSampler` is a registered version's sampler, built from its files by the installed code: ``spec.json`` (the
params and sampling spec it was registered with), ``model.json`` and ``weights.pt`` (a state dict
read with ``weights_only``, mapped to the CPU). Nothing stored beside them is imported or run.

``predict(None, params={"num_samples", "seed", "sampler", "steps"})`` draws samples with the
sample stage's seed scheme and sampler code: sample i of seed s is the pipeline's sample i of
``sample.seed = s``. A model whose framework, network or data shape differs from the one the
version was registered with is refused, naming what differs.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from diffusion_core.frameworks import DiffusionModel
from diffusion_core.noise import PerSampleNoise
from diffusion_core.samplers.registry import SAMPLERS
from flows.config.params import Params, params_with_sampler, parse_params
from flows.config.recipes import split_run


def sample_seeds(params: Params, first: int, count: int) -> list[int]:
    """The seeds of samples first .. first+count-1: sample i is fixed by (sample.seed, i) alone."""
    return [params.sample.seed * 1_000_000_007 + i for i in range(first, first + count)]


def draw_samples(params: Params, framework: str, model: DiffusionModel, seeds: list[int],
                 kind: str, shape: tuple) -> tuple[np.ndarray, int]:
    """Samples for `seeds` with the framework's sampler (float32; images clipped to [-1, 1])."""
    profile = params.profile(kind)
    clip = profile.clip if kind == "image" else None
    settings = params.framework(framework).sampler
    x, nfe = model.sample(len(seeds), shape, settings, PerSampleNoise(seeds), clip)
    return (x.clamp(-1, 1) if kind == "image" else x).numpy().astype(np.float32), nfe


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


class RegisteredSampler:
    """A trained framework whose predict draws samples (the pyfunc's predict, without MLflow)."""

    def __init__(self, spec: dict, model: DiffusionModel):
        self.spec, self.model = spec, model

    @classmethod
    def from_files(cls, spec_path: Path, model_dir: Path) -> "RegisteredSampler":
        spec = json.loads(Path(spec_path).read_text())
        check_fits(spec, json.loads((Path(model_dir) / "model.json").read_text()))
        return cls(spec, DiffusionModel.load(model_dir))

    def predict(self, model_input=None, params: dict | None = None):
        """float32 samples: N×C×H×W in [-1, 1] for images, N×D for vectors (``model_input`` is
        ignored: the params say what to draw)."""
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
    if sampler in SAMPLERS and "steps" in SAMPLERS[sampler].settings:
        settings["steps"] = int(steps)
    return params_with_sampler(parse_params(spec["params"]), spec["framework"], settings, seed)
