"""The comparison report's markdown, rendered from the rows of `compare.run_row`.

``reports/compare.md`` reads at a glance: first one line per run (framework, recipe, steps
trained, sampler and NFE, the headline figure over its floor with its 95% interval, the raw
figure beside its floor, NLL with its interval), each key's mean over training seeds where it
has several, then the verdict (``flows.stages.verdict``: differences whose interval excludes
zero at 95% family-wise confidence, pairs not separated, runs not ranked and why), and the
registry's champion with the versions it does not rank; then every metric, quality against NFE
(each point over its floor at its own sample count), and the plots, which ``compare`` draws
beside it.
"""
from __future__ import annotations

from flows.stages.verdict import figure_of, key_table, verdict
from flows.tracking import figures

# the wide table, in this order; a column shows when some run has it
COLUMNS = ("fd_at_n", "fd_floor", "fd_ratio", "fid", "kid", "kid_floor", "precision",
           "precision_floor", "recall", "recall_floor", "class_coverage", "swd", "swd_floor", "swd_ratio",
           "mmd", "mmd_floor", "off_support", "nn_ratio", "nll", "nll_sem", "vlb_total")
NLL_Z = 1.959963984540054  # the NLL's 95% interval: its mean over many held-out points is near normal
# a figure and the flag saying it is within its floor
WITHIN = {"fd_at_n": "fd_within_floor", "fd_ratio": "fd_within_floor", "kid": "kid_within_floor",
          "precision": "precision_within_floor", "recall": "recall_within_floor",
          "swd": "swd_within_floor", "swd_ratio": "swd_within_floor"}


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _steps_cell(row: dict) -> str:
    steps, planned = row.get("train_steps"), row.get("planned_steps")
    text = _cell(steps) if planned in (None, steps) else f"{_cell(steps)} of {planned}"
    return text + (" (stopped by time cap)" if row.get("stopped_by") == "time_limit" else "")


def _headline_cell(row: dict) -> str:
    if row.get("headline_value") is None:
        return "-"
    return figures.headline_text(figure_of(row))


def _floor_cell(row: dict) -> str:
    """The raw figure beside its floor, at the size they were measured."""
    if "fd_at_n" in row and "fd_floor" in row:
        return f"FD {row['fd_at_n']:.4g} vs floor {row['fd_floor']:.4g} (n={_cell(row.get('fd_n'))})"
    if "swd" in row and "swd_floor" in row:
        return f"SWD {row['swd']:.4g} vs floor {row['swd_floor']:.4g} (n={_cell(row.get('num_samples'))})"
    return "-"


def _nll_cell(row: dict) -> str:
    """NLL with its 95% interval (mean ± 1.96 standard errors over the held-out points)."""
    if row.get("nll") is None:
        return "-"
    half = NLL_Z * row["nll_sem"] if row.get("nll_sem") is not None else None
    bounds = f" [{row['nll'] - half:.4g}, {row['nll'] + half:.4g}]" if half is not None else ""
    return f"{row['nll']:.4g}{bounds} {row.get('nll_unit') or ''}".rstrip()


def summary_table(rows: list[dict]) -> list[str]:
    """The at-a-glance table: one line per run key."""
    lines = ["| run | framework | recipe | steps trained | sampler (NFE) | headline [95% interval] (lower is "
             "better) | figure vs floor | NLL [95% interval] |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r["framework"], _cell(r.get("base_framework")), _cell(r.get("recipe")), _steps_cell(r),
                 f"{_cell(r.get('sampler'))} ({_cell(r.get('nfe'))})", _headline_cell(r), _floor_cell(r),
                 _nll_cell(r)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _bounds_cell(row: dict, key: str) -> str:
    """' [low, high]' where the figure carries its 95% interval."""
    low, high = row.get(f"{key}_low"), row.get(f"{key}_high")
    return "" if low is None or high is None else f" [{low:.4g}, {high:.4g}]"


def wide_table(rows: list[dict]) -> list[str]:
    """Every metric of every run, with its 95% interval where it has one; a figure within its
    floor says so."""
    keys = ["sampler", "nfe"] + [k for k in COLUMNS if any(k in r for r in rows)] + [
        "train_steps", "stopped_by", "train_seconds", "train_samples_per_s", "sample_samples_per_s", "num_samples"]
    lines = ["| framework | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for r in rows:
        cells = [_cell(r.get(k)) + _bounds_cell(r, k) + (" (within floor)" if r.get(WITHIN.get(k, "")) is True else "")
                 for k in keys]
        lines.append(f"| {r['framework']} | " + " | ".join(cells) + " |")
    return lines


def sweep_table(sweep: dict) -> list[str]:
    """Quality against NFE: each point's figure over its floor at the point's sample count."""
    lines = ["| run | sampler | steps | NFE | samples | metric | value | floor | value/floor |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, points in sweep.items():
        for p in points:
            ratio = "-" if p.get("ratio") is None else f"{p['ratio']:.3g}"
            lines.append(f"| {key} | {p['sampler']} | {p.get('steps', '-')} | {p['nfe']} | "
                         f"{_cell(p.get('num_samples'))} | {p['metric']} | {p['value']:.4g} | "
                         f"{_cell(p.get('floor'))} | {ratio} |")
    return lines


def _registry_lines(champion: str | None, not_ranked) -> list[str]:
    lines = [f"Champion (registry alias): `{champion}`" if champion else "No champion registered."]
    if not_ranked:
        lines += ["", "Registry versions not ranked against the newest (measured differently):", ""]
        lines += [f"- `{v['name']}` version {v['version']}: {v['reason']}" for v in not_ranked]
    return lines


def cost_table(costs: list[dict]) -> list[str]:
    """One line per stage run: wall time and peak resident memory on the driver's node."""
    lines = ["| stage | run | wall time (s) | peak memory (MiB) |", "|---|---|---|---|"]
    return lines + [f"| {c['stage']} | {c.get('run') or '-'} | {c['seconds']:.1f} | {c['peak_rss_mb']:.0f} |"
                    for c in costs]


HEADLINE_WHY = {  # by the feature extractor's training split: why FD/floor in its features heads the report
    "classifier": "FD/floor in the features of a small CNN classifier trained on the labelled `classifier` "
                  "split alone, over its floor: the offline stand-in for FID (which needs local Inception-v3 weights)",
    "extractor": "FD/floor in the features of a small CNN trained contrastively (SimCLR, no labels) on the "
                 "`extractor` split alone, over its floor: the images carry no labels to train a classifier on, "
                 "and FID needs local Inception-v3 weights",
}


def _headline_why(rows: list[dict]) -> list[str]:
    splits = sorted({r["feature_extractor_split"] for r in rows if r.get("feature_extractor_split") in HEADLINE_WHY})
    return [f"Headline: {'; '.join(HEADLINE_WHY[s] for s in splits)}.", ""] if splits else []


def markdown(dataset: str, rows: list[dict], sweep: dict, champion: str | None, not_ranked=(),
             costs=(), ladders=()) -> str:
    """The report: the at-a-glance table, the verdict and the champion, then every metric,
    quality against NFE, what each stage cost, and the figures."""
    keys = key_table(rows)
    lines = [f"# Framework comparison on `{dataset}`", "", *summary_table(rows), "",
             *(["Each key over its training seeds:", "", *keys, ""] if keys else []),
             f"**Verdict:** {verdict(rows)}", "", *[line for table in ladders for line in (*table, "")],
             *_registry_lines(champion, not_ranked), "", *_headline_why(rows),
             "## Every metric", "", *wide_table(rows)]
    if sweep:
        lines += ["", "## Quality against NFE", "", *sweep_table(sweep)]
    if costs:
        lines += ["", "## What each stage cost", "", *cost_table(costs)]
    lines += ["", "![quality against NFE](quality_vs_nfe.png)", "",
              "![samples side by side](samples_side_by_side.png)"]
    return "\n".join(lines) + "\n"
