"""The MLflow model registry: each trained run key as ``<dataset>-<key>``, a pyfunc whose predict
draws samples, and the alias ``champion`` on the best version of a data set.

``predict(None, params={"num_samples", "seed", "sampler", "steps"})`` returns float32 samples
(N×C×H×W in [-1, 1] for images, N×D for vectors). Sample i of seed s is the pipeline's sample i
of ``sample.seed = s``: the same seed scheme and sampler code as the sample stage.

The primary figure and when two are comparable are ``figures``'s. Only versions measured like
the newest one, each with an interval, compete for ``champion``; a challenger takes it only
when the interval of its difference from the champion excludes zero at 95% family-wise
confidence (``choose_champion``).
"""
from __future__ import annotations

import json
import shutil
import tempfile
import threading
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
from flows.stages.data import manifest_hash
from flows.tracking import integrity
from flows.tracking import figures
from flows.tracking import runs as tracking
from flows.tracking import sampler_model
from flows.tracking import ui
from flows.tracking.costs import measured
from flows.tracking.run_status import stage_run

ALIAS = "champion"
ARTIFACT = "sampler"
def registered_name(params: Params, framework: str) -> str:
    """``<dataset>-<base key>``: the seed replicates of a run (ddpm-edm.s0, ddpm-edm.s1) are
    versions of one registered model, each tagged with its ``train_seed``."""
    return f"{params.data.dataset}-{base_key(framework)}"


def _signature(sampler: dict, seed: int) -> ModelSignature:
    steps = int(sampler.get("steps", 1000))
    return ModelSignature(inputs=None, outputs=None, params=ParamSchema([
        ParamSpec("num_samples", "long", 16), ParamSpec("seed", "long", seed),
        ParamSpec("sampler", "string", sampler["name"]), ParamSpec("steps", "long", steps)]))


def _figure(params: Params, framework: str, kind: str) -> tuple[dict, dict]:
    """The run's headline figure and its metrics record; errors name the file."""
    path = Path(params.evaluate.out_dir) / f"{framework}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the evaluate stage before register")
    metrics = json.loads(path.read_text())
    figure = figures.headline(metrics, kind)
    if figure is None:
        name = figures.PRIMARY[kind]
        raise ValueError(f"{path} has no finite primary metric {name!r} (nor its floor-normalised {name + '_ratio'!r})")
    return figure, metrics


def _tag(value) -> str:
    return "" if value is None else str(value)


def _optional_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def version_tags(figure: dict, metrics: dict, model_dir: Path, key: str) -> dict:
    """A registry version's tags: the headline with its error and how it was measured, and
    what was trained (framework, recipe, steps, training seed) and sampled (sampler, NFE, seed)."""
    config, train = _optional_json(model_dir / "model.json"), _optional_json(model_dir / "train_summary.json")
    interval = {f"primary_{k}": _tag(figure.get(k)) for k in ("se", "low", "high", "level", "figure", "floor")}
    pairs = {f"primary_{k}": figures.replicates_tag(figure[k]) if figure.get(k) else "" for k in ("replicates", "jackknife")}
    return {"primary_metric": figure["metric"], "primary_value": repr(figure["value"]), **interval, **pairs, **figures.measurement_tags(metrics),
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


# Runs side by side (threads of one driver) register one at a time: seed replicates share a
# registered model, and every run's version competes for the data set's champion.
_REGISTERING = threading.Lock()


@measured("register")
def register(params: Params, framework: str) -> dict:
    """Log the pyfunc as a logged model of the run's MLflow run (named after the run key, the
    evaluation metrics linked to it), register it as a new version of ``<dataset>-<key>`` with
    its figure and how it was measured, and settle ``champion``."""
    model_dir = Path(params.train.out_dir) / framework
    run_id = tracking.load_run_id(model_dir)  # names the file when train has not run
    meta = shards.read_manifest(params.data.out_dir)[1]
    figure, metrics = _figure(params, framework, meta["kind"])
    with _REGISTERING, stage_run(run_id):  # reopened for this stage, ended again
        version, name = _register_version(params, framework, run_id, meta, figure, metrics)
        champion = update_champion(params.data.dataset, (name, int(version.version)))
    print(f"register: {name} version {version.version} ({figures.headline_text(figure)}); champion: "
          f"{champion['name']} version {champion['version']}")
    return {"name": name, "version": int(version.version), "primary_metric": figure["metric"],
            "primary_value": figure["value"], "primary_se": figure["se"], "champion": champion,
            "model_id": model_id_of(version)}


def _register_version(params: Params, framework: str, run_id: str, meta: dict, figure: dict, metrics: dict):
    """The logged model and its registry version (the version of the same run again, its
    files and tags replaced, when the run was registered before); (version, name)."""
    model_dir, name, client = Path(params.train.out_dir) / framework, registered_name(params, framework), tracking.client()
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, tags={"dataset": params.data.dataset, "data_source": params.data.source,
                                                     "framework": base_key(framework)})
    same_run = [v for v in client.search_model_versions(f"name='{name}'") if v.run_id == run_id]
    earlier = same_run[0] if same_run else None
    with tempfile.TemporaryDirectory() as tmp:
        _save_pyfunc(params, framework, model_dir, meta, Path(tmp) / ARTIFACT)
        digest = integrity.write_manifest(Path(tmp) / ARTIFACT)  # the sha256 of every stored file
        model_id = _log_model(client, run_id, framework, Path(tmp) / ARTIFACT, earlier)
    _link_metrics(params, run_id, model_id, metrics)
    tags = {**version_tags(figure, metrics, model_dir, framework), integrity.DIGEST_TAG: digest}
    if earlier is not None:  # registering the same training run again updates its version
        for key, tag in tags.items():
            client.set_model_version_tag(name, earlier.version, key, tag)
        return client.get_model_version(name, earlier.version), name
    # models:/<model id> links the version to the logged model (the UI's link, and the only
    # record of it in a sqlite registry); a local store resolves it through MLflow's global URI
    with tracking.process_wide_uri():
        return client.create_model_version(name, f"models:/{model_id}", run_id=run_id, tags=tags,
                                           model_id=model_id), name


def model_id_of(version) -> str | None:
    """The logged model a registry version was made from (its ``models:/m-...`` source; a
    sqlite registry does not return ``model_id`` itself), or None for an older version."""
    source = version.source or ""
    return version.model_id or (source.removeprefix("models:/") if source.startswith("models:/m-") else None)


def logged_model_name(key: str) -> str:
    """The run key as MLflow allows a logged model's name (no '.'): ddpm-edm.s1 -> ddpm-edm_s1."""
    return key.replace(".", "_")


def _log_model(client, run_id: str, key: str, folder: Path, earlier) -> str | None:
    """Store ``folder`` (the pyfunc and its manifest, file for file) as an MLflow 3 logged model
    named after ``key`` (``logged_model_name``), an output of the run, so the run page and the experiment's Models tab list
    it; its id. A version registered before keeps its storage: the files go where its source
    points (the same logged model, or, for a version from before logged models, the run's
    ``sampler`` folder, and then there is no model id)."""
    from mlflow.entities import LoggedModelOutput

    if earlier is not None and not model_id_of(earlier):
        client.log_artifacts(run_id, str(folder), ARTIFACT)
        return None
    model_id = model_id_of(earlier) if earlier is not None else client.create_logged_model(
        client.get_run(run_id).info.experiment_id, name=logged_model_name(key), source_run_id=run_id,
        tags={"run_key": key}, model_type="diffusion-sampler").model_id
    client.log_model_artifacts(model_id, str(folder))
    client.finalize_logged_model(model_id, "READY")
    if earlier is None:  # the run's output once: a second log_outputs is refused
        client.log_outputs(run_id, [LoggedModelOutput(model_id, step=0)])
    return model_id


def _link_metrics(params: Params, run_id: str, model_id: str | None, metrics: dict) -> None:
    """The evaluation figures (eval_*) again, linked to the logged model and the test split's
    dataset, so the model's page and the Models tab show them."""
    if model_id is None:
        return
    experiment = params.data.dataset
    tracking.log_metrics(run_id, {f"eval_{k}": v for k, v in metrics.items()}, model_id=model_id,
                         dataset=(ui.dataset_name(experiment, "test"), manifest_hash(params)))


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
                rows.append({"name": model.name, "version": int(v.version), "tags": dict(v.tags),
                             "value": float(v.tags["primary_value"]), "figure": _tagged_figure(v.tags),
                             "created": v.creation_timestamp, "champion": str(holder) == str(v.version)})
    return rows


def _tagged_figure(tags: dict) -> dict:
    """A version's headline as ``figures.pairwise`` reads it, from its tags (no replicates,
    hence no rank, for versions registered before intervals)."""
    number = lambda key: float(tags[key]) if tags.get(key) else None  # noqa: E731
    return {"value": float(tags["primary_value"]), "figure": number("primary_figure"),
            "floor": number("primary_floor"), "replicates": figures.replicates_from_tag(tags.get("primary_replicates")),
            "jackknife": figures.replicates_from_tag(tags.get("primary_jackknife"))}


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
        reason = None if v is reference else figures.not_comparable(v["tags"], reference["tags"])
        if reason is None and not figures.ranked(v["figure"]):
            reason = "no interval (registered before figures carried one): listed, never ranked"
        if reason:
            not_ranked.append({**v, "reason": reason})
        else:
            ranked.append(v)
    current = next((v for v in versions if v["champion"]), None)
    return {"reference": reference, "ranked": ranked, "not_ranked": not_ranked, "current": current,
            "holders": sorted({v["name"] for v in versions if v["champion"]})}


def choose_champion(ranked: list[dict], current: dict | None, level: float = figures.LEVEL) -> dict | None:
    """The best of ``ranked`` (lowest value; ties: name, then newest version), unless the current
    champion is among them and the best does not beat it at ``level``: the paired difference's
    interval must exclude zero, at the Bonferroni level over the challengers compared with the
    champion (``figures.pairwise``). None when nothing can be ranked."""
    rankable = [v for v in ranked if figures.ranked(v["figure"])]
    if not rankable:
        return None
    best = min(rankable, key=lambda v: (v["value"], v["name"], -v["version"]))
    keys = {(v["name"], v["version"]) for v in rankable}
    if current is None or (current["name"], current["version"]) not in keys or best is current:
        return best
    each = 1.0 - (1.0 - level) / max(1, len(rankable) - 1)
    decision = figures.pairwise([("best", best["figure"]), ("current", current["figure"])], each)[0]
    return best if decision["a"] == "best" and decision["separated"] else current


def update_champion(dataset: str, newest: tuple[str, int] | None = None) -> dict:
    """Settle ``champion`` among the versions of ``<dataset>-*`` measured like ``newest`` (by
    default the last created version) by ``choose_champion``, and take it from every other
    registered model of the set. Versions measured otherwise, or without an interval, are not
    ranked (``ranking``); with none to rank, the alias stays where it is."""
    client = tracking.client()
    table = ranking(dataset, newest)
    chosen = choose_champion(table["ranked"], table["current"])
    if chosen is None:
        return {"name": None, "version": None, "primary_value": None}
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
