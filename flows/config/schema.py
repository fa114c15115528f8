"""YAML mappings into the params dataclasses: each value checked against its type hint, nested
sections recursively, unknown keys refused; every error names the dotted field."""
from __future__ import annotations

import dataclasses
import types
import typing

from flows.config.validation import require


def convert(value, hint, name: str):
    """Check one YAML value against a type hint; nested dataclasses recurse."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, name)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return convert(value, next(a for a in args if a is not type(None)), name)
    if origin is list:
        require(isinstance(value, list), name, f"expected a list, got {value!r}")
        return [convert(v, args[0], f"{name}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    require(isinstance(value, hint) and not (hint is not bool and isinstance(value, bool)),
             name, f"expected {hint.__name__}, got {value!r}")
    return value


def build(cls, data, name: str):
    """An instance of the dataclass `cls` from a YAML mapping, every field checked against its
    type hint and then by the class's own `check(name)`; errors name the dotted field."""
    require(isinstance(data, dict), name or "params", f"expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(hints))
    require(not unknown, f"{name + '.' if name else ''}{unknown[0] if unknown else ''}",
             f"unknown key; known keys: {sorted(hints)}")
    values = {k: convert(v, hints[k], f"{name + '.' if name else ''}{k}") for k, v in data.items()}
    obj = cls(**values)
    obj.check(name)
    return obj


def check_keys(tree, name: str = "") -> None:
    """Every mapping key of the YAML tree is a string (a YAML `1:` or `null:` key would fail
    later comparisons with a TypeError instead of a message naming it)."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            where = f"{name}.{key}" if name else str(key)
            require(isinstance(key, str), where, f"keys must be strings, got {key!r}")
            check_keys(value, where)
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            check_keys(value, f"{name}[{i}]")
