"""The one error type of params validation, and the checks every section shares."""
from __future__ import annotations

import dataclasses
import math
import re

from diffusion_core.samplers.registry import SAMPLERS, check_fits, resolve_settings

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


def core_checked(name: str, call, fields):
    """`call()`, the core owning the rule it checks; its ValueError becomes a ConfigError naming
    `name.<field>` for the first of `fields` the core's message mentions ('need 0 < beta_min <
    beta_max' names beta_min, 'rtol: must be positive' rtol), or `name` when it names none."""
    try:
        return call()
    except ValueError as err:
        message = str(err)
        named = re.search(rf"\b({'|'.join(map(re.escape, fields))})\b", message)
        if named is None:
            raise ConfigError(f"{name}: {message}") from err
        field = named.group(1)
        what = message.removeprefix(f"{field}: ")  # a message that starts with its field says it once
        raise ConfigError(f"{name}.{field}: {what}") from err


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
    """What the core's sampler registry assumes before it looks: string keys, a string name,
    finite numbers (its checks compare, and NaN or infinity passes `> 0`)."""
    require(isinstance(settings, dict), name, f"expected a mapping, got {settings!r}")
    for key, value in settings.items():
        require(isinstance(key, str), name, f"setting names must be strings, got {key!r}")
        if isinstance(value, float):
            require(math.isfinite(value), f"{name}.{key}", f"must be a finite number, got {value}")
    require(isinstance(settings.get("name"), str), f"{name}.name",
            f"must name a sampler (a string), got {settings.get('name')!r}")


def _setting_named(message: str, settings: dict, name: str) -> str:
    """'<name>.<setting>: what' from a core message that starts with the setting ('steps: ...'
    or 'steps must ...'); '<name>: message' when it names none."""
    first, _, rest = message.partition(" ")
    key = first.rstrip(":")
    spec = SAMPLERS.get(settings["name"])
    if key == "name" or key in settings or (spec is not None and key in spec.settings):
        return f"{name}.{key}: {rest}"
    return f"{name}: {message}"


def check_sampler(settings: dict, name: str, process=None) -> dict:
    """A sampler mapping ({name: ..., steps: ..., ...}) checked by the core's sampler registry
    (`resolve_settings`), and, given a process (its config or built), as the core checks it
    before drawing from it (`check_fits`); returns it with the sampler's defaults filled in. A
    ConfigError names the setting the core refuses."""
    _check_sampler_form(settings, name)
    try:
        return resolve_settings(settings) if process is None else check_fits(settings, process)
    except ValueError as err:
        raise ConfigError(_setting_named(str(err), settings, name)) from err
