"""What the params fix about a sample: its seed, its sampler and its clip.

Sample i of `sample.seed = s` is drawn from its own seed, so the sample stage, the
quality-against-NFE sweep and the registry's pyfunc all draw the same sample i, whichever
worker or batch draws it.
"""
from __future__ import annotations

import numpy as np

from diffusion_core.frameworks import DiffusionModel
from diffusion_core.noise import PerSampleNoise
from flows.config.params import Params, as_dict, parse_params
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


def params_with_sampler(params: Params, framework: str, settings: dict,
                        seed: int | None = None) -> Params:
    """params with the framework's sampler (and optionally sample.seed) replaced, validated:
    a bad setting is a ConfigError naming it."""
    data = as_dict(params)
    name, recipe = split_run(framework)
    section = data[name]["recipes"][recipe] if recipe else data[name]  # where the run's sampler is set
    section["sampler"] = dict(settings)
    if seed is not None:
        data["sample"]["seed"] = int(seed)
    return parse_params(data)
