"""The samplers a `DiffusionModel` can be drawn with, by name.

Each entry adapts one sampler function of the core to the model: it receives the model, x_T
drawn from the model's prior, the sampler's settings (a dict from params), the noise source,
the clip bound and a progress callback, and returns (samples, NFE). `SAMPLER_SETTINGS` lists
each sampler's settings with their defaults; an unknown setting is an error, so a typo in
params.yaml never falls back to a default silently.
"""
from __future__ import annotations

from . import langevin, ncsn, samplers


SAMPLER_SETTINGS = {
    "ancestral": {},
    "ddim": {"steps": 50, "eta": 0.0, "spacing": "uniform"},
    "heun": {"steps": 35, "rho": 7.0},
    "annealed_langevin": {"steps_per_sigma": 5, "eps": 2e-5, "denoise": True},
    "langevin": {"steps": 1000, "step_size": 2e-5, "denoise": True},
}


def _check_langevin(settings: dict) -> None:
    for key in ("eps", "step_size"):
        if key in settings and not settings[key] > 0:
            raise ValueError(f"{key}: the Langevin step size must be positive, got {settings[key]}")


# Checks of a sampler's setting values beyond their types; each raises "key: message".
SAMPLER_CHECKS = {"annealed_langevin": _check_langevin, "langevin": _check_langevin}


def _same_kind(value, default) -> bool:
    if isinstance(value, bool) or isinstance(default, bool):
        return type(value) is type(default)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def resolve_settings(settings: dict) -> dict:
    """settings with the sampler's defaults filled in; unknown names or keys are a ValueError
    whose message starts with the offending key."""
    name = settings.get("name")
    if name not in SAMPLER_SETTINGS:
        raise ValueError(f"name: must be one of {sorted(SAMPLER_SETTINGS)}, got {name!r}")
    defaults = SAMPLER_SETTINGS[name]
    for key, value in settings.items():
        if key != "name" and key not in defaults:
            raise ValueError(f"{key}: not a setting of {name}; known: {sorted(defaults)}")
        if key in defaults and not _same_kind(value, defaults[key]):
            raise ValueError(f"{key}: expected {type(defaults[key]).__name__}, got {value!r}")
    resolved = {**defaults, **settings}
    if name in SAMPLER_CHECKS:
        SAMPLER_CHECKS[name](resolved)
    return resolved


def _ancestral(model, x, settings, noise, clip, progress):
    return samplers.ddpm_ancestral(model.denoiser, model.chain, x, noise, clip, progress)


def _ddim(model, x, settings, noise, clip, progress):
    return samplers.ddim(model.denoiser, model.chain, x, settings["steps"], settings["eta"],
                         noise, clip, progress, settings["spacing"])


def _heun(model, x, settings, noise, clip, progress):
    """Heun on the PF-ODE over Karras-spaced noise levels of the model's VP chain."""
    chain = model.chain
    s_min, s_max = (float(chain.noise_level(i)) for i in (0, chain.N - 1))
    sigmas = samplers.karras_sigmas(s_min, s_max, (settings["steps"] + 1) // 2, settings["rho"])
    x = x * (1 + s_max**2) ** 0.5  # x_T / alpha_T: the rescaled space of the ODE
    return samplers.heun_pf_ode(model.denoiser, x, sigmas, progress)


def _annealed_langevin(model, x, settings, noise, clip, progress):
    """Annealed Langevin dynamics over the model's noise ladder (Song & Ermon, 2019, alg. 1):
    steps_per_sigma steps of size eps sigma_i^2 / sigma_L^2 per level, then, with `denoise`,
    one Tweedie step x + sigma_L^2 s(x, sigma_L)."""
    return langevin.annealed_langevin_dynamics(
        ncsn.score_fn(model.denoiser), x, ncsn.noise_ladder(model.process), settings["eps"],
        settings["steps_per_sigma"], noise, final_denoise=settings["denoise"], progress=progress)


def _langevin(model, x, settings, noise, clip, progress):
    """Plain Langevin dynamics (Song & Ermon, 2019, eq. 4) at the smallest noise level sigma_L
    of the ladder, then, with `denoise`, one Tweedie step."""
    return langevin.langevin_dynamics(
        ncsn.score_fn(model.denoiser), x, settings["step_size"], settings["steps"],
        float(ncsn.noise_ladder(model.process)[-1]), noise, progress=progress,
        final_denoise=settings["denoise"])


SAMPLERS = {"ancestral": _ancestral, "ddim": _ddim, "heun": _heun,
            "annealed_langevin": _annealed_langevin, "langevin": _langevin}


def draw(model, x, settings: dict, noise, clip=None, progress=None):
    """Run the sampler `settings["name"]` from x_T; returns (samples, NFE). `clip` bounds the
    x0 predictions of the samplers that form one (DDPM's and DDIM's) and the final samples."""
    settings = resolve_settings(settings)
    return SAMPLERS[settings["name"]](model, x, settings, noise, clip, progress)
