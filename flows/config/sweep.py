"""The quality-against-NFE sweep of params (`evaluate.nfe_sweep`) as one sampler setting per point."""
from __future__ import annotations

from diffusion_core.samplers.registry import fits_process
from flows.config.recipes import base_key, split_run


def sweep_points(sweep: list[dict], framework: str | None = None,
                 process_kind: str | None = None) -> list[dict]:
    """[{name, <setting>: [a, b], frameworks: [...]}, ...] -> one settings dict per value of
    each entry's list-valued setting (steps, steps_per_sigma, ...). Given a run (a framework or
    framework-recipe, with or without a seed), only the entries that fit its process and name
    it, its base key (a seed replicate is swept like the run it repeats), its framework, or
    nothing."""
    points = []
    for entry in sweep:
        entry = dict(entry)
        only = entry.pop("frameworks", None)
        named = only and not {framework, base_key(framework or ""), split_run(framework or "")[0]} & set(only)
        if framework is not None and (named or not fits_process(entry["name"], process_kind)):
            continue
        swept = [key for key, value in entry.items() if isinstance(value, list)]
        points += [{**entry, swept[0]: v} for v in entry[swept[0]]] if swept else [entry]
    return points
