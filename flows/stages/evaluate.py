"""The evaluate stage: sample quality against held-out data, each figure beside its noise floor
(the same statistic between two independent real sets of the same size), and how it was made
(sample count, reference split and size, feature extractor hash, sampler, NFE, seed, recipe)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from diffusion_core.data import shards, toys
from diffusion_core.data.atomic import write_json
from diffusion_core.evaluation import intervals, metrics
from flows.config.params import Params
from flows.stages import image_eval, nfe_sweep
from flows.stages.data import extractor_split, manifest_hash
from flows.stages.likelihood_eval import nll_metrics
from flows.tracking import runs as tracking
from flows.tracking import ui
from flows.tracking.costs import measured
from flows.tracking.run_status import stage_run
from flows.tracking.figures import headline, headline_text, measurement


def _swd_floors(train, test, n: int, projections: int, seed: int, draws: int = 8) -> list[float]:
    """SWD of real train draws of n against the held-out set: the floor's range, the spread any
    model's SWD has even when it samples the data exactly."""
    return metrics.subset_statistics(lambda a, b: metrics.sliced_wasserstein(a, b, projections, seed),
                                     train, test, n, draws, seed)


def vector_metrics(samples, test, train, params: Params, source: str) -> dict:
    """Sliced W2 and MMD against held-out data (``test``: the reference split), with floors
    from train subsets of equal size; SWD/floor with its bootstrap interval."""
    n = min(len(samples), len(test))
    samples, test = samples[:n], test[:n]
    e = params.evaluate
    proj, seed, split = e.swd_projections, e.seed, e.split
    floors = _swd_floors(train, test, n, proj, seed)
    out = {
        "swd": metrics.sliced_wasserstein(samples, test, proj, seed),
        "swd_floor": float(np.mean(floors)), "swd_floor_min": float(np.min(floors)),
        "swd_floor_max": float(np.max(floors)), "swd_floor_draws": len(floors),
        "mmd": metrics.mmd_rbf(samples, test),
        "mmd_floor": metrics.subset_statistics(metrics.mmd_rbf, train, test, n, 1, seed)[0],
        "num_samples": n, "num_reference": n, "reference_split": split,
        "floor_split": f"train subsets vs {split}", "feature_extractor": "none (raw coordinates)",
        "feature_extractor_sha256": None,
    }
    out.update(intervals.measure_headline("swd", lambda ref: metrics.sliced_wasserstein_against(ref, proj, seed),
                                          samples, test, train, n, out["swd"], out["swd_floor"], e.bootstrap, seed))
    toy = source.split(":", 1)[1] if source.startswith("toy:") else None
    if toy in ("checkerboard", "gmm8"):
        out["off_support"] = toys.off_support_fraction(toy, samples)
        out["off_support_real"] = toys.off_support_fraction(toy, test)
    return out


def image_metrics(params: Params, sample_dir: Path) -> dict:
    """Every image metric (flows.stages.image_eval): per-shard features on Ray merged in float64, FD
    with its floor, FID when Inception-v3 weights are given, KID, precision/recall, class
    coverage and the memorization check."""
    e = params.evaluate
    return image_eval.image_fidelity(sample_dir / "shards", params.data.out_dir, params.classifier.out_dir,
                                     keep=e.max_pairwise, num_workers=e.num_workers,
                                     cpus_per_worker=e.cpus_per_worker, seed=e.seed, pr_k=e.pr_k,
                                     inception_weights=e.inception_weights,
                                     floor_sizes=(e.nfe_sweep_samples,) if e.nfe_sweep else (),
                                     gpus_per_worker=params.ray.gpus_per_actor, reference_split=e.split,
                                     replicates=e.bootstrap)


def _sweep_floor(params: Params, metric: str, n: int, result: dict) -> float | None:
    """The floor of a sweep figure measured on n samples: FD's from the image metrics
    (``fd_floor_by_n``), SWD's from train draws of n against the reference split; None when
    the train split holds fewer than n."""
    if metric == "fd":
        return result.get("fd_floor_by_n", {}).get(str(n))
    train, _ = shards.load_split(params.data.out_dir, "train")
    if len(train) < n:
        return None
    reference, _ = shards.load_split(params.data.out_dir, params.evaluate.split)
    e = params.evaluate
    return float(np.mean(_swd_floors(train, reference, n, e.swd_projections, e.seed)))


def with_sweep_floors(params: Params, sweep: list[dict], result: dict, recipe: str) -> list[dict]:
    """Each NFE sweep record with the run's recipe, its figure's floor at its own sample
    count and the figure over that floor (``floor``, ``ratio``): a few hundred samples' FD is
    far above the evaluate stage's, and only its ratio to the floor at that size reads."""
    floors = {}
    for record in sweep:
        key = (record["metric"], int(record["num_samples"]))
        if key not in floors:
            floors[key] = _sweep_floor(params, *key, result)
        floor = floors[key]
        record.update(recipe=recipe, floor=floor, ratio=record["value"] / floor if floor else None)
    return sweep


def _recipe(params: Params, framework: str) -> str:
    """The run's recipe from its model config (``custom`` for a config without one)."""
    path = Path(params.train.out_dir) / framework / "model.json"
    return json.loads(path.read_text()).get("recipe", "custom") if path.is_file() else "custom"


def _check_samples(sample_dir: Path, params: Params) -> dict:
    """The sample shards' manifest, checked against the data's shape before any work."""
    sampled = shards.read_manifest(sample_dir / "shards")[1]
    data = shards.read_manifest(params.data.out_dir)[1]
    if sampled["shape"] != data["shape"]:
        raise ValueError(f"{sample_dir / 'shards'}: samples shaped {tuple(sampled['shape'])}, "
                         f"data {tuple(data['shape'])}")
    return data


def with_split(params: Params, split: str | None) -> Params:
    """params with evaluate.split set to `split` (the CLI's --split), checked; unchanged for None."""
    if split is None:
        return params
    evaluate_params = dataclasses.replace(params.evaluate, split=split)
    evaluate_params.check("evaluate")
    return dataclasses.replace(params, evaluate=evaluate_params)


def metrics_dir(params: Params) -> Path:
    """Where the figures go: metrics/ against test (the DVC metric the report reads), and
    metrics/val/ against val, so tuning never overwrites the test figures."""
    out = Path(params.evaluate.out_dir)
    return out if params.evaluate.split == "test" else out / params.evaluate.split


def _check_extractor(params: Params) -> dict:
    """The FD feature extractor's summary, checked before any work: trained on its own split
    (classifier, or extractor for unlabelled images) of these very shards, so that no image of
    the floor's pool (train) or of a reference (val, test) is one it saw."""
    path = Path(params.classifier.out_dir) / "classifier_metrics.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    if not summary.get("applicable"):
        return summary
    meta = shards.read_manifest(params.data.out_dir)[1]
    expected = extractor_split(meta["kind"], bool(meta.get("has_labels")))
    trained_on = summary.get("trained_split", "the train split (a classifier older than the val split)")
    if trained_on != expected or summary.get("data_manifest_sha256") != manifest_hash(params):
        raise ValueError(f"{path}: the FD feature extractor was trained on {trained_on} of other shards "
                         f"than {params.data.out_dir}; run `diffusion train-classifier` again")
    return summary


def _save_and_log(params: Params, framework: str, result: dict, sweep: list[dict]) -> Path:
    """metrics/<framework>.json (a DVC metric) and the NFE sweep, or both under metrics/val/
    against val; then the framework's MLflow run (open: ``evaluate``): metrics prefixed eval_
    (test) or val_."""
    out, split = metrics_dir(params), params.evaluate.split
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{framework}.json"
    write_json(path, result)
    run_id = tracking.load_run_id(Path(params.train.out_dir) / framework)
    ui.log_dataset(run_id, params.data.dataset, split,
                         manifest_hash(params), params.data.out_dir)
    _log_to_run(run_id, framework, split, result, sweep, path)
    return path


def _log_to_run(run_id: str, framework: str, split: str, result: dict, sweep: list[dict], path: Path) -> None:
    """The figures as metrics prefixed eval_ (test) or val_, the headline tags, the files."""
    out = path.parent
    prefix, folder = ("eval_", "metrics") if split == "test" else (f"{split}_", f"metrics/{split}")
    tag = "" if split == "test" else prefix
    tracking.log_metrics(run_id, {f"{prefix}{k}": v for k, v in result.items()})
    figure = headline(result)
    if figure is not None:
        tracking.set_tags(run_id, {f"{tag}headline": headline_text(figure), f"{tag}measurement": measurement(result)})
    tracking.log_artifacts(run_id, path, folder)
    if sweep:
        sweep_path = nfe_sweep.save(sweep, framework, out)
        for point in sweep:
            name = f"{tag}nfe_sweep_{point['sampler']}_{point['metric']}"
            tracking.log_metrics(run_id, {name: point["value"], f"{name}_ratio": point.get("ratio")},
                                 step=int(point["nfe"]))
        tracking.log_artifacts(run_id, sweep_path, folder)
        tracking.log_artifacts(run_id, out / f"{framework}_nfe.png", folder)


def _quality(params: Params, sample_dir: Path, kind: str) -> dict:
    """The samples' figures against the reference split, with floors from train subsets."""
    split = params.evaluate.split
    if kind != "vector":
        return image_metrics(params, sample_dir)
    samples, _ = shards.load_split(sample_dir / "shards", "samples")
    reference, _ = shards.load_split(params.data.out_dir, split)
    train, _ = shards.load_split(params.data.out_dir, "train")
    result = vector_metrics(samples, reference, train, params, params.data.source)
    result.update(reference_split=split, floor_split=f"train subsets vs {split}", feature_extractor_split=None)
    return result


@measured("evaluate")
def evaluate(params: Params, framework: str) -> dict:
    """Compute every metric (and the quality-against-NFE sweep) against evaluate.split first,
    then write metrics/<framework>.json (metrics/val/ for val) and log to the framework's MLflow
    run, RUNNING while it measures (KILLED if stopped): bad input changes nothing."""
    sample_dir = Path(params.sample.out_dir) / framework
    run_id = tracking.load_run_id(Path(params.train.out_dir) / framework)  # names the file if train never ran
    sampling = json.loads((sample_dir / "sampling.json").read_text())
    data = _check_samples(sample_dir, params)
    _check_extractor(params)
    with stage_run(run_id):  # reopened for this stage, ended again
        result = _measure(params, framework, sample_dir, data["kind"], sampling)
    print(f"evaluate {framework} against {params.evaluate.split}: " + ", ".join(
        f"{k}={v:.4g}" for k, v in result.items() if isinstance(v, float)))
    return result


def _measure(params: Params, framework: str, sample_dir: Path, kind: str, sampling: dict) -> dict:
    """The metrics of checked samples, written and logged (``_save_and_log``)."""
    result = _quality(params, sample_dir, kind)
    recipe = _recipe(params, framework)
    result.update(framework=framework, recipe=recipe, sampler=sampling["sampler"], nfe=sampling["nfe"],
                  seed=sampling["seed"], dataset=params.data.dataset,
                  data_source=params.data.source)
    reference, _ = shards.load_split(params.data.out_dir, params.evaluate.split)
    result.update(nll_metrics(params, framework, reference))
    sweep = nfe_sweep.nfe_sweep(params, framework) if params.evaluate.nfe_sweep else []
    sweep = with_sweep_floors(params, sweep, result, recipe)
    _save_and_log(params, framework, result, sweep)
    return result
