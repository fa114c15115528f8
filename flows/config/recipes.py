"""Named recipes: each framework as its paper defines it, and improved ones, as recorded choices.

A pipeline run is named by a key: a framework alone (`ddpm`), whose params section is used as
written (recipe "custom"), or `<framework>-<recipe>` (`ddpm-paper`, `sde-edm`), the section with
the settings of its `recipes.<recipe>` entry laid over it. The recipe goes into the model's JSON
config, hence into its MLflow run and registry version; the settings of each recipe live in
params.yaml, commented with the paper they come from.

A key may end in a training seed, `<framework>[-<recipe>][.s<seed>]` (`ddpm-edm.s2`): the same
run trained at that seed instead of `train.seed`, a replicate of its base key (`ddpm-edm`).
"""
from __future__ import annotations

import dataclasses
import re

from flows.config.schema import build
from flows.config.validation import SEED_LIMIT, ConfigError, require

CUSTOM = "custom"
_RECIPE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# '.s<seed>' without leading zeros: one spelling per seed, so one folder and one MLflow run per seed
_SEED_SUFFIX = re.compile(r"s(0|[1-9][0-9]*)")
NOT_IN_RECIPES = ("recipes", "likelihood")  # a recipe trains and samples; it does not evaluate


def run_seed(key: str) -> tuple[str, int | None]:
    """'ddpm-edm.s2' -> ('ddpm-edm', 2); 'ddpm-edm' -> ('ddpm-edm', None). A malformed suffix
    ('ddpm.sx', 'ddpm.s-1', 'ddpm.s01') is a ValueError (framework and recipe names hold no '.')."""
    base, dot, suffix = key.partition(".")
    if not dot:
        return key, None
    match = _SEED_SUFFIX.fullmatch(suffix)
    if match is None or int(match.group(1)) >= SEED_LIMIT:
        raise ValueError(f"{key!r}: a training seed is written '.s<seed>' with a seed in [0, 2**32) "
                         f"and no leading zeros (ddpm-edm.s2), got '.{suffix}'")
    return base, int(match.group(1))


def base_key(key: str) -> str:
    """The run a seed replicate repeats: 'ddpm-edm.s2' -> 'ddpm-edm'; 'ddpm-edm' -> 'ddpm-edm'."""
    return run_seed(key)[0]


def check_run_key(key, where: str) -> None:
    """A ConfigError naming `where` unless `key` is a string whose seed suffix, if any, is well formed."""
    require(isinstance(key, str), where, f"run keys are strings (ddpm-edm.s2), got {key!r}")
    try:
        run_seed(key)
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from err


def split_run(key: str) -> tuple[str, str | None]:
    """'ddpm-paper' -> ('ddpm', 'paper'); 'ddpm' -> ('ddpm', None); a seed suffix is left out
    ('ddpm-paper.s1' -> ('ddpm', 'paper'))."""
    framework, _, recipe = base_key(key).partition("-")
    return framework, recipe or None


def recipe_of(key: str) -> str:
    """The recipe a run records: its named recipe, or "custom" for a framework alone."""
    return split_run(key)[1] or CUSTOM


def with_recipe(section, recipe: str, name: str):
    """The section with `recipes[recipe]` laid over it, validated like the section itself;
    errors name the field as `<name>.recipes.<recipe>.<field>`."""
    if recipe not in section.recipes:
        raise ConfigError(f"{name}.recipes: no recipe {recipe!r}; known: {sorted(section.recipes)}")
    overrides = section.recipes[recipe]
    where = f"{name}.recipes.{recipe}"
    require(isinstance(overrides, dict), where, f"expected a mapping of settings, got {overrides!r}")
    for key in NOT_IN_RECIPES:
        require(key not in overrides, f"{where}.{key}", "cannot be set by a recipe")
    merged = {**dataclasses.asdict(section), **overrides, "recipes": {}}
    return build(type(section), merged, where)


def check_recipes(section, name: str) -> None:
    """Every recipe of a framework section names itself plainly and gives a valid section."""
    for recipe in section.recipes:
        require(isinstance(recipe, str) and bool(_RECIPE_NAME.match(recipe)), f"{name}.recipes",
                f"recipe names are lower-case words without '-', got {recipe!r}")
        with_recipe(section, recipe, name)


def with_seeds(keys: list[str], seeds: list[int]) -> list[str]:
    """Each key without a seed suffix as one replicate per seed (['ddpm-edm'], [0, 1] ->
    ['ddpm-edm.s0', 'ddpm-edm.s1']); a key that names its seed stays as it is. The result is
    validated as train.frameworks is (a negative seed gives a malformed key)."""
    out = []
    for key in keys:
        suffixed = "." in key  # a malformed suffix is kept, for validation to name
        out += [key] if suffixed else [f"{key}.s{int(seed)}" for seed in seeds]
    return out
