"""A run's length is a number of optimizer steps: the same params and data give the same weights,
whatever the machine's speed. The wall-clock limit is only a safety cap, and a run it stops says
so; a run that diverges stops at its first non-finite step and keeps the last good model. Ray's
workers run at the driver's priority, so a busy neighbour does not starve them."""
import hashlib
import os
import shutil

import pytest

from flows.config.params import parse_params
from flows.distributed.train_ray import NonFiniteLoss
from flows.stages import data as stages
from flows.stages import train as train_stage
from flows.tracking import runs as tracking
from tests.tiny import in_workspace, tiny_params

pytestmark = pytest.mark.slow


def _weights_sha256(folder) -> str:
    return hashlib.sha256((folder / "weights.pt").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_vp_runs):
    """Prepared data and, in models/ddpm, the session's tiny ddpm model (a good one)."""
    root = tmp_path_factory.mktemp("reproducible")
    shutil.copytree(tiny_vp_runs[0] / "models/ddpm", root / "models/ddpm")
    with in_workspace(root):
        params = parse_params(tiny_params())
        stages.prepare(params)
        yield root, params


def test_training_runs_its_planned_steps(tiny_vp_runs):
    """A run's length is its step count (that two trainings with the same params give the same
    weights, interrupted or not, tests/test_resume.py checks by sha256)."""
    root, params, out = tiny_vp_runs
    summary = out["ddpm"][0]
    assert summary["steps"] == summary["planned_steps"] == params.vector.steps
    assert summary["stopped_by"] == "steps" and summary["metrics_lost"] == 0
    assert (root / "models/ddpm/weights.pt").is_file()


def test_a_diverging_run_stops_naming_the_step_and_keeps_the_last_model(workspace, capsys):
    """The workspace holds a good model; a run with an absurd learning rate must stop at its
    first non-finite step and leave that model as it was."""
    from flows.entry.cli import main
    from tests.tiny import write_params

    root, params = workspace
    before = _weights_sha256(root / "models/ddpm")
    bad = tiny_params(vector={"lr": 1.0e6})
    write_params(root, bad)
    assert main(["train", "--framework", "ddpm"]) == 1
    err = capsys.readouterr().err
    assert "not finite at step" in err and "checkpoint" in err and "train.nonfinite" in err
    assert _weights_sha256(root / "models/ddpm") == before
    skipping = {**bad, "train": {**bad["train"], "nonfinite": "skip", "nonfinite_limit": 3}}
    with pytest.raises(NonFiniteLoss, match="4 batch"):  # skips three, stops at the fourth
        train_stage.train(parse_params(skipping), "ddpm")
    assert _weights_sha256(root / "models/ddpm") == before


def test_a_run_stopped_by_the_time_cap_says_so(workspace):
    root, params = workspace
    data = tiny_params()
    data["train"].update(time_limit_s=1e-3, out_dir="capped")
    capped = parse_params(data)
    summary = train_stage.train(capped, "ddpm")
    assert summary["stopped_by"] == "time_limit"
    assert summary["steps"] == capped.train.log_every < summary["planned_steps"]  # the first check
    run = tracking.client().get_run(tracking.load_run_id(root / "capped/ddpm"))
    assert run.data.tags["stopped_by"] == "time_limit"


def test_ray_workers_run_at_the_drivers_priority_with_the_local_settings(workspace):
    """The local instance's settings reach the workers (and so Ray Train's controller): the
    driver's priority, the controller's short poll of its workers, plain print(), and a placement
    group cleaner that does not warn once a second that no dashboard answers."""
    import logging

    import ray

    from flows.distributed.ray_cluster import LOCAL_ENV, connect

    ray.shutdown()  # an instance another test started may not be connect()'s
    connect()
    cleaner = "ray.train.v2._internal.execution.controller.placement_group_cleaner"

    @ray.remote(num_cpus=0)
    def worker_settings():
        return os.nice(0), {key: os.environ.get(key) for key in LOCAL_ENV}, logging.getLogger(cleaner).level

    niceness, settings, cleaner_level = ray.get(worker_settings.remote())
    assert niceness == os.nice(0)
    assert settings == LOCAL_ENV
    assert cleaner_level == logging.ERROR


def test_a_local_run_starts_no_preemption_watcher(workspace):
    """Nothing drains a local instance's node, so Ray Train's preemption watcher, an actor whose
    process takes CPU from training, is not started (RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0)."""
    import ray

    data = tiny_params()
    data["train"].update(out_dir="unwatched")
    train_stage.train(parse_params(data), "ddpm")
    # the GCS's actor table (ray.util.state needs the dashboard, which a local instance does not run)
    classes = {actor["ActorClassName"] for actor in ray._private.state.actors().values()}
    assert "TrainController" in classes and "PreemptionWatcher" not in classes
