"""The one error type of params validation, and the checks every section shares."""
from __future__ import annotations

import dataclasses
import math

from diffusion_core.samplers.ddpm import DDIM_SPACINGS
from diffusion_core.samplers.registry import resolve_settings

SEED_LIMIT = 2**32  # seeds lie in [0, 2**32): numpy refuses negative ones, torch ones past 2**64


class ConfigError(ValueError):
    """A params.yaml problem; the message starts with the dotted name of the field.

    The message is kept to one line (the CLI prints it as one `error: bad params: ...` line)."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).splitlines()))


def require(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: {message}")


def require_positive(section, name: str, *keys: str) -> None:
    """Each of `keys` of the params section `section` (named `name`) must be positive."""
    for key in keys:
        require(getattr(section, key) > 0, f"{name}.{key}", "must be positive")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_numbers(section, name: str) -> None:
    """Every float of a params dataclass, nested ones included, is finite (a NaN passes every
    comparison-based check and an infinite rate or bound breaks a stage late), and every field
    called `seed` lies in [0, 2**32) (numpy refuses negative seeds only when a stage runs)."""
    for item in dataclasses.fields(section):
        value, where = getattr(section, item.name), f"{name}.{item.name}" if name else item.name
        if dataclasses.is_dataclass(value):
            check_numbers(value, where)
        elif isinstance(value, float):
            require(math.isfinite(value), where, f"must be a finite number, got {value}")
        elif item.name == "seed" and _is_number(value):
            require(0 <= value < SEED_LIMIT, where, f"must lie in [0, 2**32), got {value}")


def _check_sampler_form(settings: dict, name: str) -> None:
    """What the core's sampler table assumes before it looks: string keys, a string name,
    finite numbers (its checks compare, and NaN or infinity passes `> 0`)."""
    require(isinstance(settings, dict), name, f"expected a mapping, got {settings!r}")
    for key, value in settings.items():
        require(isinstance(key, str), name, f"setting names must be strings, got {key!r}")
        if isinstance(value, float):
            require(math.isfinite(value), f"{name}.{key}", f"must be a finite number, got {value}")
    require(isinstance(settings.get("name"), str), f"{name}.name",
            f"must name a sampler (a string), got {settings.get('name')!r}")


def _check_sampler_values(resolved: dict, name: str) -> None:
    """Value ranges the core's samplers refuse only when they run (DDIM's spacing and eta,
    Heun's rho)."""
    for key in ("steps", "steps_per_sigma"):
        if key in resolved:
            require(resolved[key] >= 1, f"{name}.{key}", "must be >= 1")
    if resolved["name"] == "ddim":
        require(resolved["spacing"] in DDIM_SPACINGS, f"{name}.spacing",
                f"must be one of {DDIM_SPACINGS}, got {resolved['spacing']!r}")
        require(0 <= resolved["eta"] <= 1, f"{name}.eta",
                f"DDIM's eta must lie in [0, 1] (0: deterministic, 1: DDPM's variance), got {resolved['eta']}")
    if resolved["name"] == "heun":
        require(resolved["rho"] > 0, f"{name}.rho", f"Karras' rho must be positive, got {resolved['rho']}")


def check_sampler(settings: dict, name: str) -> dict:
    """A sampler mapping ({name: ..., steps: ..., ...}) checked against the core's sampler table;
    returns it with the sampler's defaults filled in."""
    _check_sampler_form(settings, name)
    try:
        resolved = resolve_settings(settings)
    except ValueError as err:
        raise ConfigError(f"{name}.{err}") from err
    _check_sampler_values(resolved, name)
    return resolved
