"""Real services, part 3: `prefect server start` and `mlflow server` (sqlite store, proxied
artifacts) on 127.0.0.1. `diffusion deploy` creates the scheduled deployments on a work pool; a
triggered weekly retrain is run by `prefect worker start` and logs to the tracking server over
HTTP, registry and alias included; a second client reads them back and samples the champion;
`diffusion serve` then runs the nightly evaluation itself."""
import json
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.test_services import (
    BIN,
    diffusion,
    free_port,
    service_env,
    start,
    stop,
    wait_http,
)
from tests.tiny import tiny_params, write_params
from tests.waiting import log_tail, wait_for

pytestmark = pytest.mark.slow  # Prefect and MLflow servers, a worker, a pipeline: the service tier

POOL = "test-pool"
ADHOC = "adhoc"  # the triggered runs' queue: the worker leaves scheduled runs alone
RETRAIN, NIGHTLY = "diffusion-pipeline/weekly-retrain", "diffusion-evaluation/nightly-evaluation"


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """(environment naming both servers, logs folder); both stopped afterwards."""
    logs = tmp_path_factory.mktemp("servers")
    mlflow_port, prefect_port = free_port(), free_port()
    procs = []
    try:
        procs.append(start([BIN / "mlflow", "server", "--host", "127.0.0.1", "--port", mlflow_port,
                            "--workers", "1", "--backend-store-uri", f"sqlite:///{logs / 'mlflow.db'}",
                            "--artifacts-destination", logs / "mlartifacts"],
                           logs / "mlflow.log", service_env(), cwd=logs))
        prefect_env = service_env(PREFECT_HOME=str(logs / "prefect"), PREFECT_UI_ENABLED="false",
                                  PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2")
        procs.append(start([BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                            prefect_port], logs / "prefect.log", prefect_env, cwd=logs))
        for url, proc, log in ((f"http://127.0.0.1:{mlflow_port}/health", procs[0], logs / "mlflow.log"),
                               (f"http://127.0.0.1:{prefect_port}/api/health", procs[1], logs / "prefect.log")):
            wait_http(url, proc, log, timeout_s=180)
        yield service_env(MLFLOW_TRACKING_URI=f"http://127.0.0.1:{mlflow_port}",
                          PREFECT_API_URL=f"http://127.0.0.1:{prefect_port}/api",
                          PREFECT_HOME=str(logs / "prefect-client"),
                          PREFECT_WORKER_QUERY_SECONDS="2", PREFECT_RUNNER_POLL_FREQUENCY="2"), logs
    finally:
        for proc in procs:
            stop(proc)


@pytest.fixture(scope="module")
def prefect_client(servers):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    env, _ = servers
    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        with get_client(sync_client=True) as client:
            yield client


def _wait_final(client, run_id, timeout_s: float, alive=None, detail=None):
    """The flow run once it has reached a final state (whichever: the caller asserts which)."""
    def final():
        run = client.read_flow_run(run_id)
        return run if run.state and run.state.is_final() else None

    return wait_for(final, f"flow run {run_id} to reach a final state", timeout_s, poll_s=1,
                    alive=alive, detail=detail or (lambda: str(client.read_flow_run(run_id).state)))


def _trigger(client, name: str, queue: str | None = None):
    from prefect.deployments import run_deployment

    return run_deployment(name=name, client=client, timeout=0, work_queue_name=queue)


@pytest.fixture(scope="module")
def retrained(servers, prefect_client, tmp_path_factory):
    """`diffusion deploy`, then a triggered weekly retrain run by a worker to completion."""
    env, logs = servers
    work = tmp_path_factory.mktemp("work")
    write_params(work, tiny_params(ray={"num_workers": 1, "cpus_per_worker": 1},
                                   evaluate={"nfe_sweep": []}))  # the flow, not the metrics
    began = time.time()
    out = diffusion(["deploy", "--pool", POOL, "--source", "toy:checkerboard", "--frameworks", "ddpm"],
                    work, env, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    deployed_s = time.time() - began
    prefect_client.create_work_queue(name=ADHOC, work_pool_name=POOL)
    run = _trigger(prefect_client, RETRAIN, ADHOC)
    worker = subprocess.run([BIN / "prefect", "worker", "start", "--pool", POOL, "--work-queue", ADHOC,
                             "--run-once"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    (logs / "worker.log").write_text(worker.stdout + worker.stderr)
    run = _wait_final(prefect_client, run.id, 120)  # the worker has returned: the state follows
    assert run.state.is_completed(), f"{run.state}\n{(worker.stdout + worker.stderr)[-4000:]}"
    print(f"deploy {deployed_s:.0f} s, triggered run to completion {time.time() - began - deployed_s:.0f} s")
    return work, run


def test_deploy_creates_both_schedules_on_the_work_pool(retrained, prefect_client):
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    for name, cron, weekday, hour in ((RETRAIN, "0 3 * * 0", 6, 3), (NIGHTLY, "0 2 * * *", None, 2)):
        deployment = prefect_client.read_deployment_by_name(name)
        assert deployment.work_pool_name == POOL
        assert [s.schedule.cron for s in deployment.schedules if s.active] == [cron]
        assert deployment.parameters == {"params_path": "params.yaml", "source": "toy:checkerboard",
                                         "frameworks": ["ddpm"]}
        scheduled = wait_for(  # the server's scheduler service fills these in (every 2 s here)
            lambda deployment=deployment: prefect_client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])))),
            f"{name}: a run made by the scheduler", 120, poll_s=1)
        for run in scheduled:
            when = run.expected_start_time
            assert (when.hour, when.minute) == (hour, 0) and weekday in (None, when.weekday()), when


def test_the_worker_completed_the_retrain_with_its_artifact_and_outputs(retrained, prefect_client):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    work, run = retrained
    artifacts = prefect_client.read_artifacts(
        artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["diffusion-pipeline-summary"])))
    assert any(a.flow_run_id == run.id and "| ddpm |" in a.data for a in artifacts)
    assert (work / "metrics/ddpm.json").is_file() and (work / "models/ddpm/model.json").is_file()
    assert not (work / "mlflow.db").exists(), "the run logged to a local store, not to the server"


SECOND_CLIENT = """
import json, sys
from mlflow.tracking import MlflowClient
from flows.tracking.registry import load_sampler
client = MlflowClient()
version = client.get_model_version_by_alias("toy-checkerboard-ddpm", "champion")
run = client.get_run(version.run_id)
artifacts = sorted(a.path for a in client.list_artifacts(run.info.run_id))
x = load_sampler("toy-checkerboard-ddpm").predict(None, params={"num_samples": 8, "seed": int(sys.argv[1])})
print(json.dumps({"version": version.version, "run_name": run.info.run_name, "tags": run.data.tags,
                  "metrics": run.data.metrics, "artifacts": artifacts, "x": x.tolist()}))
"""


def test_a_second_client_reads_the_run_the_model_and_its_alias_back(retrained, servers):
    """A fresh process that only knows MLFLOW_TRACKING_URI: run, registry, alias, artifacts."""
    env, _ = servers
    work, _ = retrained
    seed = tiny_params()["sample"]["seed"]  # the seed the retrain's sample stage drew with
    out = subprocess.run([sys.executable, "-c", SECOND_CLIENT, str(seed)], cwd=work.parent, env=env,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["tags"]["framework"] == "ddpm" and len(seen["tags"]["data_manifest_sha256"]) == 64
    assert seen["metrics"]["eval_swd"] > 0 and seen["metrics"]["samples_per_s"] > 0
    assert {"samples", "metrics"} <= set(seen["artifacts"])
    # the champion's samples are the sample stage's, seed by seed (same weights, sampler, seeds)
    np.testing.assert_allclose(np.asarray(seen["x"], np.float32),
                               np.load(work / "samples/ddpm/samples.npz")["x"][:8], rtol=0, atol=1e-4)
    run_id = json.loads((work / "models/ddpm/mlflow_run.json").read_text())["run_id"]
    assert run_id  # the run the worker created is the one the registry points at
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
        from mlflow.tracking import MlflowClient

        assert MlflowClient().get_model_version_by_alias("toy-checkerboard-ddpm", "champion").run_id == run_id


def test_serve_runs_the_nightly_evaluation(retrained, servers, prefect_client):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    env, logs = servers
    work, _ = retrained
    log = logs / "serve.log"
    server = start([BIN / "diffusion", "serve", "--frameworks", "ddpm"], log, env, cwd=work)
    try:
        wait_for(lambda: "being served" in log.read_text(errors="replace"),  # re-registered, polling
                 f"'being served' in {log}", 120, alive=server, detail=log_tail(log))
        run = _wait_final(prefect_client, _trigger(prefect_client, NIGHTLY).id, 300, alive=server,
                          detail=log_tail(log))
        assert run.state.is_completed(), f"{run.state}\n{log.read_text()[-4000:]}"
    finally:
        stop(server)
    artifacts = prefect_client.read_artifacts(
        artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["diffusion-evaluation-summary"])))
    assert any(a.flow_run_id == run.id and "| ddpm |" in a.data for a in artifacts)
