"""Runs side by side (issue 29): how many fit a cluster, a stop reaching every run training in
another thread, and the shared MLflow records that concurrent runs create once. The measured
speed-up on a two-node cluster is tests/test_service_ray.py's."""
from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from flows.config.sections import RayParams
from flows.distributed.ray_cluster import runs_in
from flows.distributed.stop_request import (TrainingInterrupted, fit_watching_signals, signals_interrupt,
                                            stop_requested, stop_uri)
from flows.tracking import runs as tracking
from tests.tiny import in_workspace


@pytest.mark.parametrize("total, ray, runs, expected", [
    ({"CPU": 2.0}, dict(num_workers=1, cpus_per_worker=2), 4, 1),  # this machine's params.yaml
    ({"CPU": 2.0}, dict(num_workers=1, cpus_per_worker=1), 4, 2),  # the two-node test cluster
    ({"CPU": 64.0}, dict(num_workers=2, cpus_per_worker=4), 3, 3),  # no more than there are runs
    ({"CPU": 64.0}, dict(num_workers=2, cpus_per_worker=4, runs_at_once=2), 4, 2),  # the cap
    ({"CPU": 64.0, "GPU": 8.0}, dict(num_workers=4, cpus_per_worker=4, use_gpu=True), 4, 2),  # GPUs bind
    ({"CPU": 64.0}, dict(num_workers=1, cpus_per_worker=1, use_gpu=True), 4, 1),  # none: one waits
    ({"CPU": 1.0}, dict(num_workers=2, cpus_per_worker=1), 4, 1),  # too small: one, which then waits
])
def test_as_many_runs_as_the_cluster_holds(total, ray, runs, expected):
    assert runs_in(total, RayParams(**ray), runs) == expected


def test_runs_at_once_must_not_be_negative():
    from flows.config.validation import ConfigError

    with pytest.raises(ConfigError, match=r"ray\.runs_at_once"):
        RayParams(runs_at_once=-1).check("ray")


class _FitUntilStopped:
    """Stands in for a Ray Train trainer of a run in another thread: its fit() returns once
    the run's stop file is there, as the real workers checkpoint and end (tests/test_resume.py)."""

    def __init__(self, stop: str):
        self.stop, self.started = stop, threading.Event()

    def fit(self):
        self.started.set()
        deadline = time.monotonic() + 30
        while not stop_requested(self.stop):
            assert time.monotonic() < deadline, "no stop file reached the run"
            time.sleep(0.05)
        return "checkpointed"


def test_a_signal_asks_every_run_training_in_another_thread_to_stop(tmp_path):
    stops = [stop_uri(str(tmp_path), f"run-{i}") for i in range(2)]
    trainers = [_FitUntilStopped(stop) for stop in stops]
    with ThreadPoolExecutor(2) as pool:
        with pytest.raises(TrainingInterrupted, match="SIGTERM"):
            with signals_interrupt("diffusion pipeline"):
                futures = [pool.submit(fit_watching_signals, trainer, stop, f"run-{i}")
                           for i, (trainer, stop) in enumerate(zip(trainers, stops))]
                for trainer in trainers:
                    assert trainer.started.wait(30)
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)  # the handler raises here
        assert [future.result(timeout=30) for future in futures] == ["checkpointed"] * 2


def test_concurrent_replicates_share_one_experiment_and_one_seed_group_run(tmp_path):
    """Replicates started at once look up their seed group's parent run, and create it when it
    is missing: one of them creates it (a search, then a create, by eight threads at once)."""
    bases = ("ddpm", "ncsn", "sde")
    with in_workspace(tmp_path):
        with ThreadPoolExecutor(8) as pool:
            parents = {base: set(pool.map(lambda _: tracking.seed_group_run("side-by-side", base), range(8)))
                       for base in bases}
        client = tracking.client()
        experiment = client.get_experiment_by_name("side-by-side")
        assert all(len(ids) == 1 for ids in parents.values()), parents
        assert len(client.search_runs([experiment.experiment_id])) == len(bases)
