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
from flows.config.recipes import run_seed
from flows.tracking import figures

LEVEL = figures.LEVEL
MIN_SEEDS = 3  # the fewest training seeds a claim about a recipe rests on
FIELDS = ("metric", "value", "label", "within_floor", "se", "low", "high", "level", "replicates", "figure", "floor")


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
            f"bootstrap over samples, reference and floor): ")
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


def key_means(rows: list[dict], level: float = LEVEL) -> dict[str, dict]:
    """Each base key's headline over its training seeds: mean, t interval, per-seed values."""
    return {key: {**intervals.seed_mean([r["headline_value"] for r in rs], level),
                  "values": [r["headline_value"] for r in rs], "runs": [r["framework"] for r in rs]}
            for key, rs in seed_groups(rows).items()}


def key_pairs(rows: list[dict], level: float = LEVEL) -> list[dict]:
    """Keys with at least MIN_SEEDS seeds, pairwise by Welch's interval at ``level`` family-wise."""
    means = {k: m for k, m in key_means(rows, level).items() if m["seeds"] >= MIN_SEEDS}
    ordered = sorted(means.items(), key=lambda km: km[1]["estimate"])
    pairs = list(combinations(ordered, 2))
    each = intervals.family_level(level, len(pairs))
    return [{"a": a, "b": b, **intervals.seed_difference(mb["values"], ma["values"], each), "pairs": len(pairs)}
            for (a, ma), (b, mb) in pairs]


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
