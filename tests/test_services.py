"""Real services, part 1: what needs no long-lived server. The DVC remote (push, a wiped cache,
pull, shards verified), infra/ (the Ray cluster YAML against Ray's own schema, every manifest
and compose file parsed, images pinned), and bounded, named failures when MLFLOW_TRACKING_URI,
RAY_ADDRESS or PREFECT_API_URL point at nothing. Also the helpers the other
test_service_*.py files share: servers started in their own process group, on 127.0.0.1."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.tiny import ROOT, tiny_params, write_params
from tests.waiting import log_tail, wait_for

BIN = Path(sys.executable).parent
TELEMETRY = {"RAY_USAGE_STATS_ENABLED": "0", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
             "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "RAY_AUTH_MODE": "disabled"}
SERVICE_VARS = ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "PREFECT_API_URL",
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")


def service_env(**extra: str) -> dict:
    """This environment without any service address, telemetry off, the venv first on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
    env.update(TELEMETRY, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", **extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(cmd: list, log: Path, env: dict, cwd=None) -> subprocess.Popen:
    """A background process in its own session, so stop() ends it and its children only."""
    with open(log, "ab") as out:
        return subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=cwd, start_new_session=True)


def stop(proc: subprocess.Popen, grace_s: float = 10) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 120) -> float:
    """Seconds until url answers 200; fails with the log's tail if the process exits first."""
    began = time.monotonic()

    def answers() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False

    wait_for(answers, f"{url} to answer 200", timeout_s, poll_s=0.5, alive=proc, detail=log_tail(log))
    return time.monotonic() - began


def diffusion(args: list, cwd, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "diffusion"), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


# --- DVC remote --------------------------------------------------------------------------

def _dvc(args: list, cwd: Path) -> str:
    out = subprocess.run([str(BIN / "dvc"), *args], cwd=cwd, env=service_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"dvc {' '.join(args)}:\n{out.stdout}{out.stderr}"
    return out.stdout


@pytest.mark.slow  # dvc repro, push and pull
def test_dvc_push_then_pull_into_a_wiped_checkout_restores_verified_shards(tmp_path):
    from diffusion_core.data import shards

    repo = tmp_path / "repo"
    for name in ("diffusion_core", "flows"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / ".dvc").mkdir()
    for name in ("dvc.yaml", ".dvc/config", ".dvc/.gitignore"):
        shutil.copy(ROOT / name, repo / name)
    write_params(repo, tiny_params(source="toy:checkerboard"))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    # beside the checkout (`dvc config` prints the resolved path unwrapped, unlike `remote list`)
    assert _dvc(["config", "remote.local.url"], repo).strip() == str(tmp_path / "dvc-remote")
    _dvc(["repro", "prepare", "train-classifier"], repo)
    pushed = _dvc(["push", "prepare", "train-classifier"], repo)
    assert re.search(r"\d+ files? pushed", pushed), pushed
    assert any((tmp_path / "dvc-remote").rglob("*")), "the remote is empty after dvc push"
    before = (repo / "data/shards/manifest.parquet").read_bytes()
    for path in ("data", "models", ".dvc/cache"):
        shutil.rmtree(repo / path)
    _dvc(["pull", "prepare", "train-classifier"], repo)
    assert (repo / "data/shards/manifest.parquet").read_bytes() == before
    shards.verify_shards(repo / "data/shards")  # every shard's sha256 against the manifest
    table, _ = shards.read_manifest(repo / "data/shards")
    assert sum(table.column("num_samples").to_pylist()) == 2000 + 500 + 500  # tiny: train + val + test
    assert (repo / "models/classifier/classifier_metrics.json").is_file()
    assert "in sync" in _dvc(["status", "--cloud", "prepare", "train-classifier"], repo)


# --- infra/ ------------------------------------------------------------------------------

INFRA = ROOT / "infra"


def _pins() -> dict:
    text = (ROOT / "pyproject.toml").read_text()
    pins = {name: re.search(rf'"{name}(?:\[[^\]]*\])?==([^"]+)"', text).group(1)
            for name in ("ray", "prefect", "mlflow")}
    pins["project"] = re.search(r'^version = "([^"]+)"', text, re.M).group(1)
    return pins


def _images(node) -> list[str]:
    if isinstance(node, dict):
        found = [v for k, v in node.items() if k in ("image", "head_image", "worker_image")
                 and isinstance(v, str)]
        return found + [i for v in node.values() for i in _images(v)]
    return [i for v in node for i in _images(v)] if isinstance(node, list) else []


def _documents() -> dict:
    docs = {p: [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
            for p in sorted(INFRA.rglob("*.yaml"))}
    assert docs, "infra/ holds no YAML"
    return docs


def test_ray_cluster_yaml_validates_against_the_schema_shipped_with_ray():
    import jsonschema
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((INFRA / "ray/cluster-aws.yaml").read_text())
    schema = json.loads((Path(ray.__file__).parent / "autoscaler/ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(config))  # what `ray up` runs, with the AWS defaults filled
    workers = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert any("g5" in t["node_config"]["InstanceType"] for t in workers), "no GPU worker type"


def test_every_manifest_and_compose_file_parses_and_pins_its_images():
    pins = _pins()
    expected = {"rayproject/ray": rf"{pins['ray']}-py311(-gpu)?", "prefecthq/prefect": rf"{pins['prefect']}-python3\.11",
                "ghcr.io/mlflow/mlflow": rf"v{pins['mlflow']}", "diffusion-platform": re.escape(pins["project"]),
                "diffusion-mlflow": re.escape(pins["mlflow"])}
    images = [i for docs in _documents().values() for i in _images(docs)]
    images += [m for p in INFRA.rglob("Dockerfile") for m in re.findall(r"^FROM (\S+)", p.read_text(), re.M)]
    assert len(images) >= 10
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest", f"{image}: not pinned"
        for repo, pattern in expected.items():
            if name.endswith(repo):
                assert re.fullmatch(pattern, tag), f"{image}: expected a tag matching {pattern}"
    assert {i.rpartition(":")[0] for i in images} >= {"rayproject/ray", "prefecthq/prefect",
                                                      "ghcr.io/mlflow/mlflow", "diffusion-platform"}


def test_kuberay_and_compose_files_name_what_the_services_need():
    docs = _documents()
    kube = {d["kind"]: d for d in docs[INFRA / "kuberay/raycluster.yaml"] + docs[INFRA / "kuberay/rayjob.yaml"]}
    assert kube["RayCluster"]["apiVersion"] == kube["RayJob"]["apiVersion"] == "ray.io/v1"
    assert kube["RayCluster"]["spec"]["rayVersion"] == _pins()["ray"]
    assert kube["RayJob"]["spec"]["clusterSelector"]["ray.io/cluster"] == kube["RayCluster"]["metadata"]["name"]
    gpu = kube["RayCluster"]["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    mlflow = docs[INFRA / "mlflow/compose.yaml"][0]["services"]
    assert {"postgres", "minio", "mlflow"} <= set(mlflow)
    assert "postgresql://" in " ".join(mlflow["mlflow"]["command"]) and "s3://" in " ".join(mlflow["mlflow"]["command"])
    prefect = docs[INFRA / "prefect/compose.yaml"][0]["services"]
    assert {"server", "worker"} <= set(prefect) and "worker" in prefect["worker"]["command"]
    for services in (mlflow, prefect):
        for name, service in services.items():
            for port in service.get("ports", []):
                assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    readme = (INFRA / "README.md").read_text()
    for needle in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "PREFECT_API_URL", "5000", "4200", "6379",
                   "8265", "10001", "dvc remote", "s3://"):
        assert needle in readme, f"infra/README.md does not mention {needle}"


# --- unreachable services: a bounded wait, a message naming the address and its variable ---

@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A working folder with the tiny checkerboard's shards (prepare needs no service)."""
    from flows.config.params import load_params
    from flows.stages import data as stages

    folder = tmp_path_factory.mktemp("prepared")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        stages.prepare(load_params(write_params(folder, tiny_params())))
    return folder


@pytest.mark.slow  # the `diffusion` command in a process of its own (train, the pipeline)
@pytest.mark.parametrize("variable, value, command", [
    ("MLFLOW_TRACKING_URI", "http://127.0.0.1:{port}", ["train", "--framework", "ddpm"]),
    ("RAY_ADDRESS", "127.0.0.1:{port}", ["train", "--framework", "ddpm"]),
    ("PREFECT_API_URL", "http://127.0.0.1:{port}/api", ["pipeline"]),
])
def test_an_unreachable_service_fails_fast_naming_it_and_writes_nothing(prepared, variable, value, command):
    address = value.format(port=free_port())  # nothing listens there
    before = sorted(p.relative_to(prepared) for p in prepared.rglob("*"))
    began = time.monotonic()
    out = diffusion(command, prepared, service_env(**{variable: address}), timeout=120)
    elapsed = time.monotonic() - began
    assert out.returncode == 1, out.stdout + out.stderr
    assert address in out.stderr and variable in out.stderr, out.stderr
    # the CLI's own probe (a 5 s connect) answered, before any client of the service retried
    assert re.search(rf"cannot reach .*{re.escape(address)}.*\(set by {variable}\) within", out.stderr), out.stderr
    # A generous bound, not a timing window: MLflow's client alone retries for about 4 minutes
    # (7 retries, backoff doubling up to 2 min); the rest is the interpreter's start-up with
    # Ray, MLflow and Prefect imported (~8 s of CPU, ~30 s when this machine's 2 cores are busy).
    assert elapsed < 90, f"took {elapsed:.0f} s"
    assert sorted(p.relative_to(prepared) for p in prepared.rglob("*")) == before


@pytest.mark.slow  # the train stage
def test_a_stage_called_directly_checks_the_tracking_server_before_writing(tmp_path, monkeypatch):
    """The Prefect flow calls the stages without the CLI's checks: train still stops first."""
    from flows.config.params import parse_params
    from flows.stages import data as stages
    from flows.stages import train as train_stage
    from flows.tracking import runs as tracking

    monkeypatch.chdir(tmp_path)
    params = parse_params(tiny_params())
    stages.prepare(params)
    address = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", address)
    with pytest.raises(tracking.TrackingUnavailable, match=f"{address}.*MLFLOW_TRACKING_URI"):
        train_stage.train(params, "ddpm")
    assert not (tmp_path / "models").exists()
