"""What MLflow's UI shows beyond a run's own numbers: the data set as a dataset input of a run
(the runs list's Dataset column and Datasets filter) and the experiment's comparison view
(recipe, steps, headline and the headline metric, best first).

Kept apart from runs.py, which creates, logs into and ends runs; this module only describes
them to the UI, through `runs.client` and `runs.experiment_id`.
"""
from __future__ import annotations

import json
from pathlib import Path

from flows.tracking import runs

# -- the data set as MLflow's dataset input ---------------------------------------------------

CONTEXT_TAG = "mlflow.data.context"  # MLflow's input tag for what a data set was used for


def dataset_name(experiment: str, split: str) -> str:
    """One MLflow dataset per split ('digits-train', 'digits-test'): MLflow keeps one input per
    name and digest on a run, so two splits of one manifest need two names."""
    return f"{experiment}-{split}"


def log_dataset(run_id: str, experiment: str, split: str, manifest_sha256: str, data_dir: str | Path,
                rows: int | None = None) -> None:
    """Log the data set's `split` as a dataset input of the run: digest = the manifest's sha256
    (its first runs.DIGEST_CHARS characters, all MLflow stores; the whole one in the profile),
    source = the shards' folder. Fills the UI's Dataset column and its Datasets filter."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    profile = {"manifest_sha256": manifest_sha256, "split": split, **({"rows": rows} if rows else {})}
    dataset = Dataset(name=dataset_name(experiment, split), digest=manifest_sha256[:runs.DIGEST_CHARS],
                      source_type="local", source=json.dumps({"uri": Path(data_dir).resolve().as_uri()}),
                      profile=json.dumps(profile))
    runs.client().log_inputs(run_id, datasets=[DatasetInput(dataset, [InputTag(CONTEXT_TAG, split)])])


# -- the runs list's view: recipe, steps, headline and the headline metric ---------------------

VIEW_KEY = "comparison"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"  # how the UI's "Save view" stores a view


def view_columns(headline_metric: str) -> list[str]:
    """The view's columns, as the UI names them: attributes, tags and metrics by name."""
    return ["attributes.`Dataset`", "tags.`recipe`", "tags.`steps`", "tags.`stopped_by`",
            "tags.`headline`", f"metrics.`{headline_metric}`", "attributes.`Duration`",
            "attributes.`Models`", "attributes.`Source`"]


def view_link(experiment_id_: str, server: str = "http://127.0.0.1:5000") -> str:
    """The link that opens the experiment's runs list on the comparison view: MLflow 3.17 keeps
    a chosen view in the browser only, so a fresh browser needs the view's key in the URL."""
    return (f"{server}/#/experiments/{experiment_id_}/runs?workflowType=machine_learning"
            f"&viewStateShareKey={VIEW_KEY}")


def save_comparison_view(experiment: str, headline_metric: str) -> str:
    """Store the comparison view as the experiment's shared view: recipe, steps, headline and
    `headline_metric` (eval_fd_ratio), the runs sorted by it, best first; the experiment's id."""
    mlflow_client = runs.client()
    found = runs.experiment_id(mlflow_client, experiment)
    state = {"selectedColumns": view_columns(headline_metric), "orderByKey": f"metrics.`{headline_metric}`",
             "orderByAsc": True, "runsExpanded": {}}
    mlflow_client.set_experiment_tag(found, VIEW_TAG, json.dumps(state))
    return found
