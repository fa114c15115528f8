"""Real services that ask who you are, each started by the test on 127.0.0.1 and stopped by it:
`mlflow server --app-name basic-auth` with infra/mlflow/basic_auth.ini refuses an anonymous
client and takes the pipeline's writes under MLFLOW_TRACKING_USERNAME/_PASSWORD, while another
user may read them but not change them; `prefect server start` with an API auth string refuses
a client without it and `diffusion deploy` sends it from PREFECT_API_AUTH_STRING; `ray start`
in token mode refuses a job sent without the token (the job's code does not run), runs one sent
with it, and the pipeline's connect() sends RAY_AUTH_TOKEN. docs/security.md names these tests."""
import base64
import configparser
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from diffusion_core.frameworks import DiffusionModel
from flows.config.params import parse_params
from flows.stages import data as stages
from flows.stages import train as train_stage
from flows.tracking import integrity, registry
from flows.tracking import runs as tracking
from tests.test_services import BIN, INFRA, diffusion, free_port, service_env, start, stop, wait_http
from tests.tiny import fd_record, in_workspace, tiny_params, write_params
from tests.waiting import log_tail, wait_for

pytestmark = pytest.mark.slow  # MLflow, Prefect and Ray servers: the service tier


def http(method: str, url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, str]:
    """(status, body text) of one request; an HTTP error is an answer, not an exception."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# --- MLflow -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """(URL, {user: password}) of a basic-auth server configured by infra/mlflow/basic_auth.ini
    (its user store moved to a temporary folder), with users `pipeline` and `mallory`."""
    logs = tmp_path_factory.mktemp("mlflow-auth")
    config = configparser.ConfigParser()
    config.read(INFRA / "mlflow/basic_auth.ini")
    config["mlflow"]["database_uri"] = f"sqlite:///{logs / 'basic_auth.db'}"
    with open(logs / "basic_auth.ini", "w") as fh:
        config.write(fh)
    users = {name: secrets.token_hex(12) for name in ("admin", "pipeline", "mallory")}
    env = service_env(MLFLOW_AUTH_CONFIG_PATH=str(logs / "basic_auth.ini"), MLFLOW_AUTH_ADMIN_USERNAME="admin",
                      MLFLOW_AUTH_ADMIN_PASSWORD=users["admin"],
                      MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16))
    port = free_port()
    proc = start([BIN / "mlflow", "server", "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", port,
                  "--workers", "1", "--backend-store-uri", f"sqlite:///{logs / 'mlflow.db'}",
                  "--artifacts-destination", logs / "mlartifacts"], logs / "mlflow.log", env, cwd=logs)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", proc, logs / "mlflow.log", timeout_s=180)
        for name in ("pipeline", "mallory"):
            status, text = http("POST", f"{url}/api/2.0/mlflow/users/create",
                                {"username": name, "password": users[name]}, basic("admin", users["admin"]))
            assert status == 200, text
        yield url, users
    finally:
        stop(proc)


def test_mlflow_refuses_an_anonymous_client(mlflow_server):
    url, users = mlflow_server
    create = f"{url}/api/2.0/mlflow/experiments/create"
    assert http("POST", create, {"name": "anonymous"})[0] == 401
    assert http("POST", create, {"name": "guessed"}, basic("pipeline", "mlflow"))[0] == 401
    assert http("GET", f"{url}/api/2.0/mlflow/experiments/search?max_results=10")[0] == 401
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    with pytest.MonkeyPatch.context() as patch:
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
            patch.delenv(name, raising=False)
        with pytest.raises(MlflowException, match="401|Unauthorized|credentials"):
            MlflowClient(tracking_uri=url).create_experiment("anonymous-client")
    status, text = http("POST", f"{url}/api/2.0/mlflow/experiments/search", {"max_results": 100},
                        basic("admin", users["admin"]))
    assert status == 200 and "anonymous" not in text  # nothing was written


def _register_as_pipeline(root, url: str, password: str, patch) -> dict:
    """The pipeline's train and register writes, with the credentials in the usual variables."""
    patch.setenv("MLFLOW_TRACKING_URI", url)
    patch.setenv("MLFLOW_TRACKING_USERNAME", "pipeline")
    patch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    params = parse_params(tiny_params())
    stages.prepare(params)
    model_dir = root / "models" / "ddpm"
    DiffusionModel(train_stage.model_config(params, "ddpm", stages.dataset_meta(params))).save(model_dir)
    run_id = tracking.start_run("toy-checkerboard", "ddpm", {}, {"framework": "ddpm"})
    tracking.save_run_id(model_dir, run_id, "toy-checkerboard")
    (root / "metrics").mkdir()
    (root / "metrics" / "ddpm.json").write_text(json.dumps(fd_record(1.5, name="swd")))
    return {"run_id": run_id, **registry.register(params, "ddpm")}


def test_mlflow_takes_the_pipelines_writes_and_another_user_cannot_change_them(mlflow_server, tmp_path):
    url, users = mlflow_server
    with in_workspace(tmp_path) as patch:
        done = _register_as_pipeline(tmp_path, url, users["pipeline"], patch)
        name, version = done["name"], str(done["version"])
        client = tracking.client()
        client.set_registered_model_alias(name, "under-test", version)
        stored = client.get_model_version(name, version)
        assert stored.tags[integrity.DIGEST_TAG] and stored.source.startswith("models:/m-")
        location = client.get_logged_model(registry.model_id_of(stored)).artifact_location
        assert location.startswith("mlflow-artifacts:/"), location  # proxied by the server
        x = registry.load_sampler(name, "under-test").predict(None, params={"num_samples": 4, "seed": 1})
        assert x.shape == (4, 2) and np.isfinite(x).all()
        assert not (tmp_path / "mlflow.db").exists(), "the writes went to a local store, not the server"
    mallory = basic("mallory", users["mallory"])
    api = f"{url}/api/2.0/mlflow"
    assert http("GET", f"{api}/registered-models/get?name={name}", headers=mallory)[0] == 200  # READ
    status, _ = http("POST", f"{api}/model-versions/set-tag",
                     {"name": name, "version": version, "key": integrity.DIGEST_TAG, "value": "0" * 64}, mallory)
    assert status == 403
    status, _ = http("POST", f"{api}/registered-models/alias",
                     {"name": name, "alias": "champion", "version": version}, mallory)
    assert status == 403
    # the proxied artifact store: mallory cannot overwrite a stored file of the version
    path = location.removeprefix("mlflow-artifacts:").strip("/")
    target = f"{url}/api/2.0/mlflow-artifacts/artifacts/{path}/sampler_model.py"

    def put(headers) -> int:
        request = urllib.request.Request(target, data=b"print('replaced')\n", method="PUT", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                return reply.status
        except urllib.error.HTTPError as err:
            return err.code

    assert put(mallory) == 403
    with in_workspace(tmp_path) as patch:
        for key, value in (("MLFLOW_TRACKING_URI", url), ("MLFLOW_TRACKING_USERNAME", "mallory"),
                           ("MLFLOW_TRACKING_PASSWORD", users["mallory"])):
            patch.setenv(key, value)
        assert registry.load_sampler(name, "under-test").predict(None, params={"num_samples": 2}).shape == (2, 2)
        # a write the server does allow (the owner's) is still caught by the digests
        assert put(basic("pipeline", users["pipeline"])) == 200
        with pytest.raises(integrity.TamperedVersion, match=r"stored file sampler_model\.py does not match"):
            registry.load_sampler(name, "under-test")


# --- Prefect ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """(API URL, auth string, logs) of a Prefect server that asks for an auth string."""
    logs = tmp_path_factory.mktemp("prefect-auth")
    auth = f"admin:{secrets.token_hex(12)}"
    port = free_port()
    env = service_env(PREFECT_HOME=str(logs / "prefect"), PREFECT_UI_ENABLED="false",
                      PREFECT_SERVER_API_AUTH_STRING=auth)
    proc = start([BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", port],
                 logs / "prefect.log", env, cwd=logs)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health", proc, logs / "prefect.log", timeout_s=180)
        yield f"http://127.0.0.1:{port}/api", auth, logs
    finally:
        stop(proc)


def test_prefect_refuses_a_client_without_the_auth_string(prefect_server, tmp_path):
    api, auth, logs = prefect_server
    user, _, password = auth.partition(":")
    assert http("POST", f"{api}/flows/filter", {})[0] == 401
    assert http("POST", f"{api}/flows/filter", {}, basic(user, "prefect"))[0] == 401
    assert http("POST", f"{api}/flows/filter", {}, basic(user, password))[0] == 200
    write_params(tmp_path, tiny_params())
    env = service_env(PREFECT_API_URL=api, PREFECT_HOME=str(tmp_path / "prefect-client"))
    refused = diffusion(["deploy", "--pool", "auth-pool"], tmp_path, env, timeout=180)
    assert refused.returncode != 0 and "401" in refused.stdout + refused.stderr, refused.stderr[-2000:]
    status, text = http("POST", f"{api}/deployments/filter", {}, basic(user, password))
    assert status == 200 and json.loads(text) == []  # nothing was registered
    accepted = diffusion(["deploy", "--pool", "auth-pool"], tmp_path, {**env, "PREFECT_API_AUTH_STRING": auth},
                         timeout=180)
    assert accepted.returncode == 0, accepted.stdout[-2000:] + accepted.stderr[-2000:]
    status, text = http("POST", f"{api}/deployments/filter", {}, basic(user, password))
    assert status == 200 and {d["name"] for d in json.loads(text)} == {"weekly-retrain", "nightly-evaluation"}


# --- Ray ----------------------------------------------------------------------------------

LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # 127.0.0.1 stays 127.0.0.1 (Ray would take the NIC's address)


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """(GCS address, token) of a one-node Ray in token mode on 127.0.0.1. (No dashboard: this
    install has no ray[default]; its jobs API takes the same token, see docs/security.md.)"""
    logs = tmp_path_factory.mktemp("ray-auth")
    token = secrets.token_hex(32)
    temp = f"/tmp/dfauth{os.getpid() % 100000}"  # short: Ray's socket paths
    gcs = free_port()
    env = service_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, **LOOPBACK)
    proc = start([BIN / "ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
                  "--include-dashboard=false", f"--dashboard-agent-listen-port={free_port()}",
                  f"--metrics-export-port={free_port()}", "--num-cpus=1", "--disable-usage-stats", "--block",
                  f"--temp-dir={temp}"], logs / "ray.log", env)
    try:
        wait_for(lambda: "Ray runtime started" in (logs / "ray.log").read_text(errors="replace"),
                 "the Ray head to start", 180, poll_s=0.5, alive=proc, detail=log_tail(logs / "ray.log"))
        yield f"127.0.0.1:{gcs}", token
    finally:
        stop(proc)
        subprocess.run(["rm", "-rf", temp], check=False)


DRIVER = """
import sys
import ray
from flows.distributed.ray_cluster import connect
connect()  # the pipeline's: RAY_ADDRESS, and RAY_AUTH_TOKEN when set


@ray.remote
def touch(path):
    open(path, "w").write("ran")


ray.get(touch.remote(sys.argv[1]))
"""


def _driver(marker, home, address: str, **auth: str) -> subprocess.Popen:
    """A Ray job (a driver) whose one task writes ``marker``; HOME is a folder with no
    ~/.ray/auth_token, so the only token it has is one given in ``auth``."""
    env = {k: v for k, v in service_env(RAY_ADDRESS=address, HOME=str(home), **LOOPBACK, **auth).items()
           if k != "RAY_AUTH_MODE" or "RAY_AUTH_MODE" in auth}
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(marker)], cwd=home, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_ray_refuses_a_job_without_the_token_and_its_code_does_not_run(ray_head, tmp_path):
    address, token = ray_head
    markers = {case: tmp_path / f"{case}.ran" for case in ("none", "wrong", "given")}
    refused = {"none": _driver(markers["none"], tmp_path, address),
               "wrong": _driver(markers["wrong"], tmp_path, address, RAY_AUTH_TOKEN="0" * 64)}
    for case, proc in refused.items():
        output = proc.communicate(timeout=180)[0]
        assert proc.returncode != 0, f"{case}: the job ran\n{output[-2000:]}"
        assert "Authentication token is missing or incorrect" in output, output[-2000:]
        assert "cannot reach the Ray cluster" in output, output[-2000:]  # named, by the pipeline
        assert not markers[case].exists(), f"{case}: the job's code ran"
    began = time.monotonic()
    given = _driver(markers["given"], tmp_path, address, RAY_AUTH_TOKEN=token)
    output = given.communicate(timeout=300)[0]
    assert given.returncode == 0, output[-3000:]
    assert markers["given"].read_text() == "ran"  # the same job with the token runs: the refusal mattered
    print(f"a job with the token: {time.monotonic() - began:.1f} s")
