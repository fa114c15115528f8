"""Resume means resume: a run stopped by SIGTERM, or whose driver was killed, continues when the
same command runs again: the same MLflow run and Ray Train run, from the latest checkpoint, with
the step, learning rate, EMA, time spent, data position and noise (the loss's and dropout's) of an uninterrupted run, so
it ends with the same weights. And waiting for Ray's resources means waiting until they are free.

One run is interrupted twice: SIGTERM after its first checkpoint, then (run again) SIGKILL after
a later one; the third command finishes it. The drivers are `diffusion train` processes on one
Ray instance that this module starts (RAY_ADDRESS), so that each does not start its own."""
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from flows.config.params import parse_params
from flows.distributed.ray_cluster import RayUnavailable, connect, require_resources
from flows.stages import data as stages
from flows.stages import train as train_stage
from flows.tracking import runs as tracking
from tests.tiny import in_workspace, tiny_params, write_params
from tests.waiting import log_tail, registered_checkpoint_step, wait_for

BIN = Path(sys.executable).parent
TRAIN = {"checkpoint_every": 50, "log_every": 25}
STEPS = 300  # room for a checkpoint registered after each interruption and steps after the last


def _weights_sha256(folder: Path) -> str:
    return hashlib.sha256((folder / "weights.pt").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A prepared workspace and the address of a Ray instance the drivers connect to."""
    import ray

    root = tmp_path_factory.mktemp("resume")
    with in_workspace(root):
        # dropout's masks come from the global generator, which a checkpoint keeps per rank
        data = tiny_params(vector={"steps": STEPS, "network": {"width": 64, "depth": 2, "emb_dim": 32,
                                                               "dropout": 0.1}}, train=TRAIN)
        write_params(root, data)
        stages.prepare(parse_params(data))
        ray.shutdown()  # an instance another test module started may not be connect()'s
        connect()
        yield root, data, ray.get_runtime_context().gcs_address


def _start_train(root: Path, address: str, log: str) -> subprocess.Popen:
    """`diffusion train --framework ddpm` in the workspace, on the module's Ray instance."""
    env = {**os.environ, "RAY_ADDRESS": address, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(root / log, "wb") as out:
        return subprocess.Popen([str(BIN / "diffusion"), "train", "--framework", "ddpm"], cwd=root, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _registered_after(storage: Path, step: int) -> int | None:
    """The step of the run's latest registered checkpoint, if it is past `step`."""
    latest = registered_checkpoint_step(storage)
    return latest if latest is not None and latest > step else None


def _interrupted(root: Path, address: str, log: str, after_step: int, sig: int) -> tuple[int, str, int]:
    """Start the train command and send it `sig` once Ray Train has registered a checkpoint past
    `after_step`; its exit code, its output and that checkpoint's step."""
    proc = _start_train(root, address, log)
    try:
        step = wait_for(lambda: _registered_after(root / "ray_results", after_step),
                        f"a checkpoint registered after step {after_step}", timeout_s=300, alive=proc,
                        detail=log_tail(root / log))
        proc.send_signal(sig)  # to the driver alone
        return proc.wait(timeout=120), (root / log).read_text(errors="replace"), step
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _to_the_end(root: Path, address: str, log: str) -> tuple[int, str]:
    """Run the train command to its end; its exit code and output."""
    proc = _start_train(root, address, log)
    try:
        return proc.wait(timeout=300), (root / log).read_text(errors="replace")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _run_record(root: Path) -> dict:
    return json.loads((root / "models/.ddpm.in-progress.json").read_text())


@pytest.fixture(scope="module")
def interrupted_run(cluster):
    """The three commands of one run: SIGTERM after its first checkpoint, SIGKILL after a later
    one, then to the end. What each left behind, as the tests need it."""
    root, _, address = cluster
    seen = {}
    seen["sigterm_rc"], seen["sigterm_log"], _ = _interrupted(root, address, "sigterm.log", 0, signal.SIGTERM)
    seen["record"] = _run_record(root)
    seen["sigterm_registered"] = registered_checkpoint_step(root / "ray_results")
    seen["models_after_sigterm"] = sorted(p.name for p in (root / "models").iterdir())
    _, _, seen["killed_after"] = _interrupted(root, address, "killed.log", seen["sigterm_registered"],
                                              signal.SIGKILL)
    seen["final_rc"], seen["final_log"] = _to_the_end(root, address, "final.log")
    seen["summary"] = json.loads((root / "models/ddpm/train_summary.json").read_text())
    seen["run_id"] = tracking.load_run_id(root / "models/ddpm")
    return seen


@pytest.mark.slow
def test_sigterm_checkpoints_at_the_next_step_and_exits_naming_it(interrupted_run):
    seen = interrupted_run
    assert seen["sigterm_rc"] == 1, seen["sigterm_log"][-3000:]
    match = re.search(r"interrupted at step (\d+) of (\d+)", seen["sigterm_log"])
    assert match and "run the same command again to resume" in seen["sigterm_log"].lower()
    assert int(match[2]) == STEPS and TRAIN["checkpoint_every"] <= int(match[1]) < STEPS
    assert seen["sigterm_registered"] == int(match[1])  # the checkpoint of the step it names
    assert "ddpm" not in seen["models_after_sigterm"]  # no model written; the record stays
    assert ".ddpm.in-progress.json" in seen["models_after_sigterm"]


@pytest.mark.slow
def test_a_killed_driver_run_again_continues_the_same_run(interrupted_run, cluster):
    root, _, _ = cluster
    seen = interrupted_run
    assert seen["final_rc"] == 0, seen["final_log"][-3000:]
    assert seen["summary"]["steps"] == seen["summary"]["planned_steps"] == STEPS
    assert seen["summary"]["resumed_from_step"] >= seen["killed_after"] > seen["sigterm_registered"]
    assert seen["run_id"] == seen["record"]["run_id"]  # one MLflow run through the three commands
    assert list((root / "ray_results").iterdir()) == [root / "ray_results" / seen["record"]["ray_run_name"]]
    assert not (root / "models/.ddpm.in-progress.json").exists()
    history = tracking.client().get_metric_history(seen["run_id"], "resumed_from_step")
    assert [m.value for m in history] == [seen["sigterm_registered"], seen["summary"]["resumed_from_step"]]
    losses = {}  # steps logged before the kill are logged again after it, with the same loss
    for metric in tracking.client().get_metric_history(seen["run_id"], "loss"):
        losses.setdefault(metric.step, set()).add(metric.value)
    assert sorted(losses) == list(range(TRAIN["log_every"], STEPS + 1, TRAIN["log_every"]))
    assert all(len(values) == 1 for values in losses.values()), losses
    spent = re.findall(r"resumed from the checkpoint at step \d+ .*?; ([\d.]+) s of loop time",
                       seen["final_log"])
    assert spent and float(spent[-1]) > 0  # the time cap counts the time before the kill


@pytest.mark.slow
def test_the_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(interrupted_run, cluster):
    root, data, _ = cluster
    final = _weights_sha256(root / "models/ddpm")
    reference = parse_params({**data, "train": {**data["train"], "out_dir": "reference"},
                              "ray": {**data["ray"], "storage_path": "ray_reference"}})
    summary = train_stage.train(reference, "ddpm")  # in this process, uninterrupted
    assert summary["resumed_from_step"] == 0 and summary["steps"] == STEPS
    assert _weights_sha256(root / "reference/ddpm") == final


@pytest.mark.slow
def test_require_resources_waits_for_free_resources_and_names_total_and_free(cluster):
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    total = ray.cluster_resources()["CPU"]
    holder = placement_group([{"CPU": total}])  # holds every CPU, and none is missing from the total
    ray.get(holder.ready(), timeout=60)
    ask = SimpleNamespace(num_workers=1, cpus_per_worker=1, use_gpu=False, resources_timeout_s=1.0)
    with pytest.raises(RayUnavailable) as error:
        require_resources(ask, poll_s=0.2)
    message = str(error.value)
    assert f"has 0 CPU and 0 GPU free of {total:g} CPU and 0 GPU in total" in message
    assert "other jobs hold the rest" in message
    remove_placement_group(holder)
    require_resources(SimpleNamespace(**{**vars(ask), "resources_timeout_s": 60}), poll_s=0.2)


def test_a_changed_config_starts_a_new_run_and_says_what_changed(tmp_path, capsys):
    """The in-progress record is used only by a run of the same inputs (no Ray, no MLflow)."""
    from diffusion_core.data.atomic import write_json

    inputs = {"steps": 400, "lr": 1e-3, "data_manifest_sha256": "ab"}
    record = {"run_id": "r1", "ray_run_name": "x-ddpm-r1", "inputs": inputs,
              "fingerprint": train_stage._fingerprint(inputs)}
    path = write_json(tmp_path / ".ddpm.in-progress.json", record)
    assert train_stage._unfinished_run(path, {**inputs, "lr": 2e-3}, "ddpm") is None
    assert "lr changed since the unfinished run r1" in capsys.readouterr().out
    assert train_stage._unfinished_run(tmp_path / "absent.json", inputs, "ddpm") is None


def test_a_one_worker_group_skips_the_collectives(tmp_path, monkeypatch):
    """Ray Train makes a process group for one worker too; the per-step stop flag then needs no
    broadcast (it cost ~1% of a small model's step), and the answers stay the same."""
    import torch
    import torch.distributed as dist

    from flows.distributed.stop_request import distributed, from_rank_zero, gather, on_every_rank

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        for name in ("broadcast", "all_reduce", "all_gather"):
            monkeypatch.setattr(dist, name, lambda *a, name=name, **k: pytest.fail(f"{name} with one rank"))
        assert not distributed()
        assert from_rank_zero(True) and not on_every_rank(False)
        assert gather(torch.tensor([3]))[0].item() == 3
    finally:
        dist.destroy_process_group()
