"""MLflow tracking: the one module of the pipeline that talks to MLflow.

Runs are addressed by id through `MlflowClient`, so the driver, a Ray Train worker and a later
stage can all log into the same run. The store is a local sqlite file unless
MLFLOW_TRACKING_URI names a server. Here: the server and its client, a run's creation (seed
groups included) and what is logged into it, through a server's outages too (`MetricLog`).
Beside it, run_status.py keeps a run's status while a stage works in it, and ui.py describes
runs to MLflow's UI (dataset inputs, the comparison view).
"""
from __future__ import annotations

import contextlib
import getpass
import json
import os
import subprocess
import threading
import time
from pathlib import Path

from diffusion_core.data.atomic import write_json

RUN_FILE = "mlflow_run.json"
# The experiment tag MLflow 3's UI reads and writes for an experiment's type (its "Machine
# learning" / "GenAI apps & agents" selector): mlflow/server/js (setExperimentTag with key
# "mlflow.experimentKind"; values "custom_model_development", "genai_development").
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


# Runs side by side are threads of one driver: the process-wide URI's block (which unsets and
# restores the variable) and the get-or-create of shared runs go one thread at a time.
_PROCESS_WIDE = threading.RLock()
_CREATING = threading.RLock()


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else a sqlite store in the working folder (made absolute so Ray
    workers started elsewhere write to the same file)."""
    with _PROCESS_WIDE:
        uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path('mlflow.db').resolve()}"


PROBE_TIMEOUT_S = 5.0
_answered: set[str] = set()


class TrackingUnavailable(RuntimeError):
    """The tracking server named by MLFLOW_TRACKING_URI does not answer."""


def check_server(timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Fail within timeout_s, naming the URI and its variable, if an http(s) server is away
    (MLflow's own client would retry for minutes); once per process and URI."""
    import urllib.error
    import urllib.request

    uri = tracking_uri()
    if not uri.startswith(("http://", "https://")) or uri in _answered:
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        pass  # something answered; MLflow's client reports what is wrong
    except (OSError, ValueError) as err:
        raise TrackingUnavailable(f"cannot reach the MLflow tracking server at {uri} (set by "
                                  f"MLFLOW_TRACKING_URI) within {timeout_s:g} s: {err}") from err
    _answered.add(uri)


def client():
    from mlflow.tracking import MlflowClient

    check_server()
    return MlflowClient(tracking_uri=tracking_uri())


@contextlib.contextmanager
def process_wide_uri():
    """MLflow's process-wide tracking URI set to ours inside the block (a sqlite registry
    resolves a ``models:/<id>`` source through it); after it, MLflow's global is cleared (this
    project never leaves it set) and MLFLOW_TRACKING_URI is exactly as it was. MLflow's own
    ``_use_tracking_uri`` unset the variable, which sent every later call of this process to a
    local sqlite file; leaving the global at the block's URI sent them to that server after
    the variable had changed (a later test's MlflowClient() reached a stopped server)."""
    import mlflow

    with _PROCESS_WIDE:
        before = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(tracking_uri())
        try:
            yield
        finally:
            mlflow.set_tracking_uri(None)  # clears MLflow's global, and unsets the variable
            if before is not None:
                os.environ["MLFLOW_TRACKING_URI"] = before


CODE_ROOT = Path(__file__).resolve().parents[2]  # the checkout whose code runs the stages


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=CODE_ROOT)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def git_commit() -> str:
    """The commit of the code that runs (not of the working folder, which may be anywhere)."""
    return _git("rev-parse", "HEAD") or "unknown"


def source_tags(source: str) -> dict:
    """MLflow's own source tags, which fill the UI's Source, Version and User columns: `source`
    is the stage module that opened the run (flows/stages/train.py); the commit is the code's;
    `git_commit` is kept for readers of the older tag."""
    commit, user = git_commit(), os.environ.get("MLFLOW_TRACKING_USERNAME") or _user()
    tags = {"mlflow.source.name": source, "mlflow.source.type": "LOCAL", "mlflow.user": user,
            "git_commit": commit}
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    remote = _git("remote", "get-url", "origin")
    if remote:
        tags["mlflow.source.git.repoURL"] = remote
    return tags


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "unknown"


def experiment_id(mlflow_client, experiment: str) -> str:
    """The id of the data set's experiment, created when missing, and tagged as a model-training
    experiment (EXPERIMENT_KIND) when it is created and when an existing one lacks the tag: MLflow 3
    opens an experiment of no kind on its GenAI traces overview, which is empty here. A kind
    someone chose for the experiment is kept."""
    key, kind = EXPERIMENT_KIND
    with _CREATING:
        found = mlflow_client.get_experiment_by_name(experiment)
        if found is None:  # a local store keeps its artifacts beside the database
            local = "MLFLOW_TRACKING_URI" not in os.environ
            location = Path("mlartifacts").resolve().as_uri() if local else None
            return mlflow_client.create_experiment(experiment, artifact_location=location, tags={key: kind})
    if key not in found.tags:
        mlflow_client.set_experiment_tag(found.experiment_id, key, kind)
    return found.experiment_id


TRAIN_SOURCE = "flows/stages/train.py"


def start_run(experiment: str, run_name: str, params: dict, tags: dict,
              seed_group: str | None = None, source: str = TRAIN_SOURCE) -> str:
    """Create a run (before any training starts) in the data set's experiment and return its id.
    With `seed_group` (a base key), the run is a child of that key's seed-group run. The run is
    RUNNING until the stage that opened it ends it (`stage_run`)."""
    mlflow_client = client()
    if seed_group is not None:
        tags = {**tags, PARENT_RUN_TAG: seed_group_run(experiment, seed_group, tags)}
    run = mlflow_client.create_run(experiment_id(mlflow_client, experiment), run_name=run_name,
                                   tags={**tags, **source_tags(source)})
    flat = _flatten(params)
    for start in range(0, len(flat), 100):  # MLflow caps a batch at 100 params
        from mlflow.entities import Param

        batch = [Param(k, str(v)[:6000]) for k, v in list(flat.items())[start:start + 100]]
        mlflow_client.log_batch(run.info.run_id, params=batch)
    return run.info.run_id


SEED_GROUP_TAG = "seed_group"
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own: the UI nests a child run under its parent
GROUP_TAGS = ("framework", "recipe", "dataset")  # what a seed group shares with its replicates


def seed_group_run(experiment: str, base: str, tags: dict | None = None) -> str:
    """The id of the parent run of base key `base`'s seed replicates in the experiment: the
    active run tagged seed_group=<base> (the oldest, if several), created when there is none.
    It is named after the base key and holds no training of its own; `tags` lends it GROUP_TAGS."""
    mlflow_client = client()
    with _CREATING:
        experiment_ids = [experiment_id(mlflow_client, experiment)]
        found = mlflow_client.search_runs(experiment_ids, f"tags.{SEED_GROUP_TAG} = '{base}'",
                                          max_results=1, order_by=["attributes.start_time ASC"])
        if found:
            return found[0].info.run_id
        shared = {key: tags[key] for key in GROUP_TAGS if key in (tags or {})}
        run = mlflow_client.create_run(experiment_ids[0], run_name=base, tags={
            **shared, SEED_GROUP_TAG: base, "run_key": base, "base_key": base, **source_tags(TRAIN_SOURCE)})
        return run.info.run_id


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


# MLflow caps a dataset's digest (mlflow.utils.validation.MAX_DATASET_DIGEST_SIZE): a metric's
# link to its data set and ui.py's dataset input both keep this much of the manifest's sha256
DIGEST_CHARS = 36


def _metric_batch(metrics: dict, step: int | None, model_id: str | None = None,
                  dataset: tuple[str, str] | None = None) -> list:
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    name, digest = (dataset[0], dataset[1][:DIGEST_CHARS]) if dataset else (None, None)
    return [Metric(k, float(v), stamp, step or 0, model_id=model_id, dataset_name=name, dataset_digest=digest)
            for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]


def log_metrics(run_id: str, metrics: dict, step: int | None = None, model_id: str | None = None,
                dataset: tuple[str, str] | None = None) -> None:
    """Numbers of `metrics` into the run; with `model_id`, linked to that logged model too (and
    to `dataset`, (name, manifest sha256), the data set they were measured on)."""
    batch = _metric_batch(metrics, step, model_id, dataset)
    for start in range(0, len(batch), MAX_BATCH):
        client().log_batch(run_id, metrics=batch[start:start + MAX_BATCH])


# MLflow's own client retries a failed request for minutes; a metric log that may wait for the
# next one fails fast instead.
QUICK_REQUESTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
MAX_BATCH = 1000  # MLflow's limit on metrics per log_batch


@contextlib.contextmanager
def quick_requests():
    """MLflow's requests inside the block fail fast (MLflow reads these variables per request);
    after it, the variables are as they were, so a model upload later in the same process keeps
    MLflow's patient retries (left set, a 10 s read timeout failed uploads on a busy machine)."""
    before = {key: os.environ.get(key) for key in QUICK_REQUESTS}
    os.environ.update({key: before[key] or value for key, value in QUICK_REQUESTS.items()})
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class MetricLog:
    """The metrics of a long run, sent through a tracking server that may be away for a while:
    what fails to send is kept and sent with the next batch, so training never waits on MLflow
    and nothing is lost once the server is back. `close` tries a last time and returns how many
    metrics never arrived (the run reports them as lost)."""

    def __init__(self, run_id: str):
        self.run_id, self.pending, self.last_error, self._client = run_id, [], None, None
        self._connect()  # here, not in the first log: importing MLflow takes seconds

    def log(self, metrics: dict, step: int | None = None) -> None:
        self.pending += _metric_batch(metrics, step)
        self._send()

    def _connect(self) -> bool:
        """One client for the log's life (making one per batch costs more than sending it)."""
        try:
            with quick_requests():
                self._client = self._client or client()
        except Exception as err:  # server away
            self._failed(err)
        return self._client is not None

    def _send(self) -> None:
        try:
            while self.pending and self._connect():
                with quick_requests():
                    self._client.log_batch(self.run_id, metrics=self.pending[:MAX_BATCH])
                self.pending = self.pending[MAX_BATCH:]
        except Exception as err:  # server away: connection, HTTP or MLflow errors alike
            self._failed(err)

    def _failed(self, err: Exception) -> None:
        _answered.discard(tracking_uri())  # probe the server again next time
        self.last_error = f"{type(err).__name__}: {err}"

    def close(self) -> int:
        self._send()
        return len(self.pending)


def run_exists(run_id: str) -> bool:
    """Whether the MLflow run is still there to log into (not deleted, store not replaced)."""
    from mlflow.exceptions import MlflowException

    try:
        return client().get_run(run_id).info.lifecycle_stage != "deleted"
    except MlflowException:
        return False


def log_artifacts(run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    path = Path(path)
    if path.is_dir():
        client().log_artifacts(run_id, str(path), artifact_path)
    elif path.is_file():
        client().log_artifact(run_id, str(path), artifact_path)


def set_tags(run_id: str, tags: dict) -> None:
    for key, value in tags.items():
        client().set_tag(run_id, key, str(value))


def save_run_id(directory: Path, run_id: str, experiment: str) -> None:
    write_json(Path(directory) / RUN_FILE, {"run_id": run_id, "experiment": experiment})


def load_run_id(directory: Path) -> str:
    path = Path(directory) / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the train stage first")
    return json.loads(path.read_text())["run_id"]
