"""Runs side by side (issue 29): how many fit a cluster, and the shared MLflow records that
concurrent runs create once. A SIGTERM stopping two runs side by side is
tests/test_mlflow_as_read.py's (the real pipeline, Ray and Prefect); the measured speed-up on a
two-node cluster is tests/test_service_ray.py's."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from flows.config.sections import RayParams
from flows.distributed.ray_cluster import runs_in
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
