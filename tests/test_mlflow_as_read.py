"""MLflow and Prefect as their users read them (issue 30). After a tiny pipeline (two training
seeds: a parent run and two children), every MLflow run is in a terminal state with an end time,
carries MLflow's source tags and the data set as dataset inputs (digest: the manifest's sha256),
each registered version points at a logged model of its training run with the evaluation
metrics linked to it, and the experiment stores the comparison view that compare.md links to.
A `diffusion pipeline` stopped by SIGTERM is Cancelled in Prefect (its MLflow run KILLED); one
that fails is Failed with the error's message."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from flows.config.params import parse_params
from flows.stages.data import manifest_hash
from flows.tracking import integrity, registry, run_status, ui
from flows.tracking import runs as tracking
from tests.test_services import free_port, service_env, start, stop, wait_http
from tests.tiny import ROOT, in_workspace, tiny_params, write_params
from tests.waiting import log_tail, registered_checkpoint_step, registered_checkpoint_steps, wait_for

pytestmark = pytest.mark.slow  # a pipeline, a Prefect server: the service tier

BIN = Path(sys.executable).parent
TERMINAL = {"FINISHED", "FAILED", "KILLED"}


@pytest.fixture(scope="module")
def pipeline_store(tmp_path_factory):
    """(workspace, params, MLflow client) after the Prefect flow on the tiny checkerboard with
    ddpm at training seeds 0 and 1."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.entry.pipeline import pipeline_flow

    root = tmp_path_factory.mktemp("mlflow_as_read")
    with in_workspace(root), prefect_test_harness(server_startup_timeout=120):
        params = parse_params(tiny_params())
        pipeline_flow(params_path=None, params=params, seeds=[0, 1])
        yield root, params, tracking.client()


def _runs(client, experiment: str) -> list:
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], max_results=100)


def test_every_run_has_ended_with_an_end_time(pipeline_store):
    _, _, client = pipeline_store
    runs = _runs(client, "toy-checkerboard")
    assert sorted(r.info.run_name for r in runs) == ["compare", "ddpm", "ddpm.s0", "ddpm.s1"]
    for run in runs:  # the parent 'ddpm' too: it ends with its children's stages
        assert run.info.status == "FINISHED", (run.info.run_name, run.info.status)
        assert run.info.end_time and run.info.end_time >= run.info.start_time, run.info.run_name
        assert run_status.ERROR_TAG not in run.data.tags


def test_runs_carry_mlflows_source_tags(pipeline_store):
    _, _, client = pipeline_store
    for run in _runs(client, "toy-checkerboard"):
        tags = run.data.tags
        commit = tags["mlflow.source.git.commit"]  # the code's commit (HEAD may have moved on since)
        ancestor = subprocess.run(["git", "merge-base", "--is-ancestor", commit, "HEAD"], cwd=ROOT)
        assert len(commit) == 40 and ancestor.returncode == 0 and tags["mlflow.source.type"] == "LOCAL"
        assert tags["mlflow.user"] and tags["mlflow.source.name"].startswith("flows/stages/")


def test_training_runs_log_the_data_set_as_dataset_inputs(pipeline_store):
    _, params, client = pipeline_store
    sha256 = manifest_hash(params)
    for run in _runs(client, "toy-checkerboard"):
        if run.info.run_name not in ("ddpm.s0", "ddpm.s1"):
            continue
        inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
        assert set(inputs) == {"toy-checkerboard-train", "toy-checkerboard-test"}
        for split, found in (("train", inputs["toy-checkerboard-train"]), ("test", inputs["toy-checkerboard-test"])):
            assert found.dataset.digest == sha256[:tracking.DIGEST_CHARS]  # all the digest MLflow keeps
            assert f'"manifest_sha256": "{sha256}"' in found.dataset.profile
            assert {t.key: t.value for t in found.tags} == {ui.CONTEXT_TAG: split}


def test_registered_versions_are_logged_models_with_linked_metrics(pipeline_store):
    _, _, client = pipeline_store
    versions = client.search_model_versions("name='toy-checkerboard-ddpm'")
    assert len(versions) == 2
    for version in versions:
        model_id = registry.model_id_of(version)  # the version's source: models:/<model id>
        model = client.get_logged_model(model_id)
        run = client.get_run(version.run_id)
        assert model.source_run_id == version.run_id and model.name == run.info.run_name.replace(".", "_")
        assert str(model.status) in ("READY", "LoggedModelStatus.READY")
        assert model_id in [o.model_id for o in run.outputs.model_outputs]  # the run page lists it
        linked = {m.key: m for m in model.metrics}
        assert linked["eval_swd_ratio"].value == run.data.metrics["eval_swd_ratio"]
        assert linked["eval_swd_ratio"].dataset_name == "toy-checkerboard-test"
        # the security rule holds: the installed code builds the sampler once every stored file
        # of the logged model matches the digests recorded at registration
        sampler = integrity.load_verified(version, tracking.tracking_uri())
        assert sampler.predict(None, params={"num_samples": 4, "seed": 1}).shape == (4, 2)


def test_the_experiment_stores_the_comparison_view_that_compare_links(pipeline_store):
    root, _, client = pipeline_store
    experiment = client.get_experiment_by_name("toy-checkerboard")
    view = experiment.tags[ui.VIEW_TAG]
    for column in ("tags.`recipe`", "tags.`steps`", "tags.`headline`", "metrics.`eval_swd_ratio`"):
        assert column in view
    report = (root / "reports" / "compare.md").read_text()
    assert (f"#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"
            f"&viewStateShareKey={ui.VIEW_KEY}") in report


# -- Prefect's state of a stopped and of a failed `diffusion pipeline` -------------------------

@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """(PREFECT_API_URL, logs folder) of `prefect server start` on 127.0.0.1."""
    logs = tmp_path_factory.mktemp("prefect_states")
    port = free_port()
    env = service_env(PREFECT_HOME=str(logs / "prefect"), PREFECT_UI_ENABLED="false")
    proc = start([BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", port],
                 logs / "prefect.log", env, cwd=logs)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health", proc, logs / "prefect.log", timeout_s=180)
        yield f"http://127.0.0.1:{port}/api", logs
    finally:
        stop(proc)


def _pipeline(root: Path, api_url: str) -> subprocess.Popen:
    env = service_env(PREFECT_API_URL=api_url, PREFECT_HOME=str(root / "prefect-client"))
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    with open(root / "pipeline.log", "wb") as out:
        return subprocess.Popen([str(BIN / "diffusion"), "pipeline"], cwd=root, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _flow_states(api_url: str) -> dict:
    """Every flow run's state on the server, by flow run id."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        with get_client(sync_client=True) as client:
            return {run.id: run.state for run in client.read_flow_runs()}


def test_a_pipeline_stopped_by_sigterm_is_cancelled_and_its_run_killed(prefect_server, tmp_path):
    api_url, _ = prefect_server
    write_params(tmp_path, tiny_params(vector={"steps": 5000}, train={"checkpoint_every": 20, "time_limit_s": 300}))
    proc = _pipeline(tmp_path, api_url)
    try:
        wait_for(lambda: registered_checkpoint_step(tmp_path / "ray_results"), "a first checkpoint",
                 timeout_s=300, alive=proc, detail=log_tail(tmp_path / "pipeline.log"))
        proc.send_signal(signal.SIGTERM)  # to the driver alone, as a scheduler's stop does
        assert proc.wait(timeout=180) == 1, log_tail(tmp_path / "pipeline.log")()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    states = list(_flow_states(api_url).values())
    stopped = [s for s in states if s.type.value == "CANCELLED"]
    assert len(stopped) == 1 and stopped[0].name == "Cancelled", [(s.name, s.message) for s in states]
    assert "SIGTERM" in (stopped[0].message or "") or "stop" in (stopped[0].message or "").lower()
    with in_workspace(tmp_path):
        run = _runs(tracking.client(), "toy-checkerboard")[0]
    assert run.info.status == "KILLED" and run.info.end_time, run.info
    assert "TrainingInterrupted" in run.data.tags[run_status.ERROR_TAG]


def test_a_pipeline_stopped_while_sampling_is_cancelled_and_its_run_killed(prefect_server, tmp_path):
    """Outside training's checkpointed stop, SIGTERM stops at once (sampling keeps its finished
    parts), and the run and the flow still end as a stop, not a crash or a failure."""
    api_url, _ = prefect_server
    write_params(tmp_path, tiny_params(vector={"steps": 40, "num_samples": 40000},
                                       ddpm={"sampler": {"name": "ancestral"}}))
    earlier = _flow_states(api_url)
    proc = _pipeline(tmp_path, api_url)
    parts = tmp_path / "samples" / "ddpm" / "parts"
    try:
        wait_for(lambda: parts.is_dir() and any(parts.iterdir()), "a first sample part", timeout_s=300,
                 alive=proc, detail=log_tail(tmp_path / "pipeline.log"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 1, log_tail(tmp_path / "pipeline.log")()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    states = [s for run, s in _flow_states(api_url).items() if run not in earlier]
    assert len(states) == 1 and states[0].name == "Cancelled", [(s.name, s.message) for s in states]
    assert "SIGTERM" in states[0].message
    with in_workspace(tmp_path):
        run = _runs(tracking.client(), "toy-checkerboard")[0]
    assert run.info.status == "KILLED" and run.info.end_time, run.info
    assert "SIGTERM" in run.data.tags[run_status.ERROR_TAG]


def test_two_runs_side_by_side_stopped_by_sigterm_both_checkpoint_and_are_killed(prefect_server, tmp_path):
    """Runs side by side train in threads of the flow, where no signal handler can be: the
    main thread's SIGTERM writes each run's stop file, both checkpoint and end, and the flow is
    Cancelled with both MLflow runs KILLED (the real local Ray: 2 CPUs hold two 1-CPU runs)."""
    api_url, _ = prefect_server
    write_params(tmp_path, tiny_params(
        vector={"steps": 5000}, ray={"num_workers": 1, "cpus_per_worker": 1},
        train={"frameworks": ["ddpm.s0", "ddpm.s1"], "checkpoint_every": 20, "time_limit_s": 300}))
    earlier = _flow_states(api_url)
    proc = _pipeline(tmp_path, api_url)
    try:
        wait_for(lambda: len(registered_checkpoint_steps(tmp_path / "ray_results")) == 2,
                 "a checkpoint of both runs", timeout_s=300, alive=proc, detail=log_tail(tmp_path / "pipeline.log"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=180) == 1, log_tail(tmp_path / "pipeline.log")()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log = (tmp_path / "pipeline.log").read_text(errors="replace")
    assert "pipeline: 2 run(s), 2 at a time" in log
    states = [s for run, s in _flow_states(api_url).items() if run not in earlier]
    assert len(states) == 1 and states[0].name == "Cancelled", [(s.name, s.message) for s in states]
    with in_workspace(tmp_path):
        runs = {r.info.run_name: r for r in _runs(tracking.client(), "toy-checkerboard")}
    for name in ("ddpm.s0", "ddpm.s1"):
        assert runs[name].info.status == "KILLED" and runs[name].info.end_time, runs[name].info
        assert "TrainingInterrupted" in runs[name].data.tags[run_status.ERROR_TAG]
    steps = registered_checkpoint_steps(tmp_path / "ray_results")
    assert len(steps) == 2 and all(step < 5000 for step in steps.values()), steps  # what a rerun resumes


def test_a_failed_pipeline_is_failed_with_the_errors_message(prefect_server, tmp_path):
    api_url, _ = prefect_server
    (tmp_path / "no-images").mkdir()  # params are valid, prepare fails inside the flow
    write_params(tmp_path, tiny_params(source=f"folder:{tmp_path / 'no-images'}"))
    proc = _pipeline(tmp_path, api_url)
    assert proc.wait(timeout=300) != 0, log_tail(tmp_path / "pipeline.log")()
    failed = wait_for(lambda: [s for s in _flow_states(api_url).values() if s.type.value == "FAILED"],
                      "the flow run's Failed state", timeout_s=30)
    assert len(failed) == 1 and "no-images" in failed[0].message, [(s.name, s.message) for s in failed]
