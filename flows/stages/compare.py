"""The compare stage: the figures of a data set's runs (run keys: a framework, or
framework-recipe, optionally at a training seed) read from their files, the report
(``compare_report.markdown``) with its plots written to a report folder, logged to an MLflow
run ``compare`` of the data set's experiment, and published as a Prefect markdown artifact.
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
from flows.stages.compare_report import COLUMNS, WITHIN, markdown  # noqa: E402
from flows.stages.verdict import key_means, key_pairs, ladder_table, model_pairs, verdict  # noqa: E402
from flows.tracking import figures, registry, ui  # noqa: E402
from flows.tracking import runs as tracking  # noqa: E402
from flows.tracking.costs import read_costs  # noqa: E402
from flows.tracking.run_status import stage_run  # noqa: E402


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
    view = ui.view_link(ui.save_comparison_view(dataset, headline_metric), _mlflow_server())
    ladders = [table for spec in params.compare.ladders if (table := ladder_table(rows, params, spec))]
    report = markdown(dataset, rows, sweep, champion, not_ranked, costs, ladders) + _view_lines(view)
    write_text(out / "compare.md", report)
    summary = {"dataset": dataset, "rows": rows, "verdict": verdict(rows), "model_pairs": model_pairs(rows),
               "key_means": key_means(rows), "key_pairs": key_pairs(rows), "quality_vs_nfe": sweep,
               "champion": champion, "not_ranked": not_ranked, "stage_costs": costs}
    write_json(out / "compare.json", summary)
    run_id = tracking.start_run(dataset, "compare", {"frameworks": list(keys)},
                                {"kind": "compare", "dataset": dataset, "data_source": params.data.source}, source=COMPARE_SOURCE)
    with stage_run(run_id):  # FINISHED once the report is logged
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
