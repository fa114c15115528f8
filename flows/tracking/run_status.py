"""A run's life in MLflow: RUNNING while a stage works in it, then FINISHED, FAILED or KILLED
with an end time, so the UI's status and duration are true after any stage.

Kept apart from runs.py, which creates runs and logs into them: this module only opens and
ends a stage's block in a run (and in its seed group's parent run), through `runs.client`.
"""
from __future__ import annotations

import contextlib
import sys
import time

from flows.tracking import runs

ERROR_TAG = "error"  # why the last stage in the run failed or was stopped; removed on success


def _stop_received() -> str | None:
    """The stop signals_interrupt took, if any (its module is loaded wherever one is raised)."""
    stop_request = sys.modules.get("flows.distributed.stop_request")
    return stop_request.stop_received() if stop_request is not None else None


def _interrupted(err: BaseException) -> bool:
    """A stop someone asked for: Ctrl-C, or SIGTERM/SIGINT turned into TrainingInterrupted."""
    if isinstance(err, KeyboardInterrupt):
        return True
    stop_request = sys.modules.get("flows.distributed.stop_request")
    return (stop_request is not None and isinstance(err, stop_request.TrainingInterrupted)) \
        or _stop_received() is not None


def _error_text(err: BaseException) -> str:
    """What tag `error` says: the exception, or the stop when the signal came back from C code
    as another exception (numpy, torch: a SystemError that names no signal)."""
    text, stop = f"{type(err).__name__}: {err}", _stop_received()
    return text if stop is None or stop in text else f"{stop} (raised here as {text})"


def end_status(err: BaseException | None) -> str:
    """FINISHED, KILLED (a stop asked for) or FAILED."""
    if err is None:
        return "FINISHED"
    return "KILLED" if _interrupted(err) else "FAILED"


def _run_and_parent(mlflow_client, run_id: str) -> list[str]:
    """The run, and its seed group's parent run if it is a replicate: the parent lives and ends
    with the stages of its children."""
    parent = mlflow_client.get_run(run_id).data.tags.get(runs.PARENT_RUN_TAG)
    return [run_id, parent] if parent else [run_id]


@contextlib.contextmanager
def stage_run(run_id: str):
    """Wrap a stage's work in MLflow run `run_id`: the run (and its seed-group parent) is
    RUNNING inside the block, and FINISHED, FAILED (with the error in tag `error`) or KILLED
    (an interrupt) with an end time when the block ends, so the UI's status and duration are
    true after any stage. A stage that reopens the run (resume, sample, evaluate, register)
    marks it RUNNING again. The stage's own error is never hidden by a tracking one."""
    mlflow_client = runs.client()
    ids = _run_and_parent(mlflow_client, run_id)
    for each in ids:
        mlflow_client.update_run(each, status="RUNNING")
    try:
        yield run_id
    except BaseException as err:
        _end(mlflow_client, ids, end_status(err), _error_text(err))
        raise
    _end(mlflow_client, ids, "FINISHED", None)


def _end(mlflow_client, ids: list[str], status: str, error: str | None) -> None:
    try:
        if error is not None:
            mlflow_client.set_tag(ids[0], ERROR_TAG, error[:5000])
        elif ERROR_TAG in mlflow_client.get_run(ids[0]).data.tags:
            mlflow_client.delete_tag(ids[0], ERROR_TAG)  # an earlier failure, since mended
        end = int(time.time() * 1000)
        for each in ids:
            mlflow_client.set_terminated(each, status, end_time=end)
    except Exception as err:  # the server away: the stage's outcome stands, the status lags
        print(f"warning: could not mark MLflow run {ids[0]} {status}: {err}", file=sys.stderr)
