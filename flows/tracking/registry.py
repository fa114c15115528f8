"""The MLflow model registry: each trained run key as ``<dataset>-<key>``, a pyfunc whose predict
draws samples, and the alias ``champion`` on the best version of a data set.

``predict(None, params={"num_samples", "seed", "sampler", "steps"})`` returns float32 samples
(N×C×H×W in [-1, 1] for images, N×D for vectors). Sample i of seed s is the pipeline's sample i
of ``sample.seed = s``: the same seed scheme and sampler code as the sample stage.

The primary figure (lower is better) is the floor-normalised one at the held-out size: FD in the
in-domain classifier's features over its floor for images (``fd_ratio``), sliced Wasserstein-2
over its floor for vectors (``swd_ratio``), each with its standard error; records written before
floors fall back to raw FD or SWD. Figures are comparable or not ranked: only versions measured
like the newest one (same figure, feature extractor hash, reference split and size, sample
count) compete for ``champion``, and a challenger takes it only when it beats the current
champion by more than their combined standard error.
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import ParamSchema, ParamSpec

import diffusion_core
import flows
from diffusion_core.data import shards
from flows.config.params import Params, as_dict
from flows.config.recipes import base_key
from flows.tracking import integrity
from flows.tracking import runs as tracking
from flows.tracking import sampler_model
from flows.tracking.costs import measured

ALIAS = "champion"
ARTIFACT = "sampler"
PRIMARY = {"image": "fd", "vector": "swd"}  # the raw figure, for records without a floor
# per kind: the floor-normalised figure, its standard error, its label, its within-floor flag
HEADLINES = {"image": ("fd_ratio", "fd_ratio_sem", "FD/floor", "fd_within_floor"),
             "vector": ("swd_ratio", "swd_ratio_sem", "SWD/floor", "swd_within_floor_range")}
# what makes two figures comparable, as (metrics key, name in a report)
MEASURED_BY = (("feature_extractor_sha256", "feature extractor"), ("reference_split", "reference split"),
               ("num_reference", "reference size"), ("num_samples", "sample count"))


def registered_name(params: Params, framework: str) -> str:
    """``<dataset>-<base key>``: the seed replicates of a run (ddpm-edm.s0, ddpm-edm.s1) are
    versions of one registered model, each tagged with its ``train_seed``."""
    return f"{tracking.experiment_name(params.data.source)}-{base_key(framework)}"


def _signature(sampler: dict, seed: int) -> ModelSignature:
    steps = int(sampler.get("steps", 1000))
    return ModelSignature(inputs=None, outputs=None, params=ParamSchema([
        ParamSpec("num_samples", "long", 16), ParamSpec("seed", "long", seed),
        ParamSpec("sampler", "string", sampler["name"]), ParamSpec("steps", "long", steps)]))


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def data_kind(metrics: dict) -> str | None:
    """'image' or 'vector' by the figures a metrics record holds; None when it holds neither."""
    if any(k in metrics for k in ("fd_ratio", "fd", "fd_at_n")):
        return "image"
    return "vector" if any(k in metrics for k in ("swd_ratio", "swd")) else None


def _ratio_se(metrics: dict, kind: str) -> float | None:
    """The ratio's standard error; for image records written before ``fd_ratio_sem``, the FD's
    own (``fd_at_n_sem``) over the floor."""
    se = metrics.get(HEADLINES[kind][1])
    if se is None and kind == "image" and _finite(metrics.get("fd_at_n_sem")) and metrics.get("fd_floor"):
        se = metrics["fd_at_n_sem"] / metrics["fd_floor"]
    return float(se) if _finite(se) else None


def headline(metrics: dict, kind: str | None = None) -> dict | None:
    """The figure that ranks a run, as {metric, value, se, label, within_floor}: FD/floor or
    SWD/floor at the held-out size with its standard error, else (records without a floor) raw
    FD or SWD with no error; None when the record holds no finite one."""
    kind = kind or data_kind(metrics)
    if kind is None:
        return None
    ratio, _, label, within = HEADLINES[kind]
    if _finite(metrics.get(ratio)):
        return {"metric": ratio, "value": float(metrics[ratio]), "se": _ratio_se(metrics, kind),
                "label": label, "within_floor": metrics.get(within)}
    raw = PRIMARY[kind]
    if _finite(metrics.get(raw)):
        return {"metric": raw, "value": float(metrics[raw]), "se": None, "label": raw.upper(),
                "within_floor": None}
    return None


def headline_text(figure: dict) -> str:
    """'FD/floor 1.52 ± 0.08 (within floor)': the figure as a report and a run tag show it."""
    se = "?" if figure["se"] is None else f"{figure['se']:.2g}"
    within = " (within floor)" if figure.get("within_floor") else ""
    return f"{figure['label']} {figure['value']:.3g} ± {se}{within}"


def _tag(value) -> str:
    return "" if value is None else str(value)


def measurement(metrics: dict) -> str:
    """How a record's figures were measured, as a short stable string: the feature extractor's
    sha256 (first 12 hex digits), the reference split and its size, the sample count."""
    sha = metrics.get("feature_extractor_sha256")
    return (f"extractor={sha[:12] if sha else 'none'} reference={_tag(metrics.get('reference_split'))}:"
            f"{_tag(metrics.get('num_reference'))} samples={_tag(metrics.get('num_samples'))}")


def measurement_tags(metrics: dict, kind: str | None = None) -> dict:
    """The strings that decide comparability (as registry tags hold them): the primary
    figure's name, ``measurement`` and each field of MEASURED_BY."""
    figure = headline(metrics, kind)
    return {"primary_metric": figure["metric"] if figure else "", "measurement": measurement(metrics),
            **{key: _tag(metrics.get(key)) for key, _ in MEASURED_BY}}


def _short(value: str) -> str:
    return value[:12] if len(value) == 64 else (value or "none")  # a sha256 by its head


def not_comparable(tags: dict, reference: dict) -> str | None:
    """Why a figure measured as ``tags`` is not ranked against one measured as ``reference``
    (both as ``measurement_tags`` gives them); None when they were measured alike."""
    if tags.get("primary_metric") != reference.get("primary_metric"):
        return f"another figure ({tags.get('primary_metric')} vs {reference.get('primary_metric')})"
    mine, theirs = tags.get("measurement", ""), reference.get("measurement", "")
    if mine == theirs:
        return None
    if not mine or not theirs:
        return "how it was measured is not recorded (registered before figures recorded it)"
    diffs = [f"{label} {_short(tags.get(key, ''))} vs {_short(reference.get(key, ''))}"
             for key, label in MEASURED_BY if tags.get(key, "") != reference.get(key, "")]
    return "measured with another " + ", ".join(diffs or [f"method ({mine} vs {theirs})"])


def _figure(params: Params, framework: str, kind: str) -> tuple[dict, dict]:
    """The run's headline figure and its metrics record; errors name the file."""
    path = Path(params.evaluate.out_dir) / f"{framework}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the evaluate stage before register")
    metrics = json.loads(path.read_text())
    figure = headline(metrics, kind)
    if figure is None:
        raise ValueError(f"{path} has no finite primary metric {PRIMARY[kind]!r} (nor its "
                         f"floor-normalised {HEADLINES[kind][0]!r})")
    return figure, metrics


def _optional_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def version_tags(figure: dict, metrics: dict, model_dir: Path, key: str) -> dict:
    """A registry version's tags: the headline with its error and how it was measured, and
    what was trained (framework, recipe, steps, training seed) and sampled (sampler, NFE, seed)."""
    config, train = _optional_json(model_dir / "model.json"), _optional_json(model_dir / "train_summary.json")
    return {"primary_metric": figure["metric"], "primary_value": repr(figure["value"]),
            "primary_se": "" if figure["se"] is None else repr(figure["se"]), **measurement_tags(metrics),
            "framework": config.get("framework", key), "run": key,
            "recipe": metrics.get("recipe") or config.get("recipe", "custom"),
            "steps": _tag(train.get("steps")), "stopped_by": _tag(train.get("stopped_by")),
            "sampler": _tag(metrics.get("sampler")), "nfe": _tag(metrics.get("nfe")),
            "train_seed": _tag(train.get("seed")), "sample_seed": _tag(metrics.get("seed"))}


def _save_pyfunc(params: Params, framework: str, model_dir: Path, meta: dict, out: Path) -> None:
    """Write the pyfunc model (weights, config, sampling spec, project code) to ``out``."""
    staging = out.parent / "artifacts"
    (staging / "model").mkdir(parents=True)
    for file in ("model.json", "weights.pt"):  # what DiffusionModel.load reads
        shutil.copy2(model_dir / file, staging / "model" / file)
    sampler = params.framework(framework).sampler
    spec = {"params": as_dict(params), "framework": framework, "kind": meta["kind"],
            "shape": list(meta["shape"]), "sampler": sampler,
            "network": json.loads((model_dir / "model.json").read_text())["network"],
            "defaults": {"num_samples": 16, "seed": params.sample.seed, "sampler": sampler["name"],
                         "steps": int(sampler.get("steps", 1000))}}
    (staging / "spec.json").write_text(json.dumps(spec, indent=2))
    mlflow.pyfunc.save_model(
        str(out), python_model=sampler_model.__file__,  # models from code: no pickle, but run when MLflow loads it
        artifacts={"model_dir": str(staging / "model"), "spec": str(staging / "spec.json")},
        signature=_signature(sampler, params.sample.seed),
        code_paths=[str(Path(diffusion_core.__file__).parent), str(Path(flows.__file__).parent)],
        pip_requirements=["torch==2.13.0", f"mlflow=={mlflow.__version__}", "numpy", "scipy",
                          "pyyaml", "webdataset", "pyarrow"])


@measured("register")
def register(params: Params, framework: str) -> dict:
    """Log the pyfunc into the run's MLflow run, register it as a new version of
    ``<dataset>-<key>`` with its figure and how it was measured, and settle ``champion``."""
    model_dir = Path(params.train.out_dir) / framework
    run_id = tracking.load_run_id(model_dir)  # names the file when train has not run
    meta = shards.read_manifest(params.data.out_dir)[1]
    figure, metrics = _figure(params, framework, meta["kind"])
    name = registered_name(params, framework)
    client = tracking.client()
    with tempfile.TemporaryDirectory() as tmp:
        _save_pyfunc(params, framework, model_dir, meta, Path(tmp) / ARTIFACT)
        digest = integrity.write_manifest(Path(tmp) / ARTIFACT)  # the sha256 of every stored file
        client.log_artifacts(run_id, str(Path(tmp) / ARTIFACT), ARTIFACT)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, tags={"dataset": params.data.source, "framework": base_key(framework)})
    source = f"{client.get_run(run_id).info.artifact_uri}/{ARTIFACT}"
    tags = {**version_tags(figure, metrics, model_dir, framework), integrity.DIGEST_TAG: digest}
    same_run = [v for v in client.search_model_versions(f"name='{name}'") if v.run_id == run_id]
    if same_run:  # registering the same training run again updates its version
        version = same_run[0]
        for key, tag in tags.items():
            client.set_model_version_tag(name, version.version, key, tag)
    else:
        version = client.create_model_version(name, source, run_id=run_id, tags=tags)
    champion = update_champion(tracking.experiment_name(params.data.source), (name, int(version.version)))
    print(f"register: {name} version {version.version} ({headline_text(figure)}); champion: "
          f"{champion['name']} version {champion['version']}")
    return {"name": name, "version": int(version.version), "primary_metric": figure["metric"],
            "primary_value": figure["value"], "primary_se": figure["se"], "champion": champion}


def _versions(client, dataset: str) -> list[dict]:
    """Every version of ``<dataset>-*`` that carries a primary figure, with its tags, creation
    time and whether it holds ``champion``."""
    rows = []
    for model in client.search_registered_models(f"name LIKE '{dataset}-%'"):
        if not model.name.startswith(f"{dataset}-"):
            continue
        holder = (model.aliases or {}).get(ALIAS)
        for v in client.search_model_versions(f"name='{model.name}'"):
            if "primary_value" in v.tags:
                se = v.tags.get("primary_se")
                rows.append({"name": model.name, "version": int(v.version), "tags": dict(v.tags),
                             "value": float(v.tags["primary_value"]), "se": float(se) if se else 0.0,
                             "created": v.creation_timestamp, "champion": str(holder) == str(v.version)})
    return rows


def ranking(dataset: str, newest: tuple[str, int] | None = None) -> dict:
    """The data set's versions split by how they were measured: ``reference`` (``newest``, by
    default the last created), ``ranked`` (measured like it), ``not_ranked`` (each other
    version with the reason) and ``current`` (the version holding ``champion``, or None)."""
    versions = _versions(tracking.client(), dataset)
    if not versions:
        raise ValueError(f"no registered version of data set {dataset!r} carries a primary metric")
    by_id = {(v["name"], v["version"]): v for v in versions}
    if newest is not None and tuple(newest) not in by_id:
        raise ValueError(f"version {newest[1]} of {newest[0]!r} is not a registered version of {dataset!r} "
                         f"with a primary metric")
    reference = by_id[tuple(newest)] if newest else max(versions, key=lambda v: (v["created"], v["version"]))
    ranked, not_ranked = [], []
    for v in versions:
        reason = None if v is reference else not_comparable(v["tags"], reference["tags"])
        if reason:
            not_ranked.append({**v, "reason": reason})
        else:
            ranked.append(v)
    current = next((v for v in versions if v["champion"]), None)
    return {"reference": reference, "ranked": ranked, "not_ranked": not_ranked, "current": current,
            "holders": sorted({v["name"] for v in versions if v["champion"]})}


def choose_champion(ranked: list[dict], current: dict | None) -> dict:
    """The best of ``ranked`` (lowest value; ties: name, then newest version), unless the
    current champion is among them and the best beats it by no more than their combined
    standard error sqrt(se1² + se2²): a difference within the error is no difference."""
    best = min(ranked, key=lambda v: (v["value"], v["name"], -v["version"]))
    keys = {(v["name"], v["version"]) for v in ranked}
    if current is None or (current["name"], current["version"]) not in keys:
        return best
    margin = math.hypot(current["se"], best["se"])
    return best if current["value"] - best["value"] > margin else current


def update_champion(dataset: str, newest: tuple[str, int] | None = None) -> dict:
    """Settle ``champion`` among the versions of ``<dataset>-*`` measured like ``newest`` (by
    default the last created version) by ``choose_champion``, and take it from every other
    registered model of the set. Versions measured otherwise are not ranked (``ranking``)."""
    client = tracking.client()
    table = ranking(dataset, newest)
    chosen = choose_champion(table["ranked"], table["current"])
    client.set_registered_model_alias(chosen["name"], ALIAS, str(chosen["version"]))
    for name in table["holders"]:
        if name != chosen["name"]:
            client.delete_registered_model_alias(name, ALIAS)
    return {"name": chosen["name"], "version": chosen["version"], "primary_value": chosen["value"]}


def champion_uri(dataset: str) -> str:
    """``models:/<dataset>-<framework>@champion`` of the data set's champion."""
    client = tracking.client()
    for model in client.search_registered_models(f"name LIKE '{dataset}-%'"):
        if ALIAS in (model.aliases or {}):
            return f"models:/{model.name}@{ALIAS}"
    raise ValueError(f"no registered model of data set {dataset!r} carries the alias {ALIAS!r}")


def load_sampler(name: str, alias: str = ALIAS):
    """The sampler of ``models:/<name>@<alias>``, built by the installed code from the version's
    JSON and weights once every stored file matches the digests recorded at registration
    (``integrity``): nothing stored runs, and a changed file is refused, naming it. ValueError
    naming the name or alias when the registry does not hold it. The alias is resolved by this
    module's client, so nothing depends on mlflow's process-wide URIs."""
    client = tracking.client()
    try:
        client.get_registered_model(name)
    except MlflowException as err:
        known = sorted(m.name for m in client.search_registered_models())
        raise ValueError(f"registered model {name!r} does not exist; registered: {known}") from err
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        raise ValueError(f"registered model {name!r} has no version with alias {alias!r}") from err
    return integrity.load_verified(version, tracking.tracking_uri())
