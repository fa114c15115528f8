"""The Prefect flow under its test harness (digits: the image path), and `dvc repro` in a
temporary copy of the repo (the checkerboard), both on tiny configurations."""
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny import ROOT, tiny_params, write_params

pytestmark = pytest.mark.slow  # the Prefect flow, `dvc repro`: the service tier


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_prefect_flow_runs_the_dag_and_publishes_a_summary(prefect_harness, tmp_path, monkeypatch):
    from prefect.artifacts import Artifact

    from flows.entry.pipeline import pipeline_flow

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = write_params(tmp_path, tiny_params(source="digits"))
    results = pipeline_flow(params_path=str(path))
    metrics = results["ddpm"]
    assert metrics["fd"] > 0 and metrics["fd_floor"] > 0 and metrics["num_samples"] == 64
    assert 0 < metrics["class_coverage"] <= 1
    weights = tmp_path / "models/classifier/model.pt"  # the FD features' extractor, named by its sha256
    assert metrics["feature_extractor_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert (tmp_path / "metrics/ddpm.json").is_file()
    artifact = Artifact.get("diffusion-pipeline-summary")
    assert artifact is not None and "| ddpm |" in artifact.data
    report = Artifact.get("compare-digits")  # the compare task publishes inside the flow run
    assert report is not None and "ddpm" in report.data


def _copy_repo(target: Path) -> None:
    for name in ("diffusion_core", "flows", "dvc.yaml", ".dvc"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__", "tmp"))
        else:
            shutil.copy(source, target / name)


def _dvc(args, cwd):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PREFECT_API_URL", None)
    return subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def test_dvc_repro_runs_every_stage_then_does_nothing(tmp_path):
    _copy_repo(tmp_path)
    write_params(tmp_path, tiny_params(source="toy:checkerboard"))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    first = _dvc(["repro"], tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    for stage in ("prepare", "train-classifier", "train@ddpm", "sample@ddpm", "evaluate@ddpm"):
        assert f"Running stage '{stage}'" in first.stdout
    assert (tmp_path / "metrics/ddpm.json").is_file() and (tmp_path / "dvc.lock").is_file()
    # Outside a flow run and without PREFECT_API_URL, compare starts no ephemeral Prefect server
    assert "not published as a Prefect artifact (no flow run" in first.stdout
    second = _dvc(["repro"], tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Running stage" not in second.stdout
    shown = _dvc(["metrics", "show"], tmp_path)
    assert "swd" in shown.stdout
