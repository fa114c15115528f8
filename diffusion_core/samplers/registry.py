"""The samplers a `DiffusionModel` can be drawn with: one `SamplerSpec` per sampler, registered once.

A spec holds all the platform knows about a sampler: its settings with their defaults (an unknown
setting is an error, so a typo in params.yaml never falls back to a default silently), the
processes it draws from, the checks of its setting values and of their fit to a process, and the
draw function that adapts one sampler function of the core to the model. Params validation,
`check_fits` and `draw` all read the one table `SAMPLERS`: adding a sampler is one
`register(SamplerSpec(...))`. Every check raises a ValueError whose message starts with the
offending setting ("name", "predictor", "steps", ...).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch

from diffusion_core.models.denoiser import score_of_noise_level, score_of_time
from diffusion_core.processes.build import build_process
from diffusion_core.processes.ddpm_chain import DDPMChain
from diffusion_core.processes.sde import SDE, noise_ladder
from diffusion_core.samplers import ddpm as ddpm_samplers
from diffusion_core.samplers import dpm_solver, edm, langevin
from diffusion_core.samplers import sde as sde_samplers

ALL_PROCESSES = ("vp", "subvp", "ve")  # the reverse SDE and the probability-flow ODE exist for each
COUNTS = ("steps", "steps_per_sigma")  # settings that count steps: at least one


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler, as `params.yaml`'s `sampler.name` names it.

    settings: each setting with its default; the default's type is the setting's type.
    processes: the process kinds it draws from ("vp", "subvp", "ve").
    draw: (model, x_T, resolved settings, noise, clip, progress) -> (samples, NFE).
    check: (resolved settings) -> None; refuses values beyond their types.
    check_process: (resolved settings, built process of a kind it draws from) -> None; refuses
    what that process cannot take (DDIM's steps on the chain, a ladder's rungs).
    """

    name: str
    settings: Mapping[str, object]
    processes: tuple[str, ...]
    draw: Callable
    check: Callable[[dict], None] = lambda settings: None
    check_process: Callable[[dict, SDE], None] = lambda settings, process: None

    def __post_init__(self):
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))
        object.__setattr__(self, "processes", tuple(self.processes))


SAMPLERS: dict[str, SamplerSpec] = {}


def register(spec: SamplerSpec) -> SamplerSpec:
    """Add `spec` to `SAMPLERS`; a name already taken is a ValueError (unregister it first)."""
    if spec.name in SAMPLERS:
        raise ValueError(f"name: a sampler {spec.name!r} is registered already")
    SAMPLERS[spec.name] = spec
    return spec


def unregister(name: str) -> SamplerSpec:
    """Remove the sampler `name` from `SAMPLERS`; returns its spec."""
    return SAMPLERS.pop(name)


def spec_of(name) -> SamplerSpec:
    """The spec registered as `name`; a ValueError starting "name:" for any other."""
    if name not in SAMPLERS:
        raise ValueError(f"name: must be one of {sorted(SAMPLERS)}, got {name!r}")
    return SAMPLERS[name]


def fits_process(sampler: str, process_kind: str) -> bool:
    """Whether the sampler named `sampler` can draw from a model of process `process_kind`."""
    return sampler in SAMPLERS and process_kind in SAMPLERS[sampler].processes


def samplers_for(process_kind: str) -> list[str]:
    """The names of the samplers that draw from a model of process `process_kind`."""
    return [name for name in SAMPLERS if fits_process(name, process_kind)]


def _same_kind(value, default) -> bool:
    if isinstance(value, bool) or isinstance(default, bool):
        return type(value) is type(default)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def resolve_settings(settings: dict) -> dict:
    """settings with the sampler's defaults filled in, checked by its spec; an unknown name or
    key, a value of the wrong type or out of range is a ValueError naming it."""
    spec = spec_of(settings.get("name"))
    for key, value in settings.items():
        if key != "name" and key not in spec.settings:
            raise ValueError(f"{key}: not a setting of {spec.name}; known: {sorted(spec.settings)}")
        if key in spec.settings and not _same_kind(value, spec.settings[key]):
            raise ValueError(f"{key}: expected {type(spec.settings[key]).__name__}, got {value!r}")
    resolved = {**spec.settings, **settings}
    spec.check(resolved)
    for key in COUNTS:
        if key in resolved and resolved[key] < 1:
            raise ValueError(f"{key}: must be >= 1, got {resolved[key]}")
    return resolved


def check_fits(settings: dict, process) -> dict:
    """`settings` resolved (`resolve_settings`), once the sampler is known to draw from
    `process`: a process config as in a model config ({"kind": "vp" | "subvp" | "ve", ...the
    process's arguments}) or a built process. A ValueError naming the offending setting otherwise."""
    settings = resolve_settings(settings)
    if isinstance(process, dict):
        process = build_process(process)
    spec, kind = SAMPLERS[settings["name"]], process.kind
    if kind not in spec.processes:
        raise ValueError(f"name: sampler {spec.name!r} does not draw from a {kind} process; use one "
                         f"of {samplers_for(kind)}")
    spec.check_process(settings, process)
    return settings


def draw(model, x, settings: dict, noise, clip=None, progress=None):
    """Run the sampler `settings["name"]` from x_T; returns (samples, NFE). `clip` bounds the
    x0 predictions of the samplers that form one (DDPM's and DDIM's) and the final samples."""
    settings = check_fits(settings, model.process)
    return SAMPLERS[settings["name"]].draw(model, x, settings, noise, clip, progress)


# --------------------------------------------------------------------------- checks


def _check_eps(settings: dict) -> None:
    """The time grids run from T = 1 down to eps."""
    if not 0 < settings["eps"] < 1:
        raise ValueError(f"eps: the time grid runs from T = 1 down to eps, so eps must lie in "
                         f"(0, 1), got {settings['eps']}")


def _check_ddim(settings: dict) -> None:
    if settings["spacing"] not in ddpm_samplers.DDIM_SPACINGS:
        raise ValueError(f"spacing: must be one of {ddpm_samplers.DDIM_SPACINGS}, got {settings['spacing']!r}")
    if not 0 <= settings["eta"] <= 1:
        raise ValueError(f"eta: DDIM's eta must lie in [0, 1] (0: deterministic, 1: DDPM's variance), "
                         f"got {settings['eta']}")


def _check_ddim_process(settings: dict, process) -> None:
    """DDIM's sub-sequence of `steps` indices exists on the process's chain."""
    levels = DDPMChain.from_process(process).noise_level(torch.arange(process.N))
    ddpm_samplers.ddim_timesteps(process.N, settings["steps"], settings["spacing"], levels)


def _check_heun(settings: dict) -> None:
    if not settings["rho"] > 0:
        raise ValueError(f"rho: Karras' rho must be positive, got {settings['rho']}")


DPMPP_SPACINGS = ("logsnr", "karras", "time")


def _check_dpmpp(settings: dict) -> None:
    _check_eps(settings)
    if settings["spacing"] not in DPMPP_SPACINGS:
        raise ValueError(f"spacing: must be one of {sorted(DPMPP_SPACINGS)}, got {settings['spacing']!r}")


def _check_pc(settings: dict) -> None:
    sde_samplers.check_pc(settings["predictor"], settings["corrector"], settings["snr"],
                          settings["corrector_steps"])
    _check_eps(settings)
    sde_samplers.check_grid_steps(settings["steps"])


def _check_pc_process(settings: dict, process) -> None:
    """The ancestral predictor steps the discrete chains of VP and VE only; the ladder
    predictors walk a coarsening of the process's N rungs (`SDE.ladder` refuses others)."""
    kind = process.kind
    if settings["predictor"] == "ancestral" and kind not in sde_samplers.ANCESTRAL_KINDS:
        raise ValueError(f"predictor: 'ancestral' steps the discrete chain of the "
                         f"{' and '.join(sde_samplers.ANCESTRAL_KINDS)} processes only, not {kind}")
    if settings["predictor"] in sde_samplers.LADDER_PREDICTORS:
        process.ladder(settings["steps"])


def _check_ode(settings: dict) -> None:
    sde_samplers.check_choice(settings["solver"], sde_samplers.ODE_METHODS, "solver")
    sde_samplers.check_tolerances(settings["rtol"], settings["atol"])
    _check_eps(settings)


def _check_langevin(settings: dict) -> None:
    for key in ("eps", "step_size"):
        if key in settings and not settings[key] > 0:
            raise ValueError(f"{key}: the Langevin step size must be positive, got {settings[key]}")


# --------------------------------------------------------------------------- draws


def _ancestral(model, x, settings, noise, clip, progress):
    """DDPM ancestral sampling over every step of the model's chain (Ho et al., 2020, alg. 2)."""
    return ddpm_samplers.ddpm_ancestral(model.denoiser, model.chain, x, noise, clip, progress)


def _ddim(model, x, settings, noise, clip, progress):
    """DDIM (Song et al., 2021) on `steps` indices of the model's chain, spaced by `spacing`."""
    return ddpm_samplers.ddim(model.denoiser, model.chain, x, settings["steps"], settings["eta"],
                              noise, clip, progress, settings["spacing"])


def _heun(model, x, settings, noise, clip, progress):
    """Heun on the PF-ODE over Karras-spaced noise levels of the model's VP chain, from
    min(its top level, EDM's 80) down: the cosine chain's top (~20,000) would leave most of the
    grid where nothing happens. x_T ~ N(0, I) stands for the VP state at the start level s,
    whose rescaled x / alpha has std sqrt(1 + s^2) (alpha = (1 + s^2)^(-1/2))."""
    chain = model.chain
    s_min, s_top = (float(chain.noise_level(i)) for i in (0, chain.N - 1))
    s_max = min(s_top, edm.SIGMA_MAX)
    sigmas = edm.karras_sigmas(s_min, s_max, (settings["steps"] + 1) // 2, settings["rho"])
    x = x * (1 + s_max**2) ** 0.5  # x_T / alpha at s_max: the rescaled space of the ODE
    return edm.heun_pf_ode(model.denoiser, x, sigmas, progress)


def _dpmpp_2m(model, x, settings, noise, clip, progress):
    """DPM-Solver++(2M) (Lu et al., 2022) on noise levels of the model's process from
    min(its level at T, EDM's 80) down, then to 0: `steps` NFE, for VP, sub-VP and VE models
    alike. x_T / alpha(T) has noise level s(T); scaling its std from sqrt(1 + s(T)^2) to
    sqrt(1 + s^2) starts it at the grid's top level s."""
    process = model.process
    s_top = float(process.noise_level(process.T))
    s_max = min(s_top, edm.SIGMA_MAX)
    alpha_T = float(process.alpha_sigma(torch.tensor(process.T, dtype=torch.float64))[0])
    x = x / alpha_T * ((1 + s_max**2) / (1 + s_top**2)) ** 0.5
    sigmas = dpmpp_sigmas(process, settings, s_max)
    return dpm_solver.dpm_solver_pp_2m(model.denoiser, x, sigmas, progress)


def dpmpp_sigmas(process, settings: dict, s_max: float) -> torch.Tensor:
    """DPM-Solver++'s `steps` noise levels from s_max down, then 0, by `spacing`:
    - time (the default): uniform in t from s_max's time to 0, the last level at t_max / steps
      (diffusers' "linspace" grid; `eps` unused). It spends few steps at low noise, where a
      learned network errs most, hence the default for learned networks (docs/performance.md,
      benchmarks/few_step_digits.py).
    - logsnr: uniform in log-SNR down to the level at `eps` (Lu et al., 2022, section 3.3), for
      an exact denoiser (benchmarks/few_step_samplers.py); eps = 1e-2 is s ~ 0.045 on the vp
      chain.
    - karras: Karras et al.'s rho spacing between the same ends as logsnr."""
    steps = settings["steps"]
    if settings["spacing"] == "time":
        t_top = min(process.T, float(process.time_of_noise_level(s_max)))
        times = torch.linspace(t_top, 0, steps + 1, dtype=torch.float64)[:-1]
        return torch.cat([process.noise_level(times), torch.zeros(1, dtype=torch.float64)])
    s_min = float(process.noise_level(settings["eps"]))
    if settings["spacing"] == "logsnr":
        return edm.log_snr_sigmas(s_min, s_max, steps)
    return edm.karras_sigmas(s_min, s_max, steps, settings["rho"])


class _RungNoiseLevels:
    """A ladder's own noise levels, in the shape `score_of_time` reads from a process."""

    # alpha_sigma(t) is that of the rung t falls on, the noise level the ladder's steps assume:
    # DDPM's own chain is up to ~5% off the continuous marginal at its rung times (a coarser
    # ladder sits on it), so the score is queried where the step stands.
    def __init__(self, ladder):
        self.alpha_sigma = ladder.rung_alpha_sigma


def _pc(model, x, settings, noise, clip, progress):
    """Predictor-corrector sampling of the model's reverse SDE (Song et al., 2021, algorithm 1).
    The ladder predictors (reverse diffusion, ancestral) walk the process's ladder of `steps`
    rungs (`SDE.ladder`), the score queried at each rung's own noise level; the others a
    uniform grid of `steps` times from T down to `eps`."""
    process, score = model.process, score_of_time(model.denoiser, model.process)
    if settings["predictor"] in sde_samplers.LADDER_PREDICTORS:
        process = process.ladder(settings["steps"])
        grid, score = process.ladder_times(), score_of_time(model.denoiser, _RungNoiseLevels(process))
    else:
        grid = sde_samplers.time_grid(process.T, settings["eps"], settings["steps"])
    return sde_samplers.pc_sampler(
        score, process, x, grid,
        settings["predictor"], settings["corrector"], settings["snr"],
        settings["corrector_steps"], noise, progress, settings["denoise"])


def _ode(model, x, settings, noise, clip, progress):
    """The model's probability-flow ODE (Song et al., 2021, eq. 13) from T to `eps`: fixed-step
    Euler or Heun over `steps` uniform steps in t, or adaptive RK45 within rtol / atol."""
    score = score_of_time(model.denoiser, model.process)
    return sde_samplers.probability_flow_ode(
        score, model.process, x, settings["solver"], settings["steps"], settings["rtol"],
        settings["atol"], settings["eps"], "decode", settings["denoise"], progress)


def _annealed_langevin(model, x, settings, noise, clip, progress):
    """Annealed Langevin dynamics over the model's noise ladder (Song & Ermon, 2019, alg. 1):
    steps_per_sigma steps of size eps sigma_i^2 / sigma_L^2 per level, then, with `denoise`,
    one Tweedie step x + sigma_L^2 s(x, sigma_L)."""
    return langevin.annealed_langevin_dynamics(
        score_of_noise_level(model.denoiser), x, noise_ladder(model.process), settings["eps"],
        settings["steps_per_sigma"], noise, final_denoise=settings["denoise"], progress=progress)


def _langevin(model, x, settings, noise, clip, progress):
    """Plain Langevin dynamics (Song & Ermon, 2019, eq. 4) at the smallest noise level sigma_L
    of the ladder, then, with `denoise`, one Tweedie step."""
    return langevin.langevin_dynamics(
        score_of_noise_level(model.denoiser), x, settings["step_size"], settings["steps"],
        float(noise_ladder(model.process)[-1]), noise, progress=progress,
        final_denoise=settings["denoise"])


# DDPM's chain is the vp discretization, the NCSN ladder the ve one; the reverse SDE and the
# probability-flow ODE exist for every process.
register(SamplerSpec("ancestral", settings={}, processes=("vp",), draw=_ancestral))
register(SamplerSpec("ddim", settings={"steps": 50, "eta": 0.0, "spacing": "uniform"},
                     processes=("vp",), draw=_ddim, check=_check_ddim,
                     check_process=_check_ddim_process))
register(SamplerSpec("heun", settings={"steps": 35, "rho": 7.0}, processes=("vp",), draw=_heun,
                     check=_check_heun))
register(SamplerSpec("dpmpp_2m", settings={"steps": 20, "spacing": "time", "rho": 7.0, "eps": 1e-2},
                     processes=ALL_PROCESSES, draw=_dpmpp_2m, check=_check_dpmpp))
register(SamplerSpec("pc", settings={"predictor": "reverse_diffusion", "corrector": "langevin",
                                     "snr": 0.16, "corrector_steps": 1, "steps": 1000, "eps": 1e-3,
                                     "denoise": True},
                     processes=ALL_PROCESSES, draw=_pc, check=_check_pc,
                     check_process=_check_pc_process))
register(SamplerSpec("ode", settings={"solver": "rk45", "steps": 100, "rtol": 1e-5, "atol": 1e-5,
                                      "eps": 1e-3, "denoise": True},
                     processes=ALL_PROCESSES, draw=_ode, check=_check_ode))
register(SamplerSpec("annealed_langevin", settings={"steps_per_sigma": 5, "eps": 2e-5, "denoise": True},
                     processes=("ve",), draw=_annealed_langevin, check=_check_langevin))
register(SamplerSpec("langevin", settings={"steps": 1000, "step_size": 2e-5, "denoise": True},
                     processes=("ve",), draw=_langevin, check=_check_langevin))
