"""Named recipes: each framework as its paper defines it, and improved ones, as recorded choices.

A pipeline run is named by a key: a framework alone (`ddpm`), whose params section is used as
written (recipe "custom"), or `<framework>-<recipe>` (`ddpm-paper`, `sde-edm`), the section with
the settings of its `recipes.<recipe>` entry laid over it (`lay_over`). A recipe sets any key of
its framework's section and the training choices every section carries (choices.py: network,
conditioning, ema, optimizer, batch_size), so a recipe is all of a run's choices; what it leaves
out is the shared default. The recipe goes into the model's JSON config, hence into its MLflow
run and registry version; the settings of each recipe live in params.yaml, commented with the
paper they come from, and papers.py holds each paper's own values (`diffusion recipes` prints
the two side by side).

`recipe_settings` lists the settings a recipe can set, one per line of the deviations table and
one per rung of an ablation ladder: a key of the section, a key of `network` or `optimizer`
(laid key by key), or `ema` and `sampler` whole (their keys mean something only together).
`setting_value` reads one from a recipe mapping and `with_setting` sets one, so a ladder from
recipe A to recipe B is A with B's value laid over it one setting at a time.

A key may end in a training seed, `<framework>[-<recipe>][.s<seed>]` (`ddpm-edm.s2`): the same
run trained at that seed instead of `train.seed`, a replicate of its base key (`ddpm-edm`).
"""
from __future__ import annotations

import copy
import dataclasses
import re

from flows.config.choices import CHOICE_KEYS, OPTIMIZER_KEYS
from flows.config.schema import build
from flows.config.validation import SEED_LIMIT, ConfigError, require

CUSTOM = "custom"
_RECIPE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# '.s<seed>' without leading zeros: one spelling per seed, so one folder and one MLflow run per seed
_SEED_SUFFIX = re.compile(r"s(0|[1-9][0-9]*)")
NOT_IN_RECIPES = ("recipes", "likelihood")  # a recipe trains and samples; it does not evaluate
LAID_BY_KEY = ("network", "optimizer")  # mappings a recipe lays key by key; any other value replaces
NETWORK_KEYS = ("base", "mults", "blocks", "emb_dim", "width", "depth", "dropout", "attention")


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


def run_section_name(key: str) -> str:
    """Where run `key`'s settings are written: 'ddpm.recipes.paper' for 'ddpm-paper', 'ddpm'
    for a framework alone (errors about the run's choices name their field under it)."""
    framework, recipe = split_run(key)
    return f"{framework}.recipes.{recipe}" if recipe else framework


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
    for key in LAID_BY_KEY:
        value = overrides.get(key, {})
        require(isinstance(value, dict), f"{where}.{key}", f"expected a mapping of settings, got {value!r}")
    merged = {**lay_over(dataclasses.asdict(section), overrides), "recipes": {}}
    return build(type(section), merged, where)


def lay_over(base: dict, overrides: dict) -> dict:
    """The recipe (or section) mapping `base` with `overrides` laid over it: `network` and
    `optimizer` key by key, every other setting replaced whole (a sampler's or an EMA's keys
    mean something only together). Neither input is changed.

    `lay_over(recipes["paper"], {"ema": recipes["edm"].get("ema", {})})` is the paper's
    recipe with the EDM recipe's average: the step of an ablation ladder."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if key in LAID_BY_KEY and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **copy.deepcopy(value)}
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def recipe_settings(section) -> tuple[str, ...]:
    """The settings a recipe of `section`'s framework can set, in the order the deviations
    table lists them: the section's own keys (`sampler` whole), then the training choices
    (`network.<key>`, `conditioning`, `ema` whole, `optimizer.<key>`, `batch_size`)."""
    own = [f.name for f in dataclasses.fields(section)  # lr_schedule: as optimizer.lr_schedule
           if f.name not in NOT_IN_RECIPES + CHOICE_KEYS + ("lr_schedule",)]
    return (*own, *(f"network.{k}" for k in NETWORK_KEYS), "conditioning", "ema",
            *(f"optimizer.{k}" for k in OPTIMIZER_KEYS), "batch_size")


def setting_value(recipe: dict, setting: str, default=None):
    """The value `recipe` (a mapping as params.yaml writes it) gives `setting` ('noise',
    'optimizer.lr'), or `default` where it sets none."""
    group, _, key = setting.partition(".")
    if not key:
        return recipe.get(group, default)
    return recipe.get(group, {}).get(key, default)


def with_setting(recipe: dict, setting: str, value) -> dict:
    """`recipe` with `setting` ('ema', 'optimizer.lr') set to `value` (a new mapping)."""
    group, _, key = setting.partition(".")
    return lay_over(recipe, {group: {key: value}} if key else {group: value})


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
