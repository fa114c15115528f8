"""The framework comparison: one table of every framework's metrics with training time,
throughput and NFE, the quality-against-NFE plot, and sample grids side by side; written to a
report folder, logged to an MLflow run ``compare`` of the data set's experiment, and returned
as markdown for a Prefect artifact.
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
from flows.stages import plots  # noqa: E402
from flows.tracking import runs as tracking  # noqa: E402

COLUMNS = ("fd_at_n", "fd_floor", "fd_ratio", "fid", "kid", "precision", "recall", "class_coverage",
           "swd", "swd_floor", "mmd", "off_support", "nn_ratio", "nll", "vlb_total")


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run {what} first")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err


def framework_row(params: Params, framework: str) -> dict:
    """One framework's figures: evaluation metrics, training time and throughput, NFE."""
    metrics = _read_json(Path(params.evaluate.out_dir) / f"{framework}.json", "the evaluate stage")
    model_dir = Path(params.train.out_dir) / framework
    train = _read_json(model_dir / "train_summary.json", "the train stage")
    sampling = _read_json(Path(params.sample.out_dir) / framework / "sampling.json", "the sample stage")
    run = tracking.client().get_run(tracking.load_run_id(model_dir))
    row = {"framework": framework, "sampler": metrics.get("sampler"), "nfe": metrics.get("nfe"),
           "train_seconds": train.get("train_seconds"), "train_steps": train.get("steps"),
           "stopped_by": train.get("stopped_by", "steps"),
           "train_samples_per_s": run.data.metrics.get("samples_per_s"),
           "sample_samples_per_s": sampling.get("samples_per_s"),
           "num_samples": metrics.get("num_samples"), "run_id": run.info.run_id}
    row.update({k: metrics[k] for k in COLUMNS if isinstance(metrics.get(k), (int, float))})
    return row


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def markdown(dataset: str, rows: list[dict], sweep: dict, champion: str | None) -> str:
    """The report: the metrics table, then the quality-against-NFE table."""
    keys = ["sampler", "nfe"] + [k for k in COLUMNS if any(k in r for r in rows)] + [
        "train_steps", "stopped_by", "train_seconds", "train_samples_per_s", "sample_samples_per_s", "num_samples"]
    lines = [f"# Framework comparison on `{dataset}`", "",
             f"Champion (registry alias): `{champion}`" if champion else "No champion registered.", "",
             "| framework | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {r['framework']} | " + " | ".join(_cell(r.get(k)) for k in keys) + " |" for r in rows]
    if sweep:
        lines += ["", "## Quality against NFE", "", "| framework | sampler | steps | NFE | metric | value |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {fw} | {p['sampler']} | {p.get('steps', '-')} | {p['nfe']} | {p['metric']} | "
                  f"{p['value']:.4g} |" for fw, points in sweep.items() for p in points]
    lines += ["", "![quality against NFE](quality_vs_nfe.png)", "",
              "![samples side by side](samples_side_by_side.png)"]
    return "\n".join(lines) + "\n"


def plot_quality_vs_nfe(sweep: dict, path: Path, title: str) -> None:
    """One line per (framework, sampler): the quality metric against NFE (log scale)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    metric = "quality"
    for framework, points in sweep.items():
        for sampler in sorted({p["sampler"] for p in points}):
            chosen = sorted((p for p in points if p["sampler"] == sampler), key=lambda p: p["nfe"])
            metric = chosen[0]["metric"]
            ax.plot([p["nfe"] for p in chosen], [p["value"] for p in chosen], "o-",
                    label=f"{framework} / {sampler}")
    ax.set_xscale("log")
    ax.set_xlabel("NFE (network evaluations per sample)")
    ax.set_ylabel(f"{metric} (lower is better)")
    ax.set_title(title)
    if sweep:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _sweep(params: Params, framework: str) -> list[dict]:
    path = Path(params.evaluate.out_dir) / f"{framework}_nfe.json"
    return json.loads(path.read_text())["points"] if path.is_file() else []


def compare(params: Params, out_dir: str | Path = "reports") -> dict:
    """Write the report for every framework of params.train.frameworks and log it to MLflow;
    every input is read (and checked) before anything is written."""
    from diffusion_core.data import shards
    from flows.tracking.registry import champion_uri

    dataset = tracking.experiment_name(params.data.source)
    rows = [framework_row(params, fw) for fw in params.train.frameworks]
    sweep = {fw: points for fw in params.train.frameworks if (points := _sweep(params, fw))}
    samples = {fw: np.load(Path(params.sample.out_dir) / fw / "samples.npz")["x"]
               for fw in params.train.frameworks}
    try:
        champion = champion_uri(dataset)
    except ValueError:
        champion = None
    real, _ = shards.load_split(params.data.out_dir, "test")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_quality_vs_nfe(sweep, out / "quality_vs_nfe.png", f"{dataset}: quality against cost")
    plot_side_by_side(samples, real, out / "samples_side_by_side.png")
    report = markdown(dataset, rows, sweep, champion)
    write_text(out / "compare.md", report)
    summary = {"dataset": dataset, "rows": rows, "quality_vs_nfe": sweep, "champion": champion}
    write_json(out / "compare.json", summary)
    run_id = tracking.start_run(dataset, "compare", {"frameworks": list(params.train.frameworks)},
                                {"kind": "compare", "dataset": params.data.source})
    tracking.log_metrics(run_id, {f"{r['framework']}_{k}": v for r in rows for k, v in r.items()})
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
