"""The verdict of a comparison report: which differences are real, at a stated confidence.

Two levels, each a family of comparisons at 95% family-wise confidence (Bonferroni):

- **Trained models.** Runs measured alike (``figures.not_comparable``) are compared pairwise on
  their headline figure by the paired bootstrap (``figures.pairwise``): "A beats B" only when
  the interval of the difference excludes zero; other pairs are named as not separated. With
  one training seed per key this says which *trained models* are better, not which recipes.
- **Recipes.** Keys trained at several seeds (``ddpm-edm.s0``, ``ddpm-edm.s1``, ...) get their
  mean over seeds with Student's t interval from the between-seed spread, and keys with at
  least ``MIN_SEEDS`` seeds are compared by Welch's interval: only these make claims about a
  recipe or framework.

Rows are ``compare.run_row`` dicts; a row's headline fields are ``headline_<field>``.
"""
from __future__ import annotations

from itertools import combinations

from diffusion_core.evaluation import intervals
from flows.config.deviations import show
from flows.config.ladder import ladder_keys, parse_ladder, rungs
from flows.config.recipes import run_seed
from flows.tracking import figures

LEVEL = figures.LEVEL
MIN_SEEDS = 3  # the fewest training seeds a claim about a recipe rests on
FIELDS = ("metric", "value", "label", "within_floor", "se", "low", "high", "level", "replicates", "jackknife",
          "figure", "floor")


def figure_of(row: dict) -> dict:
    return {k: row.get(f"headline_{k}") for k in FIELDS}


def comparable_groups(rows: list[dict]) -> list[list[dict]]:
    """Rows with a headline figure, grouped by how it was measured (first-seen order)."""
    groups: list[list[dict]] = []
    for row in (r for r in rows if r.get("headline_value") is not None):
        home = next((g for g in groups if figures.not_comparable(row["measured"], g[0]["measured"]) is None), None)
        if home is None:
            groups.append([row])
        else:
            home.append(row)
    return groups


def _bounds(d: dict) -> str:
    return f"{figures.num(d['estimate'])} [{figures.num(d['low'])}, {figures.num(d['high'])}]"


def model_pairs(rows: list[dict], level: float = LEVEL) -> list[dict]:
    """Every pair within each comparable group, decided at ``level`` family-wise."""
    return [p for g in comparable_groups(rows) for p in
            figures.pairwise([(r["framework"], figure_of(r)) for r in g], level)]


def _pair_sentences(pairs: list[dict], label: str) -> list[str]:
    beats = [f"{p['a']} beats {p['b']} by {_bounds(p)} {label}" for p in pairs if p["separated"]]
    close = [f"{p['a']} and {p['b']} ({_bounds(p)})" for p in pairs if not p["separated"]]
    return beats + (["not separated: " + "; ".join(close)] if close else [])


def _models_sentence(rows: list[dict], level: float) -> str | None:
    pairs = model_pairs(rows, level)
    if not pairs:
        return None
    label = rows[0].get("headline_label") or ""
    head = (f"Trained models, at {level:.0%} family-wise confidence (Bonferroni over {pairs[0]['pairs']} pairs; "
            f"bootstrap over the samples, reference and floor shared): ")
    return head + "; ".join(_pair_sentences(pairs, label)) + "."


def _excluded(rows: list[dict]) -> list[str]:
    """Runs listed but not ranked: without an interval, or measured unlike the first group."""
    groups, parts = comparable_groups(rows), []
    listed = [r for r in rows if r.get("headline_value") is not None and not figures.ranked(figure_of(r))]
    if listed:
        parts.append(", ".join(r["framework"] for r in listed) + " listed, not ranked: no interval")
    for group in groups[1:]:
        reason = figures.not_comparable(group[0]["measured"], groups[0][0]["measured"])
        parts.append(f"{', '.join(r['framework'] for r in group)} not ranked against "
                     f"{groups[0][0]['framework']}: {reason}")
    return parts


def seed_groups(rows: list[dict]) -> dict[str, list[dict]]:
    """Ranked rows by base key (first-seen order), in the first comparable group."""
    groups = comparable_groups(rows)
    out: dict[str, list[dict]] = {}
    for row in (groups[0] if groups else []):
        out.setdefault(run_seed(row["framework"])[0], []).append(row)
    return out


def _jackknifes(rows: list[dict]) -> list | None:
    """The runs' reference jackknifes, or None unless every run has one."""
    found = [figure_of(r).get("jackknife") for r in rows]
    return None if any(j is None for j in found) else found


def key_means(rows: list[dict], level: float = LEVEL) -> dict[str, dict]:
    """Each base key's headline over its training seeds: mean, t interval (with the reference's
    noise where the runs carry their jackknifes), per-seed values."""
    return {key: {**intervals.seed_mean([r["headline_value"] for r in rs], level, _jackknifes(rs)),
                  "values": [r["headline_value"] for r in rs], "runs": [r["framework"] for r in rs],
                  "jackknifes": _jackknifes(rs)}
            for key, rs in seed_groups(rows).items()}


def key_pairs(rows: list[dict], level: float = LEVEL) -> list[dict]:
    """Keys with at least MIN_SEEDS seeds, pairwise by Welch's interval at ``level`` family-wise."""
    means = {k: m for k, m in key_means(rows, level).items() if m["seeds"] >= MIN_SEEDS}
    ordered = sorted(means.items(), key=lambda km: km[1]["estimate"])
    pairs = list(combinations(ordered, 2))
    each = intervals.family_level(level, len(pairs))
    return [{"a": a, "b": b, "pairs": len(pairs), **_seed_difference(mb, ma, each)} for (a, ma), (b, mb) in pairs]


def _seed_difference(after: dict, before: dict, level: float) -> dict:
    """Welch's interval of two keys' seed means (``key_means`` entries), with the reference's
    noise when both carry jackknifes."""
    both = after["jackknifes"] is not None and before["jackknifes"] is not None
    return intervals.seed_difference(after["values"], before["values"], level,
                                     after["jackknifes"] if both else None, before["jackknifes"] if both else None)


def _recipes_sentence(rows: list[dict], level: float) -> str:
    means = key_means(rows, level)
    if all(m["seeds"] < 2 for m in means.values()):
        return "One training seed per run: this compares these trained models, not their recipes."
    few = [k for k, m in means.items() if m["seeds"] < MIN_SEEDS]
    pairs = key_pairs(rows, level)
    parts = []
    if pairs:
        label = rows[0].get("headline_label") or ""
        parts.append(f"Recipes over training seeds, at {level:.0%} family-wise confidence (Welch's interval on "
                     f"the seed means, Bonferroni over {pairs[0]['pairs']} pairs): "
                     + "; ".join(_pair_sentences(pairs, label)) + ".")
    if few:
        parts.append(f"Fewer than {MIN_SEEDS} training seeds, no claim about the recipe: {', '.join(few)}.")
    return " ".join(parts)


def verdict(rows: list[dict], level: float = LEVEL) -> str:
    """The report's verdict: real differences between trained models and, from seed
    replicates, between recipes, each at ``level`` family-wise; what is not ranked and why."""
    replicated = any(m["seeds"] > 1 for m in key_means(rows, level).values())
    models = None if replicated else _models_sentence(rows, level)  # with seeds, the keys speak
    parts = [s for s in (models, _recipes_sentence(rows, level)) if s]
    excluded = _excluded(rows)
    if excluded:
        parts.append("; ".join(excluded) + ".")
    if not model_pairs(rows, level):
        parts.insert(0, "Fewer than two runs have a headline figure with an interval: nothing to rank.")
    return " ".join(parts)


def key_table(rows: list[dict], level: float = LEVEL) -> list[str]:
    """One line per base key trained at several seeds: its mean with the t interval."""
    means = {k: m for k, m in key_means(rows, level).items() if m["seeds"] > 1}
    if not means:
        return []
    lines = [f"| key | seeds | mean headline [{level:.0%} interval over seeds] | per seed |", "|---|---|---|---|"]
    for key, m in means.items():
        per_seed = ", ".join(f"{run}: {figures.num(v)}" for run, v in zip(m["runs"], m["values"]))
        lines.append(f"| {key} | {m['seeds']} | {_bounds(m)} | {per_seed} |")
    return lines


def _change(before: list[dict], after: list[dict], level: float) -> dict | None:
    """after − before: Welch's over training seeds when both have several, else the paired
    bootstrap of the two trained models; None when either lacks what that needs."""
    if len(before) > 1 and len(after) > 1:
        seeds = lambda rs: {"values": [r["headline_value"] for r in rs], "jackknifes": _jackknifes(rs)}  # noqa: E731
        return {**_seed_difference(seeds(after), seeds(before), level), "by": "seeds"}
    a, b = figure_of(before[0]), figure_of(after[0])
    if len(before) > 1 or len(after) > 1 or not (figures.ranked(a) and figures.ranked(b)):
        return None
    diff = intervals.difference(b["figure"], b["replicates"], a["figure"], a["replicates"], floor=float(a["floor"]),
                                level=level, jackknife_a=b.get("jackknife"), jackknife_b=a.get("jackknife"))
    return {**diff, "by": "models"}


def _rung_cell(rung: dict) -> str:
    return "; ".join(f"`{s}` {show(a)} → {show(b)}" for s, (a, b) in rung["values"].items())


def ladder_table(rows: list[dict], params, spec: str, level: float = LEVEL) -> list[str]:
    """One line per rung of an ablation ladder (config/ladder.py): what it changes, its headline
    (the mean over its seeds where it has several) and the change from the rung before with its
    interval, each at the Bonferroni level over the ladder's rungs; empty when fewer than two
    of its runs are in the report."""
    ladder = parse_ladder(spec, "compare.ladders")
    keys, steps, groups = ladder_keys(params, ladder), rungs(params, ladder), seed_groups(rows)
    if sum(k in groups for k in keys) < 2:
        return []
    each = intervals.family_level(level, len(steps))
    label = rows[0].get("headline_label") or ""
    lines = [f"Ablation ladder `{spec}`: each rung changes the settings named, the change is the rung's "
             f"headline minus the rung before's ({label}; negative is better), at {level:.0%} family-wise "
             f"(Bonferroni over {len(steps)} rungs).", "",
             "| rung | run | changes | headline | change from the rung before | |", "|---|---|---|---|---|---|"]
    means = key_means(rows, level)
    start = keys[0]
    lines.append(f"| 0 | {start} | (start) | {_mean_cell(means.get(start))} | - | |")
    for i, (rung, key, before) in enumerate(zip(steps, keys[1:], keys[:-1]), 1):
        change = _change(groups[before], groups[key], each) if before in groups and key in groups else None
        verdict_cell = "-" if change is None else (("better" if change["estimate"] < 0 else "worse")
                                                   if change["separated"] else "not separated")
        lines.append(f"| {i} | {key} | {_rung_cell(rung)} | {_mean_cell(means.get(key))} | "
                     f"{'-' if change is None else _bounds(change)} | {verdict_cell} |")
    return lines


def _mean_cell(mean: dict | None) -> str:
    if mean is None:
        return "not run"
    if mean["seeds"] == 1:
        return figures.num(mean["estimate"])
    return f"{_bounds(mean)} ({mean['seeds']} seeds)"
