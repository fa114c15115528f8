"""The stages against the real services: Ray Train on loopback with 2 workers, MLflow's sqlite
store, webdataset shards on disk."""
import json
import time

import numpy as np
import pytest

from flows.config.params import parse_params
from flows.distributed.ray_cluster import RayUnavailable, connect, require_resources
from flows.stages import data as stages
from flows.stages import train as train_stage
from flows.tracking import runs as tracking
from tests.tiny import in_workspace, tiny_params
from tests.waiting import registered_checkpoint_step, wait_for

pytestmark = pytest.mark.slow  # Ray Train, Ray actors, the stages: the service tier


@pytest.fixture(scope="module")
def trained(tiny_vp_runs):
    """The session's tiny ddpm run (prepare -> train -> sample -> evaluate on the checkerboard),
    worked on in its folder."""
    root, params, out = tiny_vp_runs
    with in_workspace(root):
        yield (root, params, *out["ddpm"])


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


def test_the_registered_sampler_draws_the_sample_stages_samples(trained):
    """Sample i of seed s from the registry's pyfunc is sample i the sample stage drew on its Ray
    actors with sample.seed = s (same seed scheme, sampler and weights)."""
    from flows.tracking import registry

    root, params, _, _, _ = trained
    name = registry.register(params, "ddpm")["name"]
    x = registry.load_sampler(name).predict(None, params={"num_samples": 8, "seed": params.sample.seed})
    stage = np.load(root / "samples/ddpm/samples.npz")["x"]
    assert x.shape == (8, 2) and x.dtype == np.float32
    np.testing.assert_allclose(x, stage[:8], rtol=0, atol=1e-4)
    other = registry.load_sampler(name).predict(None, params={"num_samples": 8, "seed": params.sample.seed + 1})
    assert not np.isclose(other, stage[:8], rtol=0, atol=1e-4).all(axis=1).any()


def test_a_killed_worker_resumes_from_the_last_checkpoint(trained, tmp_path, monkeypatch):
    """Ray restarts the worker group (FailureConfig) and the loop resumes via get_checkpoint()
    from the checkpoint the controller had registered when the worker was killed (or a later one)."""
    import threading

    monkeypatch.chdir(tmp_path)
    steps = 400  # the kill comes at the first registered checkpoint (step 50 or soon after): mid-run
    params = parse_params(tiny_params(vector={"steps": steps}, train={"checkpoint_every": 50}))
    stages.prepare(params)
    result, started = {}, time.time()

    def run():
        try:
            result.update(train_stage.train(params, "ddpm"))
        except Exception as err:  # noqa: BLE001 -- reported below, not lost in the thread
            result["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    registered = wait_for(lambda: registered_checkpoint_step(tmp_path / "ray_results"),
                          "a checkpoint registered by Ray Train's controller", alive=thread,
                          detail=lambda: repr(result.get("error")))
    _kill_one_train_worker(started)
    thread.join(timeout=600)
    assert not thread.is_alive(), "training did not finish within 600 s of the kill"
    assert "error" not in result, result.get("error")
    assert result["steps"] == steps
    run_id = tracking.load_run_id(tmp_path / "models/ddpm")
    resumed = tracking.client().get_metric_history(run_id, "resumed_from_step")
    assert resumed, "no resume from a checkpoint was logged"
    assert registered <= resumed[0].value < steps, (registered, resumed[0].value)
