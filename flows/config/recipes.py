"""Named recipes: each framework as its paper defines it, and improved ones, as recorded choices.

A pipeline run is named by a key: a framework alone (`ddpm`), whose params section is used as
written (recipe "custom"), or `<framework>-<recipe>` (`ddpm-paper`, `sde-edm`), the section with
the settings of its `recipes.<recipe>` entry laid over it. The recipe goes into the model's JSON
config, hence into its MLflow run and registry version; the settings of each recipe live in
params.yaml, commented with the paper they come from.
"""
from __future__ import annotations

import dataclasses
import re

from flows.config.schema import build
from flows.config.validation import ConfigError, require

CUSTOM = "custom"
_RECIPE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
NOT_IN_RECIPES = ("recipes", "likelihood")  # a recipe trains and samples; it does not evaluate


def split_run(key: str) -> tuple[str, str | None]:
    """'ddpm-paper' -> ('ddpm', 'paper'); 'ddpm' -> ('ddpm', None)."""
    framework, _, recipe = key.partition("-")
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
