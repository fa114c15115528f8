"""The deviations table: every recipe in use, each setting beside its paper's value (papers.py),
marked where they differ and why, generated from the params so it cannot drift from what runs.
`diffusion recipes` prints it; docs/recipes.md is its output for the default params.yaml."""
from __future__ import annotations

from diffusion_core.samplers.registry import resolve_settings
from flows.config.choices import NETWORK_KEYS_OF
from flows.config.papers import STEP_SCALING, paper_of, scaled
from flows.config.recipes import base_key, recipe_settings, split_run

SAME, SCALED, DIFFERS = "=", "scaled", "**differs**"
NO_REASON = "no reason recorded (papers.py)"


def recipes_in_use(params) -> list[str]:
    """The recipes of train.frameworks' runs (seed replicates once), then every framework's
    `edm` recipe: the runs the deviations table covers."""
    keys = [base_key(k) for k in params.train.frameworks if split_run(k)[1]]
    keys += [f"{fw}-edm" for fw in ("ddpm", "ncsn", "sde") if "edm" in getattr(params, fw).recipes]
    return list(dict.fromkeys(keys))


def data_kind(params) -> str:
    """The kind of data the params' source holds where it fixes it (toys: vector), else image."""
    known = params.data.known_data()
    return "vector" if known is not None and len(known[0]) == 1 else "image"


def run_settings(params, key: str, kind: str) -> dict:
    """{setting: value} of run `key` as it trains (recipes.recipe_settings' names): its section
    with the recipe laid over it and its training choices resolved over the shared defaults."""
    section, choices = params.framework(key), params.training(key, kind)
    values = {}
    for name in recipe_settings(section):
        group, _, sub = name.partition(".")
        if group == "network":
            if sub in NETWORK_KEYS_OF[kind]:
                values[name] = getattr(choices.network, sub)
        elif group == "optimizer":
            values[name] = getattr(choices.optimizer, sub)
        elif name == "ema":
            values[name] = choices.ema.record()
        elif name in ("conditioning", "batch_size"):
            values[name] = getattr(choices, name)
        else:
            values[name] = getattr(section, name)
    return values


def same_setting(setting: str, a, b) -> bool:
    """Whether two values of a setting mean the same (a sampler by its resolved settings, an
    EMA by kind and rate or gamma, numbers to a relative 1e-4)."""
    if setting == "sampler":
        return resolve_settings(a) == resolve_settings(b)
    if setting == "ema" and isinstance(a, dict) and isinstance(b, dict):
        return a.get("kind") == b.get("kind") and _close(a.get("rate") or a.get("gamma"),
                                                          b.get("rate") or b.get("gamma"))
    return _close(a, b) if isinstance(a, float) and isinstance(b, float) else a == b


def _close(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= 1e-9 + 1e-4 * abs(b)
    return a == b


def show(value) -> str:
    """A setting's value as params.yaml would write it, short."""
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _row(setting: str, run, paper, steps: int) -> str:
    """One table row: the run's value, the paper's (scaled where it scales), the mark, why."""
    value = paper.values[setting]
    expected = scaled(value, paper.steps, steps)
    stated = value.text or show(value.value)
    if value.scale:
        stated += f" over {paper.steps:,} steps"
    if same_setting(setting, run, value.value):
        mark, why = SAME, ""
    elif expected is not None and same_setting(setting, run, expected):
        mark, why = SCALED, f"{show(expected)} at {steps:,} steps: the paper's fraction of its training"
    else:
        mark, why = DIFFERS, paper.reasons.get(setting, NO_REASON)
    return f"| `{setting}` | {show(run)} | {stated} ({value.where}) | {mark} | {why} |"


def recipe_table(params, key: str, kind: str) -> str:
    """The markdown section of one recipe: its paper, then a row per setting the paper states."""
    paper, run = paper_of(key), run_settings(params, key, kind)
    if paper is None:
        rows = "\n".join(f"| `{s}` | {show(v)} |" for s, v in run.items())
        return f"### `{key}`: no paper recorded in flows/config/papers.py\n\n| setting | this recipe |\n|---|---|\n{rows}\n"
    steps = params.profile(kind).steps
    rows = [_row(s, run[s], paper, steps) for s in run if s in paper.values]
    notes = "".join(f"\n- {note}" for note in paper.notes)
    return (f"### `{key}`: {paper.cite}\n\n| setting | this recipe | paper | | why |\n|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n" + (notes + "\n" if notes else ""))


def deviations_markdown(params) -> str:
    """Every recipe in use beside its paper (the output of `diffusion recipes`)."""
    kind = data_kind(params)
    head = (f"# Recipes beside their papers\n\nGenerated by `diffusion recipes` from the params "
            f"({params.data.source}, {kind} profile, {params.profile(kind).steps:,} steps); do not edit "
            f"by hand. `=`: the paper's value; `scaled`: the paper's, {STEP_SCALING}; `**differs**`: "
            f"with the reason. Paper values and reasons: flows/config/papers.py.\n")
    return "\n".join([head, *(recipe_table(params, key, kind) for key in recipes_in_use(params))])
