"""The ablation ladder: from one recipe of a framework to another, one setting at a time.

`ddpm:paper:edm` names the ladder from `ddpm-paper` to `ddpm-edm`. Its rungs are recipes made
from the start's by laying the end's resolved value of each setting they differ in over it, in
the order the deviations table lists the settings (recipes.recipe_settings): rung i changes
one setting more than rung i − 1, and the last rung is the end recipe itself. A setting whose
change alone gives no valid recipe (two settings that only make sense together) is changed
together with the next. Each rung is a recipe named `<start>_to_<end>_<i>` in its framework's
section, so it trains, samples, evaluates and registers as any run does; the compare report
reads the ladders named in `compare.ladders` and shows what each rung's change is worth.
"""
from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass

from diffusion_core.frameworks import FRAMEWORKS
from flows.config.deviations import data_kind, run_settings, same_setting
from flows.config.recipes import recipe_settings, with_setting
from flows.config.schema import build
from flows.config.validation import ConfigError, require

_SPEC = re.compile(r"^([a-z]+):([a-z][a-z0-9_]*):([a-z][a-z0-9_]*)$")


@dataclass(frozen=True)
class Ladder:
    framework: str
    start: str
    end: str

    @property
    def name(self) -> str:
        return f"{self.framework}:{self.start}:{self.end}"

    def rung_recipe(self, i: int) -> str:
        return f"{self.start}_to_{self.end}_{i}"


def parse_ladder(spec, where: str) -> Ladder:
    """'ddpm:paper:edm' -> Ladder; a ConfigError naming `where` otherwise."""
    match = _SPEC.match(spec) if isinstance(spec, str) else None
    require(match is not None and match.group(1) in FRAMEWORKS, where,
            f"a ladder is '<framework>:<start recipe>:<end recipe>' (ddpm:paper:edm), got {spec!r}")
    ladder = Ladder(*match.groups())
    require(ladder.start != ladder.end, where, f"{spec!r} starts and ends at the same recipe")
    return ladder


def _valid(params, framework: str, name: str, recipe: dict) -> bool:
    """Whether params with `recipe` as `<framework>-<name>`, trained, pass validation (the
    section's checks and those across sections, such as DDIM's steps against the chain)."""
    data = dataclasses.asdict(params)
    data[framework]["recipes"][name] = recipe
    data["train"]["frameworks"] = [f"{framework}-{name}"]
    data["compare"]["ladders"] = []
    try:
        build(type(params), data, "")  # what parse_params does with a mapping already checked
    except ConfigError:
        return False
    return True


def rungs(params, ladder: Ladder) -> list[dict]:
    """The ladder's rungs after its start: {recipe, settings (changed at this rung), values
    ({setting: (start's value, end's value)}), mapping (the recipe as params.yaml writes it)};
    the last is the end recipe itself."""
    section = getattr(params, ladder.framework)
    for recipe in (ladder.start, ladder.end):
        require(recipe in section.recipes, "compare.ladders",
                f"{ladder.name}: {ladder.framework} has no recipe {recipe!r}; known: {sorted(section.recipes)}")
    kind = data_kind(params)
    first = run_settings(params, f"{ladder.framework}-{ladder.start}", kind)
    last = run_settings(params, f"{ladder.framework}-{ladder.end}", kind)
    changed = [s for s in recipe_settings(section) if s in first and not same_setting(s, first[s], last[s])]
    out, current, pending = [], copy.deepcopy(section.recipes[ladder.start]), []
    for setting in changed[:-1]:
        current, pending = with_setting(current, setting, last[setting]), pending + [setting]
        name = ladder.rung_recipe(len(out) + 1)
        if _valid(params, ladder.framework, name, current):
            out.append({"recipe": name, "settings": pending, "mapping": copy.deepcopy(current),
                        "values": {s: (first[s], last[s]) for s in pending}})
            pending = []
    pending += changed[-1:]
    out.append({"recipe": ladder.end, "settings": pending, "mapping": section.recipes[ladder.end],
                "values": {s: (first[s], last[s]) for s in pending}})
    return out


def ladder_keys(params, ladder: Ladder) -> list[str]:
    """The run keys of the ladder, from its start to its end."""
    return [f"{ladder.framework}-{ladder.start}"] + [f"{ladder.framework}-{r['recipe']}" for r in rungs(params, ladder)]


def with_ladder(data: dict, params, spec: str) -> dict:
    """The params mapping `data` with the ladder's rungs added as recipes of its framework, its
    keys as train.frameworks (the ladder is a study of its own) and the ladder as
    compare.ladders: what `diffusion pipeline --ladder ddpm:paper:edm` runs."""
    ladder = parse_ladder(spec, "--ladder")
    data = copy.deepcopy(data)
    for rung in rungs(params, ladder)[:-1]:
        data[ladder.framework]["recipes"][rung["recipe"]] = rung["mapping"]
    data["train"]["frameworks"] = ladder_keys(params, ladder)
    data["compare"]["ladders"] = [ladder.name]
    return data
