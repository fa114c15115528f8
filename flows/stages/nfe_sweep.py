"""Quality against cost: FD (images, in the in-domain classifier's features) or sliced
Wasserstein-2 (vectors) against held-out data, at several NFE for each sampler of a framework.

Each point is drawn by the distributed sampler into its own resumable parts folder, with the
sample stage's seeds, so a point is the same samples however many workers drew it.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from diffusion_core.data import shards  # noqa: E402
from diffusion_core.data.atomic import write_json  # noqa: E402
from diffusion_core.evaluation import metrics  # noqa: E402
from diffusion_core.evaluation.frechet import frechet_distance_from_features  # noqa: E402
from flows.config.params import Params, params_with_sampler  # noqa: E402
from flows.config.sweep import sweep_points  # noqa: E402
from flows.distributed import sample_ray  # noqa: E402
from flows.stages import plots  # noqa: E402


class _Quality:
    """The sweep's quality metric against the reference split, evaluate.split (loaded once):
    FD in the in-domain feature extractor's features for images (a classifier's, or the
    contrastive network's for unlabelled images), else sliced Wasserstein-2 of vectors."""

    def __init__(self, params: Params):
        self.split = params.evaluate.split
        self.test, _ = shards.load_split(params.data.out_dir, self.split)
        self.params, self.classifier, self.extractor_sha256 = params, None, None
        summary = Path(params.classifier.out_dir) / "classifier_metrics.json"
        if self.test.ndim == 4 and summary.is_file() and json.loads(summary.read_text()).get("applicable"):
            from diffusion_core.features import classifier as clf
            from diffusion_core.features.contrastive import load_feature_network

            self.classifier = load_feature_network(params.classifier.out_dir)
            self.test_feats = clf.extract_features(self.classifier, self.test)
            self.extractor_sha256 = clf.classifier_hash(params.classifier.out_dir)

    def __call__(self, x) -> tuple[str, float]:
        if self.classifier is None:
            p = self.params.evaluate
            name = "swd" if x.ndim == 2 else "swd_pixels"
            return name, metrics.sliced_wasserstein(x, self.test, p.swd_projections, p.seed)
        from diffusion_core.features import classifier as clf

        return "fd", frechet_distance_from_features(clf.extract_features(self.classifier, x),
                                                            self.test_feats)


def nfe_sweep(params: Params, framework: str) -> list[dict]:
    """One record per (sampler, steps) of evaluate.nfe_sweep: NFE, the quality metric of
    evaluate.nfe_sweep_samples samples and how it was made. All points are drawn on one pool."""
    meta = shards.read_manifest(params.data.out_dir)[1]
    model_dir = Path(params.train.out_dir) / framework
    process_kind = params.framework(framework).model_parts(params.profile(meta["kind"]))["process"]["kind"]
    points = sweep_points(params.evaluate.nfe_sweep, framework, process_kind)
    if not points:
        return []
    jobs, folders = [], []
    for settings in points:
        run_params = params_with_sampler(params, framework, settings)
        callables = sample_ray.stage_callables(run_params, framework, model_dir, meta["kind"], meta["shape"])
        plan = sample_ray.stage_plan(run_params, framework, meta, params.evaluate.nfe_sweep_samples)
        folders.append(_scratch(params, framework) / "-".join(str(v) for v in settings.values()))
        jobs.append((folders[-1], plan, callables["draw"]))
    sample_ray.draw_many(jobs, callables["load_model"], callables["seeds_of"], params.sample.num_workers,
                         params.sample.cpus_per_worker, label=f"nfe sweep {framework}",
                         gpus_per_worker=params.ray.gpus_per_actor)
    quality, records = _Quality(params), []
    for settings, folder, (_, plan, _) in zip(points, folders, jobs):
        x, nfe = sample_ray.collect(folder, plan, callables["seeds_of"])
        metric, value = quality(x)
        records.append({"sampler": settings["name"], "steps": settings.get("steps", settings.get("steps_per_sigma")), "settings": settings,
                        "nfe": nfe, "metric": metric, "value": value, "num_samples": len(x),
                        "seed": params.sample.seed, "reference_split": quality.split,
                        "num_reference": len(quality.test),
                        "feature_extractor_sha256": quality.extractor_sha256})
    shutil.rmtree(_scratch(params, framework))
    return records


def _scratch(params: Params, framework: str) -> Path:
    """Where the sweep's draws are parked: beside the metrics (a folder every Ray node reaches),
    never inside the sample stage's output, which DVC would then see as changed."""
    return Path(params.evaluate.out_dir).absolute() / f".{framework}-nfe-sweep"


def save(records: list[dict], framework: str, out_dir) -> Path:
    """metrics/<framework>_nfe.json and a plot per sampler of the figure against NFE: over its
    floor when every record carries one (``ratio``, set by the evaluate stage), else raw."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{framework}_nfe.json"
    write_json(path, {"framework": framework, "points": records})
    over_floor = bool(records) and all(r.get("ratio") is not None for r in records)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for sampler in sorted({r["sampler"] for r in records}):
        chosen = sorted((r for r in records if r["sampler"] == sampler), key=lambda r: r["nfe"])
        ax.plot([r["nfe"] for r in chosen], [r["ratio" if over_floor else "value"] for r in chosen],
                "o-", label=sampler)
    metric = records[0]["metric"] if records else "quality"
    ax.set_xscale("log")
    ax.set_xlabel("NFE")
    ax.set_ylabel(f"{metric}/floor (1 = real data)" if over_floor else f"{metric} (lower is better)")
    ax.set_title(f"{framework}: quality against NFE")
    ax.legend()
    plots.save_figure(fig, out / f"{framework}_nfe.png")
    return path
