"""The one error type of params validation, and the checks every section shares."""
from __future__ import annotations

from diffusion_core.samplers.registry import resolve_settings


class ConfigError(ValueError):
    """A params.yaml problem; the message starts with the dotted name of the field."""


def require(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: {message}")


def require_positive(section, name: str, *keys: str) -> None:
    """Each of `keys` of the params section `section` (named `name`) must be positive."""
    for key in keys:
        require(getattr(section, key) > 0, f"{name}.{key}", "must be positive")


def check_sampler(settings: dict, name: str) -> None:
    """A sampler mapping ({name: ..., steps: ..., ...}) checked against the core's sampler table."""
    require(isinstance(settings, dict), name, f"expected a mapping, got {settings!r}")
    try:
        resolved = resolve_settings(settings)
    except ValueError as err:
        raise ConfigError(f"{name}.{err}") from err
    for key in ("steps", "steps_per_sigma"):
        if key in resolved:
            require(resolved[key] >= 1, f"{name}.{key}", "must be >= 1")
