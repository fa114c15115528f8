"""Faults injected for real: a full disk while an output is written, a stage's process killed
halfway (os._exit at the worst moment, no clean-up), two pipelines started at once. In each,
the last good output survives whole and nothing is lost that was finished."""
import errno
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from diffusion_core.data import atomic, shards
from flows.entry.lock import LOCK_NAME
from tests.tiny import in_workspace, tiny_params, write_params
from tests.waiting import wait_for


def _tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs: a real full disk (needs root, as in CI)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> None:
    try:
        with open(disk / "filler", "wb", buffering=0) as fh:
            while True:
                fh.write(b"\0" * 65536)
    except OSError as err:
        assert err.errno == errno.ENOSPC


def test_a_full_disk_keeps_the_old_shards_and_metrics(small_disk):
    rng = np.random.default_rng(0)
    old = {"train": (rng.normal(size=(300, 2)).astype(np.float32), None)}
    shards.write_shards(small_disk / "shards", old, 100, {"source": "old"})
    atomic.write_json(small_disk / "metrics.json", {"fd": 1.0})
    before = _tree_digest(small_disk / "shards")
    _fill(small_disk)
    new = {"train": (rng.normal(size=(3000, 2)).astype(np.float32), None)}
    with pytest.raises(OSError) as err:
        shards.write_shards(small_disk / "shards", new, 100, {"source": "new"})
    assert err.value.errno == errno.ENOSPC
    with pytest.raises(OSError):
        atomic.write_json(small_disk / "metrics.json", {"fd": 2.0, "pad": "x" * 2_000_000})
    assert _tree_digest(small_disk / "shards") == before
    shards.verify_shards(small_disk / "shards")
    assert json.loads((small_disk / "metrics.json").read_text()) == {"fd": 1.0}
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "metrics.json", "shards"]


def _crash_in(workspace: Path, target: str, after_calls: int, argv: list[str]) -> subprocess.CompletedProcess:
    """Run `diffusion <argv>` in a subprocess whose `target` (module:function) kills the process
    with os._exit(137), no clean-up, on its `after_calls`-th call, after doing its work."""
    module, function = target.split(":")
    script = textwrap.dedent(f"""
        import importlib, os, sys
        module = importlib.import_module({module!r})
        real, calls = getattr(module, {function!r}), []
        def crashing(*args, **kwargs):
            out = real(*args, **kwargs)
            calls.append(1)
            if len(calls) >= {after_calls}:
                os._exit(137)
            return out
        setattr(module, {function!r}, crashing)
        from flows.entry.cli import main
        sys.exit(main({argv!r}))
    """)
    return subprocess.run([sys.executable, "-c", script], cwd=workspace, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow  # the CLI killed in a process of its own, then prepare twice: ~10-25 s here
def test_prepare_killed_halfway_keeps_the_old_shards(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, tiny_params())
    from flows.entry.cli import main

    assert main(["prepare"]) == 0
    before = _tree_digest(tmp_path / "data/shards")
    write_params(tmp_path, tiny_params(data={"seed": 7}))  # other shards, if they got through
    crashed = _crash_in(tmp_path, "diffusion_core.data.shards:_write_split", 1, ["prepare"])
    assert crashed.returncode == 137, crashed.stderr
    assert _tree_digest(tmp_path / "data/shards") == before
    shards.verify_shards(tmp_path / "data/shards")
    assert any(p.name.startswith(".shards.tmp-") for p in (tmp_path / "data").iterdir())
    assert main(["prepare"]) == 0  # the rerun writes the new shards and sweeps the leftovers
    assert _tree_digest(tmp_path / "data/shards") != before
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["shards"]
    assert not (tmp_path / LOCK_NAME).exists()


@pytest.mark.slow
def test_two_pipelines_at_once_the_second_is_refused(tmp_path):
    from tests.test_services import service_env, start, stop

    write_params(tmp_path, tiny_params())
    first = start([sys.executable, "-m", "flows.entry.cli", "pipeline"], tmp_path / "first.log",
                  service_env(), cwd=tmp_path)
    try:
        holder = wait_for(lambda: (tmp_path / LOCK_NAME).is_file() and
                          json.loads((tmp_path / LOCK_NAME).read_text() or "{}"),
                          "the first pipeline's lock", alive=first)
        second = subprocess.run([sys.executable, "-m", "flows.entry.cli", "pipeline"], cwd=tmp_path,
                                env=service_env(), capture_output=True, text=True, timeout=120)
        assert second.returncode == 1
        assert f"pid {holder['pid']}" in second.stderr and "in use" in second.stderr
    finally:
        stop(first)
    # the first was killed with its lock in place: the lock is stale, and the next run takes it
    third = subprocess.run([sys.executable, "-m", "flows.entry.cli", "prepare"], cwd=tmp_path,
                           env=service_env(), capture_output=True, text=True, timeout=120)
    assert third.returncode == 0, third.stderr


def test_a_metric_log_makes_its_one_client_before_the_first_batch(tmp_path, monkeypatch):
    """The training loop's MetricLog connects when it is made (before the loop's clock starts:
    importing MLflow and opening the store take seconds) and keeps that client for every batch."""
    from flows.tracking import runs

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for key in runs.QUICK_REQUESTS:
        monkeypatch.delenv(key, raising=False)
    run_id, made, real = runs.start_run("clients", "train", {}, {}), [], runs.client
    monkeypatch.setattr(runs, "client", lambda: made.append(1) or real())
    log = runs.MetricLog(run_id)
    assert made == [1]
    for step in range(3):
        log.log({"loss": float(step)}, step=step)
    assert log.close() == 0 and made == [1]
    assert [m.step for m in real().get_metric_history(run_id, "loss")] == [0, 1, 2]
    # the log's fail-fast settings stay inside its own requests: a model upload later in this
    # process keeps MLflow's retries and timeout
    assert not any(key in os.environ for key in runs.QUICK_REQUESTS)


def test_quick_requests_set_the_variables_inside_and_restore_them_after(monkeypatch):
    from flows.tracking import runs

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "300")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    with runs.quick_requests():
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"  # the user's own setting wins
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"


@pytest.mark.slow
def test_metrics_logged_while_the_mlflow_server_is_away_arrive_once_it_is_back(tmp_path, monkeypatch):
    """Training logs through a MetricLog: with the server stopped, a log returns at once and
    keeps its metrics; once the server is back (same store, same port) they all arrive; what
    never arrives is counted."""
    import time

    from flows.tracking import runs
    from tests.test_services import BIN, free_port, service_env, start, stop, wait_http

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    command = [BIN / "mlflow", "server", "--host", "127.0.0.1", "--port", port, "--workers", "1",
               "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
               "--artifacts-destination", tmp_path / "art"]
    server = start(command, tmp_path / "server.log", service_env())
    wait_http(f"{uri}/health", server, tmp_path / "server.log", timeout_s=180)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run_id = runs.start_run("outage", "train", {}, {})
    log = runs.MetricLog(run_id)
    log.log({"loss": 1.0}, step=1)
    stop(server)
    began = time.monotonic()
    for step in (2, 3):
        log.log({"loss": float(step)}, step=step)  # the server is away: kept, not raised
    assert time.monotonic() - began < 30 and len(log.pending) == 2 and log.last_error
    server = start(command, tmp_path / "server.log", service_env())
    try:
        wait_http(f"{uri}/health", server, tmp_path / "server.log", timeout_s=180)
        log.log({"loss": 4.0}, step=4)
        assert log.close() == 0
        history = runs.client().get_metric_history(run_id, "loss")
        assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]
    finally:
        stop(server)
    lost = runs.MetricLog(run_id)
    lost.log({"loss": 5.0}, step=5)
    assert lost.close() == 1  # the server never came back for this one: counted as lost


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A toy workspace as train and sample leave it (an untrained model and its samples: the
    stages after them need the files, not a good model), evaluated and registered once."""
    import torch

    from diffusion_core.frameworks import DiffusionModel
    from diffusion_core.noise import PerSampleNoise
    from flows.config.params import parse_params
    from flows.stages import data as stages
    from flows.stages import evaluate
    from flows.stages.train import model_config
    from flows.tracking import registry
    from flows.tracking import runs as tracking

    root = tmp_path_factory.mktemp("evaluated")
    data = tiny_params(evaluate={"nfe_sweep": []}, vector={"nll_points": 16})
    with in_workspace(root):
        write_params(root, data)
        params = parse_params(data)
        stages.prepare(params)
        torch.manual_seed(0)
        model = DiffusionModel(model_config(params, "ddpm", {"kind": "vector", "shape": [2]}))
        model.save(root / "models/ddpm")
        tracking.save_run_id(root / "models/ddpm", tracking.start_run("toy-checkerboard", "ddpm", {}, {}),
                             "toy-checkerboard")
        x, nfe = model.sample(500, (2,), params.ddpm.sampler, PerSampleNoise(range(500)))
        shards.write_shards(root / "samples/ddpm/shards", {"samples": (x.numpy(), None)}, 250, {})
        atomic.write_json(root / "samples/ddpm/sampling.json", {"sampler": "ddim", "nfe": nfe, "seed": 1})
        evaluate.evaluate(params, "ddpm")
        registry.register(params, "ddpm")
        yield root


@pytest.mark.slow  # the evaluate stage three times (fixture, killed CLI process, rerun)
def test_evaluate_killed_while_writing_keeps_the_old_metrics(evaluated):
    path = evaluated / "metrics/ddpm.json"
    before = path.read_bytes()
    # killed once the new metrics are written and flushed under their temporary name, before the rename
    crashed = _crash_in(evaluated, "diffusion_core.data.atomic:_fsync", 1, ["evaluate", "--framework", "ddpm"])
    assert crashed.returncode == 137, crashed.stderr
    assert path.read_bytes() == before
    leftovers = [p.name for p in path.parent.iterdir() if p.name.startswith(".")]
    assert leftovers  # the crashed writer's temporary, swept by the next write
    from flows.entry.cli import main

    with in_workspace(evaluated):
        assert main(["evaluate", "--framework", "ddpm"]) == 0
    assert json.loads(path.read_text())["swd"] == json.loads(before)["swd"]  # deterministic
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.slow  # the CLI killed in a process of its own; its fixture runs the evaluate stage
def test_register_killed_halfway_is_completed_by_the_rerun(evaluated):
    from flows.entry.cli import main
    from flows.tracking import runs as tracking

    crashed = _crash_in(evaluated, "flows.tracking.registry:update_champion", 1,
                        ["register", "--framework", "ddpm"])  # after the version, before the alias
    assert crashed.returncode == 137, crashed.stderr
    with in_workspace(evaluated):
        assert main(["register", "--framework", "ddpm"]) == 0
        versions = tracking.client().search_model_versions("name='toy-checkerboard-ddpm'")
        assert len(versions) == 1  # the same training run's version, updated, not a second one
        alias = tracking.client().get_model_version_by_alias("toy-checkerboard-ddpm", "champion")
        assert alias.version == versions[0].version
