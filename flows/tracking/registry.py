"""The MLflow model registry: each trained framework as ``<dataset>-<framework>``, a pyfunc whose
predict draws samples, and the alias ``champion`` on the best version of a data set.

``predict(None, params={"num_samples", "seed", "sampler", "steps"})`` returns float32 samples
(N×C×H×W in [-1, 1] for images, N×D for vectors). Sample i of seed s is the pipeline's sample i
of ``sample.seed = s``: the same seed scheme and sampler code as the sample stage. The primary
metric (lower is better) is FD in the in-domain classifier's features for images and sliced
Wasserstein-2 for vectors; the version with the lowest value among every framework of the data
set carries ``champion``, so ``models:/<dataset>-<framework>@champion`` exists for one framework.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import ParamSchema, ParamSpec

import diffusion_core
import flows
from diffusion_core.data import shards
from diffusion_core.frameworks import DiffusionModel
from diffusion_core.samplers.registry import SAMPLER_SETTINGS
from flows.config.params import Params, as_dict, parse_params
from flows.config.sampling import draw_samples, params_with_sampler, sample_seeds
from flows.tracking import runs as tracking

# predict takes no input data (params say what to draw), so MLflow's schema validation, which
# a type hint would switch on, has nothing to check: silence its advice to add one.
warnings.filterwarnings("ignore", message="Add type hints to the `predict` method", category=UserWarning)

ALIAS = "champion"
ARTIFACT = "sampler"
PRIMARY = {"image": "fd", "vector": "swd"}


class SamplerModel(mlflow.pyfunc.PythonModel):
    """pyfunc flavour of a trained framework: predict draws samples."""

    def load_context(self, context):
        self.spec = json.loads(Path(context.artifacts["spec"]).read_text())
        self.model = DiffusionModel.load(Path(context.artifacts["model_dir"]))

    def predict(self, context, model_input, params=None):
        spec, p = self.spec, {**self.spec["defaults"], **(params or {})}
        for key in ("num_samples", "steps"):
            if isinstance(p[key], bool) or not isinstance(p[key], int) or p[key] < 1:
                raise ValueError(f"{key} must be a positive integer, got {p[key]!r}")
        run_params = _with_sampler(spec, p["sampler"], p["steps"], p["seed"])
        seeds = sample_seeds(run_params, 0, p["num_samples"])
        x, _ = draw_samples(run_params, spec["framework"], self.model, seeds, spec["kind"],
                            tuple(spec["shape"]))
        return x


def _with_sampler(spec: dict, sampler: str, steps: int, seed: int) -> Params:
    """The stored params with sample.seed and the framework's sampler replaced: the stored
    settings when the sampler is the trained default, else the named sampler's defaults;
    ``steps`` applies to samplers that take steps."""
    settings = dict(spec["sampler"]) if sampler == spec["sampler"]["name"] else {"name": sampler}
    if "steps" in SAMPLER_SETTINGS.get(sampler, {}):
        settings["steps"] = int(steps)
    return params_with_sampler(parse_params(spec["params"]), spec["framework"], settings, seed)


def registered_name(params: Params, framework: str) -> str:
    return f"{tracking.experiment_name(params.data.source)}-{framework}"


def _signature(sampler: dict, seed: int) -> ModelSignature:
    steps = int(sampler.get("steps", 1000))
    return ModelSignature(inputs=None, outputs=None, params=ParamSchema([
        ParamSpec("num_samples", "long", 16), ParamSpec("seed", "long", seed),
        ParamSpec("sampler", "string", sampler["name"]), ParamSpec("steps", "long", steps)]))


def _metrics(params: Params, framework: str, kind: str) -> tuple[str, float, dict]:
    path = Path(params.evaluate.out_dir) / f"{framework}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the evaluate stage before register")
    metrics = json.loads(path.read_text())
    name = PRIMARY[kind]
    if not isinstance(metrics.get(name), (int, float)) or not np.isfinite(metrics[name]):
        raise ValueError(f"{path} has no finite primary metric {name!r}")
    return name, float(metrics[name]), metrics


def _save_pyfunc(params: Params, framework: str, model_dir: Path, meta: dict, out: Path) -> None:
    """Write the pyfunc model (weights, config, sampling spec, project code) to ``out``."""
    staging = out.parent / "artifacts"
    (staging / "model").mkdir(parents=True)
    for file in ("model.json", "weights.pt"):  # what DiffusionModel.load reads
        shutil.copy2(model_dir / file, staging / "model" / file)
    sampler = params.framework(framework).sampler
    spec = {"params": as_dict(params), "framework": framework, "kind": meta["kind"],
            "shape": list(meta["shape"]), "sampler": sampler,
            "defaults": {"num_samples": 16, "seed": params.sample.seed, "sampler": sampler["name"],
                         "steps": int(sampler.get("steps", 1000))}}
    (staging / "spec.json").write_text(json.dumps(spec, indent=2))
    mlflow.pyfunc.save_model(
        str(out), python_model=SamplerModel(),
        artifacts={"model_dir": str(staging / "model"), "spec": str(staging / "spec.json")},
        signature=_signature(sampler, params.sample.seed),
        code_paths=[str(Path(diffusion_core.__file__).parent), str(Path(flows.__file__).parent)],
        pip_requirements=["torch==2.13.0", f"mlflow=={mlflow.__version__}", "numpy", "scipy",
                          "pyyaml", "webdataset", "pyarrow"])


def register(params: Params, framework: str) -> dict:
    """Log the pyfunc into the framework's run, register it as a new version of
    ``<dataset>-<framework>``, and move ``champion`` to the data set's best version."""
    model_dir = Path(params.train.out_dir) / framework
    run_id = tracking.load_run_id(model_dir)  # names the file when train has not run
    meta = shards.read_manifest(params.data.out_dir)[1]
    metric, value, metrics = _metrics(params, framework, meta["kind"])
    name = registered_name(params, framework)
    client = tracking.client()
    with tempfile.TemporaryDirectory() as tmp:
        _save_pyfunc(params, framework, model_dir, meta, Path(tmp) / ARTIFACT)
        client.log_artifacts(run_id, str(Path(tmp) / ARTIFACT), ARTIFACT)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, tags={"dataset": params.data.source, "framework": framework})
    source = f"{client.get_run(run_id).info.artifact_uri}/{ARTIFACT}"
    tags = {"primary_metric": metric, "primary_value": repr(value), "framework": framework,
            "sampler": metrics.get("sampler", ""), "nfe": str(metrics.get("nfe", ""))}
    same_run = [v for v in client.search_model_versions(f"name='{name}'") if v.run_id == run_id]
    if same_run:  # registering the same training run again updates its version
        version = same_run[0]
        for key, tag in tags.items():
            client.set_model_version_tag(name, version.version, key, tag)
    else:
        version = client.create_model_version(name, source, run_id=run_id, tags=tags)
    champion = update_champion(tracking.experiment_name(params.data.source))
    print(f"register: {name} version {version.version} ({metric}={value:.4g}); champion: "
          f"{champion['name']} version {champion['version']}")
    return {"name": name, "version": int(version.version), "primary_metric": metric,
            "primary_value": value, "champion": champion}


def update_champion(dataset: str) -> dict:
    """Give ``champion`` to the version with the lowest primary value among ``<dataset>-*``
    (one metric per data set), and take it from every other registered model of the set."""
    client = tracking.client()
    models = [m for m in client.search_registered_models(f"name LIKE '{dataset}-%'")
              if m.name.startswith(f"{dataset}-")]
    candidates = [(float(v.tags["primary_value"]), m.name, v.version)
                  for m in models for v in client.search_model_versions(f"name='{m.name}'")
                  if "primary_value" in v.tags]
    if not candidates:
        raise ValueError(f"no registered version of data set {dataset!r} carries a primary metric")
    value, best_name, best_version = min(candidates, key=lambda c: (c[0], c[1], -int(c[2])))
    client.set_registered_model_alias(best_name, ALIAS, best_version)
    for model in models:
        if model.name != best_name and ALIAS in (model.aliases or {}):
            client.delete_registered_model_alias(model.name, ALIAS)
    return {"name": best_name, "version": int(best_version), "primary_value": value}


def champion_uri(dataset: str) -> str:
    """``models:/<dataset>-<framework>@champion`` of the data set's champion."""
    client = tracking.client()
    for model in client.search_registered_models(f"name LIKE '{dataset}-%'"):
        if ALIAS in (model.aliases or {}):
            return f"models:/{model.name}@{ALIAS}"
    raise ValueError(f"no registered model of data set {dataset!r} carries the alias {ALIAS!r}")


def load_sampler(name: str, alias: str = ALIAS):
    """The pyfunc of ``models:/<name>@<alias>``; ValueError naming the name or alias when the
    registry does not hold it. The alias is resolved by this module's client and the version's
    artifacts fetched from its source, so nothing depends on mlflow's process-wide URIs."""
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
    local = mlflow.artifacts.download_artifacts(artifact_uri=version.source,
                                                tracking_uri=tracking.tracking_uri())
    return mlflow.pyfunc.load_model(local)
