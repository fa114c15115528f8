"""The pipeline's stages, declared once.

Each stage is one `Command`: the `diffusion` CLI makes its subcommand from it (options, workspace
lock, the services checked before it runs: cli.py), and the Prefect flow its task, in this
order (pipeline.py). `dvc.yaml` runs the same subcommands, with the data each one reads and
writes; tests/test_stage_declaration.py checks that the two name the same stages.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from flows.distributed import ray_cluster
from flows.stages import data, evaluate, sample, train
from flows.stages.compare import compare_and_publish
from flows.tracking import registry
from flows.tracking import runs as tracking


@dataclass(frozen=True)
class Command:
    """A `diffusion` subcommand that runs on validated params: a stage of the pipeline, or one
    of the CLI's own (cli.py)."""

    name: str
    handler: Callable  # handler(params), or handler(params, run) where per_run
    per_run: bool = False  # runs once per run of train.frameworks, named by --framework
    locked: bool = True  # writes the workspace's outputs, so it holds the workspace lock
    services: tuple[Callable[[], None], ...] = ()  # bounded checks of what it talks to, in order
    retried: bool = False  # the flow retries it: a Ray worker lost, a tracking server briefly away


def compare(params) -> dict:
    """The comparison across runs (reports/, an MLflow run, a Prefect artifact); its figures
    without the report's markdown, which reports/compare.md holds."""
    result = compare_and_publish(params)
    return {key: value for key, value in result.items() if key != "markdown"}


MLFLOW, RAY = tracking.check_server, ray_cluster.check_address

# In the flow's order; the per-run stages stand together: each run goes through all of them in turn.
STAGES = (
    Command("prepare", data.prepare),
    Command("train-classifier", data.train_classifier),
    Command("train", train.train, per_run=True, services=(MLFLOW, RAY), retried=True),
    Command("sample", sample.sample, per_run=True, services=(MLFLOW, RAY), retried=True),
    Command("evaluate", evaluate.evaluate, per_run=True, services=(MLFLOW, RAY), retried=True),
    Command("register", registry.register, per_run=True, services=(MLFLOW,), retried=True),
    Command("compare", compare, services=(MLFLOW,)),
)
