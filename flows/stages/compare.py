"""The comparison of a data set's runs (run keys: a framework, or framework-recipe, optionally
at a training seed).

``reports/compare.md`` reads at a glance: first one line per run (framework, recipe, steps
trained, sampler and NFE, the headline figure over its floor with its 95% interval, the raw
figure beside its floor, NLL with its interval), each key's mean over training seeds where it
has several, then the verdict (``flows.stages.verdict``: differences whose interval excludes
zero at 95% family-wise confidence, pairs not separated, runs not ranked and why), and the
registry's champion with the versions it does not rank; then every metric, quality against NFE
(each point over its floor at its own sample count), and the plots. Written to a report folder, logged to an
MLflow run ``compare`` of the data set's experiment, and returned as markdown for a Prefect
artifact.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from diffusion_core.data.atomic import write_json, write_text  # noqa: E402
from flows.config.params import Params  # noqa: E402
from flows.config.recipes import split_run  # noqa: E402
from flows.stages import plots  # noqa: E402
from flows.stages.verdict import (  # noqa: E402
    figure_of,
    key_means,
    key_pairs,
    key_table,
    ladder_table,
    model_pairs,
    verdict,
)
from flows.tracking import figures, registry  # noqa: E402
from flows.tracking import runs as tracking  # noqa: E402
from flows.tracking.costs import read_costs  # noqa: E402

# the wide table, in this order; a column shows when some run has it
COLUMNS = ("fd_at_n", "fd_floor", "fd_ratio", "fid", "kid", "kid_floor", "precision",
           "precision_floor", "recall", "recall_floor", "class_coverage", "swd", "swd_floor", "swd_ratio",
           "mmd", "mmd_floor", "off_support", "nn_ratio", "nll", "nll_sem", "vlb_total")
NLL_Z = 1.959963984540054  # the NLL's 95% interval: its mean over many held-out points is near normal
# a figure and the flag saying it is within its floor
WITHIN = {"fd_at_n": "fd_within_floor", "fd_ratio": "fd_within_floor", "kid": "kid_within_floor",
          "precision": "precision_within_floor", "recall": "recall_within_floor",
          "swd": "swd_within_floor", "swd_ratio": "swd_within_floor"}


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run {what} first")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def run_row(params: Params, key: str) -> dict:
    """One run's figures from its files alone: evaluation metrics with the headline figure and
    how it was measured, the model's framework and recipe, training steps, sampling speed."""
    metrics = _read_json(Path(params.evaluate.out_dir) / f"{key}.json", "the evaluate stage")
    model_dir = Path(params.train.out_dir) / key
    train = _read_json(model_dir / "train_summary.json", "the train stage")
    sampling = _read_json(Path(params.sample.out_dir) / key / "sampling.json", "the sample stage")
    config = json.loads((model_dir / "model.json").read_text()) if (model_dir / "model.json").is_file() else {}
    figure = figures.headline(metrics) or {}
    row = {"framework": key, "base_framework": config.get("framework", split_run(key)[0]),
           "recipe": metrics.get("recipe") or config.get("recipe", "custom"),
           "sampler": metrics.get("sampler"), "nfe": metrics.get("nfe"),
           "train_seconds": train.get("train_seconds"), "train_steps": train.get("steps"),
           "planned_steps": train.get("planned_steps"), "stopped_by": train.get("stopped_by", "steps"),
           "sample_samples_per_s": sampling.get("samples_per_s"), "num_samples": metrics.get("num_samples"),
           "nll_unit": metrics.get("nll_unit"), "measured": figures.measurement_tags(metrics),
           "feature_extractor_split": metrics.get("feature_extractor_split"),
           **{f"headline_{k}": v for k, v in figure.items()}}
    row.update({k: metrics[k] for k in COLUMNS if _number(metrics.get(k))})
    row.update({f"{k}_{end}": metrics[f"{k}_{end}"] for k in COLUMNS for end in ("low", "high")
                if _number(metrics.get(f"{k}_{end}"))})
    row.update({flag: metrics[flag] for flag in set(WITHIN.values()) if isinstance(metrics.get(flag), bool)})
    if _number(metrics.get("fd_n")):
        row["fd_n"] = metrics["fd_n"]
    return row


def framework_row(params: Params, key: str) -> dict:
    """``run_row`` with the training throughput and run id of the key's MLflow run."""
    row = run_row(params, key)
    run = tracking.client().get_run(tracking.load_run_id(Path(params.train.out_dir) / key))
    row.update(train_samples_per_s=run.data.metrics.get("samples_per_s"), run_id=run.info.run_id)
    return row


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


def plot_quality_vs_nfe(sweep: dict, path: Path, title: str) -> None:
    """One line per (run, sampler): the figure over its floor against NFE (log scale), or the
    raw figure when some point has no floor."""
    fig, ax = plt.subplots(figsize=(6, 4))
    points = [p for pts in sweep.values() for p in pts]
    over_floor = bool(points) and all(p.get("ratio") is not None for p in points)
    metric = points[0]["metric"] if points else "quality"
    for key, pts in sweep.items():
        for sampler in sorted({p["sampler"] for p in pts}):
            chosen = sorted((p for p in pts if p["sampler"] == sampler), key=lambda p: p["nfe"])
            ax.plot([p["nfe"] for p in chosen], [p["ratio" if over_floor else "value"] for p in chosen],
                    "o-", label=f"{key} / {sampler}")
    ax.set_xscale("log")
    ax.set_xlabel("NFE (network evaluations per sample)")
    ax.set_ylabel(f"{metric}/floor (1 = real data)" if over_floor else f"{metric} (lower is better)")
    ax.set_title(title)
    if sweep:
        ax.legend(fontsize=8)
    plots.save_figure(fig, path)


def plot_side_by_side(samples: dict, real: np.ndarray, path: Path) -> None:
    """One panel per framework: an image grid, or a scatter over held-out data for 2-D."""
    fig, axes = plt.subplots(1, max(1, len(samples)), figsize=(4 * max(1, len(samples)), 4), squeeze=False)
    for ax, (framework, x) in zip(axes[0], samples.items()):
        if x.ndim == 4:
            grid = plots.image_grid(x[:64], columns=8)
            ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1)
            ax.axis("off")
        else:
            ax.scatter(real[:, 0], real[:, 1], s=1, alpha=0.3)
            ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.3)
            ax.set_aspect("equal")
        ax.set_title(framework)
    plots.save_figure(fig, path)


def _sweep(params: Params, framework: str) -> list[dict]:
    path = Path(params.evaluate.out_dir) / f"{framework}_nfe.json"
    return json.loads(path.read_text())["points"] if path.is_file() else []


def _registry_view(dataset: str) -> tuple[str | None, list[dict]]:
    """The champion's URI and the registry versions not ranked against the newest (with the
    reason); (None, []) before anything is registered."""
    try:
        table = registry.ranking(dataset)
    except ValueError:
        return None, []
    not_ranked = [{"name": v["name"], "version": v["version"], "reason": v["reason"]} for v in table["not_ranked"]]
    try:
        return registry.champion_uri(dataset), not_ranked
    except ValueError:
        return None, not_ranked


COMPARE_SOURCE = "flows/stages/compare.py"


def _mlflow_server() -> str:
    """The tracking server's address, or `mlflow ui`'s default for a local store."""
    uri = tracking.tracking_uri()
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"


def _view_lines(link: str) -> str:
    """Where the report's runs sit in MLflow: the runs list on the comparison view (MLflow
    keeps a chosen view in the browser only, so the link carries it)."""
    return ("\n\n## In MLflow\n\nThe runs list with recipe, steps, headline and the headline metric "
            f"(the comparison view, best first): <{link}>\n")


def compare(params: Params, out_dir: str | Path = "reports") -> dict:
    """Write the report for every run key of params.train.frameworks and log it to MLflow;
    every input is read (and checked) before anything is written."""
    from diffusion_core.data import shards

    dataset = params.data.dataset
    keys = params.train.frameworks
    rows = [framework_row(params, key) for key in keys]
    sweep = {key: points for key in keys if (points := _sweep(params, key))}
    samples = {key: np.load(Path(params.sample.out_dir) / key / "samples.npz")["x"] for key in keys}
    champion, not_ranked = _registry_view(dataset)
    costs = read_costs(keys)
    real, _ = shards.load_split(params.data.out_dir, "test")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_quality_vs_nfe(sweep, out / "quality_vs_nfe.png", f"{dataset}: quality against cost")
    plot_side_by_side(samples, real, out / "samples_side_by_side.png")
    headline_metric = next((f"eval_{r['headline_metric']}" for r in rows if r.get("headline_metric")),
                           "eval_fd_ratio")
    view = tracking.view_link(tracking.save_comparison_view(dataset, headline_metric), _mlflow_server())
    ladders = [table for spec in params.compare.ladders if (table := ladder_table(rows, params, spec))]
    report = markdown(dataset, rows, sweep, champion, not_ranked, costs, ladders) + _view_lines(view)
    write_text(out / "compare.md", report)
    summary = {"dataset": dataset, "rows": rows, "verdict": verdict(rows), "model_pairs": model_pairs(rows),
               "key_means": key_means(rows), "key_pairs": key_pairs(rows), "quality_vs_nfe": sweep,
               "champion": champion, "not_ranked": not_ranked, "stage_costs": costs}
    write_json(out / "compare.json", summary)
    run_id = tracking.start_run(dataset, "compare", {"frameworks": list(keys)},
                                {"kind": "compare", "dataset": dataset, "data_source": params.data.source}, source=COMPARE_SOURCE)
    with tracking.stage_run(run_id):  # FINISHED once the report is logged
        tracking.log_metrics(run_id, {f"{r['framework']}_{k}": v for r in rows for k, v in r.items()})
        tracking.log_metrics(run_id, {f"cost_{c['stage']}{'_' + c['run'] if c.get('run') else ''}_{k}": c[k]
                                      for c in costs for k in ("seconds", "peak_rss_mb")})
        tracking.log_artifacts(run_id, out, "report")
    return {**summary, "markdown": report, "run_id": run_id, "report_dir": str(out)}


def compare_and_publish(params: Params) -> dict:
    """``compare`` into compare.out_dir, then ``publish`` (the CLI and the Prefect task)."""
    result = compare(params, params.compare.out_dir)
    result["published"] = publish(result["markdown"], result["dataset"])
    return result


def publish(markdown_text: str, dataset: str) -> bool:
    """The report as a Prefect markdown artifact, inside a flow or task run or through a
    Prefect API set by PREFECT_API_URL. Run on its own (`dvc repro`) with neither, it is not
    published: Prefect would start an ephemeral server just for it, a path it deprecates.
    The report is already on disk and in MLflow, so a Prefect API that cannot be reached is
    reported and not fatal."""
    import httpx
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.settings import PREFECT_API_URL

    if not (FlowRunContext.get() or TaskRunContext.get() or PREFECT_API_URL.value()):
        print("compare: not published as a Prefect artifact (no flow run, no PREFECT_API_URL); "
              "the report is in compare.out_dir and MLflow")
        return False
    key = "compare-" + "".join(c if c.isalnum() else "-" for c in dataset.lower())
    try:
        create_markdown_artifact(markdown_text, key=key, description=f"Framework comparison on {dataset}")
    except (RuntimeError, OSError, httpx.HTTPError) as err:  # the API did not answer
        print(f"compare: not published as a Prefect artifact ({err}); the report is in MLflow")
        return False
    print(f"compare: published as the Prefect artifact {key!r}")
    return True
