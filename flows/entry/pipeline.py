"""The Prefect flow: one task per stage of flows/entry/stages.py, in its order (prepare ->
train-classifier -> (train -> sample -> evaluate -> register) per run -> compare). Runs go side
by side where the Ray cluster has room for more than one (ray.runs_at_once).

Prefect uses its ephemeral server unless PREFECT_API_URL names one. Stages that can fail for
transient reasons (a Ray worker lost, a tracking server briefly away) are retried.
"""
from __future__ import annotations

import contextvars
import time
from concurrent.futures import ThreadPoolExecutor

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Cancelled

from flows.config.params import Params, as_dict, load_params, parse_params
from flows.config.ladder import with_ladder
from flows.config.recipes import with_seeds
from flows.config.validation import ConfigError
from flows.distributed.ray_cluster import runs_that_fit
from flows.distributed.stop_request import signals_interrupt, stop_received
from flows.distributed.train_ray import NonFiniteLoss, TrainingInterrupted
from flows.entry.lock import WorkspaceLocked, workspace_lock
from flows.entry.stages import STAGES

# Failures that a retry cannot mend, or that a person asked for: not retried.
FINAL = (TrainingInterrupted, NonFiniteLoss, ConfigError, WorkspaceLocked)


def retry_unless_final(task, task_run, state) -> bool:
    """Retry a failed task unless its error is final (a stop asked for, a diverging run, bad
    params, a held workspace); a retried train task resumes its own run."""
    if stop_received():  # whatever the stop's exception became on its way out
        return False
    try:
        state.result()
    except FINAL:
        return False
    except Exception:  # transient: a Ray worker lost, a server briefly away
        return True
    return True


RETRY = dict(retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_final)


# The stages' tasks by name; a stage that can fail for transient reasons is retried.
TASKS = {stage.name: task(stage.handler, name=stage.name, cache_policy=NO_CACHE,
                          **(RETRY if stage.retried else {})) for stage in STAGES}


def summary_markdown(params: Params, results: dict) -> str:
    """One table row per run with its headline figures; `results`: {run: {stage: its result}}."""
    keys = ("fd_at_n", "fd_floor", "fd_ratio", "swd", "swd_floor", "off_support", "mmd", "nfe",
            "nll", "nll_nfe", "vlb_total")
    lines = [f"# Diffusion pipeline on `{params.data.dataset}` ({params.data.source})", "",
             "| framework | train s | " + " | ".join(keys) + " |",
             "|---" * (len(keys) + 2) + "|"]
    for framework, done in results.items():
        metrics = done["evaluate"]
        cells = [f"{metrics[k]:.4g}" if isinstance(metrics.get(k), (int, float)) else "-" for k in keys]
        lines.append(f"| {framework} | {done['train']['train_seconds']:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def with_overrides(params: Params, source: str | None, frameworks: list[str] | None,
                   seeds: list[int] | None = None, ladder: str | None = None) -> Params:
    """params with the flow's overrides applied, validated like params.yaml itself; `ladder`
    ('ddpm:paper:edm') trains the ablation ladder's runs instead (config/ladder.py); `seeds`
    then turns each run key without a seed suffix into one replicate per seed (ddpm-edm.s0, ...)."""
    data = as_dict(params)
    if source is not None:  # another data set: named from its source, not the params' name
        data["data"].update(source=source, name="")
    if frameworks is not None:
        data["train"]["frameworks"] = frameworks
    if ladder is not None:
        data = with_ladder(data, parse_params(data), ladder)
    if seeds is not None:
        data["train"]["frameworks"] = with_seeds(data["train"]["frameworks"], seeds)
    return parse_params(data)


@flow(name="diffusion-pipeline", log_prints=True)
def pipeline_flow(params_path: str | None = "params.yaml", source: str | None = None,
                  frameworks: list[str] | None = None, params: Params | None = None,
                  seeds: list[int] | None = None, ladder: str | None = None,
                  profile: str | None = None) -> dict:
    """Run the whole DAG; `profile` is laid over params.yaml, then `source` and `frameworks`
    override it for scheduled runs; `ladder` trains an ablation ladder's runs ('ddpm:paper:edm');
    `seeds` trains each run key at each of these seeds (training-seed replicates)."""
    params = with_overrides(params or load_params(params_path, profile), source, frameworks, seeds, ladder)
    with workspace_lock("."):  # a scheduled run and a manual one never share the outputs
        try:
            # in place of Prefect's own SIGTERM handler, whose TerminationSignal crashes the run
            with signals_interrupt("diffusion pipeline"):
                return _run_stages(params)
        except TrainingInterrupted as err:  # a stop asked for (training's checkpointed): not a failure
            return Cancelled(message=f"{err}")
        except Exception:
            if stop_received():  # the stop, raised inside C code and handed back as another error
                return Cancelled(message=stop_received())
            raise


def migrate_ephemeral_database() -> None:
    """Without PREFECT_API_URL, Prefect starts a temporary server on PREFECT_HOME's database,
    which migrates it as it starts. Two pipelines started at once on a new home (two
    workspaces, one user) ran the migrations together and one server failed to start; here
    they run one process at a time, under a lock in that home (a no-op once it is current)."""
    import asyncio
    import fcntl
    from pathlib import Path

    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url:  # a server of its own, with its own database
        return
    home = Path(settings.home).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "diffusion-migrate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        from prefect.server.database import provide_database_interface

        asyncio.run(provide_database_interface().create_db())


def run_pipeline(params: Params) -> dict:
    """The flow for `diffusion pipeline`: its results; a stopped run (Cancelled) raises
    TrainingInterrupted with the state's message, a failed one its own error."""
    migrate_ephemeral_database()
    state = pipeline_flow(params_path=None, params=params, return_state=True)
    if state.is_cancelled():
        raise TrainingInterrupted(state.message or "the pipeline was stopped")
    return state.result()


def _run_stages(params: Params) -> dict:
    """Each stage once, and in place of the per-run stages each run through all of them
    (side by side where the cluster has room); the evaluation metrics by run."""
    per_run = [stage for stage in STAGES if stage.per_run]
    results = {}
    for stage in STAGES:
        if not stage.per_run:
            TASKS[stage.name](params)
        elif stage is per_run[0]:
            results = _run_all(params, per_run)
    create_markdown_artifact(summary_markdown(params, results), key="diffusion-pipeline-summary",
                             description="Headline metrics of each framework")
    return {framework: done["evaluate"] for framework, done in results.items()}


def _run_all(params: Params, per_run: list) -> dict:
    """Every run through the per-run stages: {run: {stage: its result}}. Runs are independent,
    so as many as the cluster holds (ray_cluster.runs_that_fit) go at once, each in a thread of
    this flow with its own copy of the flow's context (Prefect records each stage as a task of
    this flow run); one at a time on a machine with room for one. A failed run lets the others
    finish, then its error is raised; a stop asks every run in training to checkpoint."""
    runs = list(params.train.frameworks)
    at_once = runs_that_fit(params.ray, len(runs))
    started = time.perf_counter()
    print(f"pipeline: {len(runs)} run(s), {at_once} at a time")
    if at_once == 1:
        results = {run: _one_run(params, run, per_run) for run in runs}
    else:
        with ThreadPoolExecutor(at_once, thread_name_prefix="run") as pool:
            futures = {run: pool.submit(contextvars.copy_context().run, _one_run, params, run, per_run)
                       for run in runs}
            results = {run: future.result() for run, future in futures.items()}
    print(f"pipeline: the runs' stages took {time.perf_counter() - started:.1f} s, {at_once} at a time")
    return results


def _one_run(params: Params, run: str, per_run: list) -> dict:
    """One run through the per-run stages in order, unless a stop was asked for before a stage."""
    done = {}
    for stage in per_run:
        if stop_received():
            raise TrainingInterrupted(stop_received())
        done[stage.name] = TASKS[stage.name](params, run)
    return done
