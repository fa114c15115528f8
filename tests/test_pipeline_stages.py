"""The stages against the real services: Ray Train on loopback with 2 workers, MLflow's sqlite
store, webdataset shards on disk."""
import json

import numpy as np
import pytest

from flows.config.params import parse_params
from flows.distributed.ray_cluster import RayUnavailable, connect, require_resources
from flows.stages import data as stages
from flows.stages import evaluate
from flows.stages import sample as sample_stage
from flows.stages import train as train_stage
from flows.tracking import runs as tracking
from tests.tiny import tiny_params


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """prepare -> train -> sample -> evaluate once on the tiny checkerboard."""
    root = tmp_path_factory.mktemp("pipeline")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("RAY_ADDRESS", raising=False)
        params = parse_params(tiny_params())
        stages.prepare(params)
        summary = train_stage.train(params, "ddpm")
        sampled = sample_stage.sample(params, "ddpm")
        result = evaluate.evaluate(params, "ddpm")
        yield root, params, summary, sampled, result


def test_ray_train_ran_two_workers_and_checkpointed(trained):
    root, params, summary, _, _ = trained
    assert summary["steps"] == params.vector.steps
    assert summary["world_size"] == 2
    assert 0 < summary["loop_seconds"] < summary["train_seconds"]  # fit() adds Ray's worker start-up
    assert {"model.json", "weights.pt", "mlflow_run.json"} <= {p.name for p in (root / "models/ddpm").iterdir()}
    import ray

    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
    checkpoints = list((root / "ray_results").glob("*/checkpoint_*"))
    assert checkpoints, "Ray Train reported no checkpoint to storage_path"


def test_mlflow_run_has_params_metrics_and_artifacts(trained):
    root, params, _, _, _ = trained
    client = tracking.client()
    run = client.get_run(tracking.load_run_id(root / "models/ddpm"))
    assert run.data.tags["framework"] == "ddpm"
    assert len(run.data.tags["data_manifest_sha256"]) == 64
    assert run.data.params["ddpm.parameterization"] == params.ddpm.parameterization
    assert run.data.params["vector.steps"] == str(params.vector.steps)
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert len(losses) == params.vector.steps // params.train.log_every
    assert all(np.isfinite(m.value) for m in losses)
    assert run.data.metrics["samples_per_s"] > 0
    assert "eval_swd" in run.data.metrics and "eval_swd_floor" in run.data.metrics
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"samples", "metrics"} <= names


def test_samples_npz_picture_and_metrics(trained):
    root, params, _, sampled, result = trained
    x = np.load(root / "samples/ddpm/samples.npz")["x"]
    assert x.shape == (params.vector.num_samples, 2) and x.dtype == np.float32
    assert (root / "samples/ddpm/samples.png").stat().st_size > 1000
    assert sampled["nfe"] == params.ddpm.sampler["steps"]
    saved = json.loads((root / "metrics/ddpm.json").read_text())
    for key in ("swd", "swd_floor", "mmd", "mmd_floor", "off_support", "nfe", "seed", "sampler"):
        assert key in saved
    assert saved == json.loads(json.dumps(result))
    assert 0 <= saved["off_support"] <= 1 and saved["off_support_real"] == 0


def test_asking_for_more_workers_than_the_cluster_has_fails_fast(trained):
    params = parse_params(tiny_params(ray={"num_workers": 64, "resources_timeout_s": 2}))
    connect()
    with pytest.raises(RayUnavailable, match="num_workers=64"):
        require_resources(params.ray, poll_s=0.5)


def _kill_one_train_worker(started_after: float) -> int:
    """Kill a worker of the run under test, not one left from an earlier run of this Ray."""
    import psutil

    for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
        if ("RayTrainWorker" in " ".join(proc.info["cmdline"] or [])
                and proc.info["create_time"] >= started_after):
            proc.kill()
            return proc.info["pid"]
    raise AssertionError("no Ray Train worker process found")


def test_a_killed_worker_resumes_from_the_last_checkpoint(trained, tmp_path, monkeypatch):
    """Ray restarts the worker group (FailureConfig) and the loop resumes via get_checkpoint()."""
    import threading
    import time

    monkeypatch.chdir(tmp_path)
    steps = 1000  # the kill comes after 2 checkpoints (100 steps), a few seconds in
    params = parse_params(tiny_params(vector={"steps": steps}, train={"checkpoint_every": 50}))
    stages.prepare(params)
    result, started = {}, time.time()
    thread = threading.Thread(target=lambda: result.update(train_stage.train(params, "ddpm")))
    thread.start()
    deadline = time.time() + 120
    # Checkpoints land on disk before the controller registers them: wait for several, then
    # give the controller a moment, so the kill comes after at least one is registered.
    while len(list(tmp_path.glob("ray_results/*/checkpoint_*"))) < 2 and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(3)
    _kill_one_train_worker(started)
    thread.join(timeout=600)
    assert result["steps"] == steps
    run_id = tracking.load_run_id(tmp_path / "models/ddpm")
    resumed = tracking.client().get_metric_history(run_id, "resumed_from_step")
    assert resumed and 50 <= resumed[0].value < steps
