"""The workspace lock: a second run on the same outputs refuses naming the holder, or waits for
it; a lock left by a dead process is taken over; the holder may take it again."""
import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from flows.entry import lock
from flows.entry.cli import main


def _hold(folder, pid, host=None):
    (folder / lock.LOCK_NAME).write_text(json.dumps(
        {"pid": pid, "host": host or socket.gethostname(), "started": "2026-12-01T06:00:00+00:00",
         "command": "diffusion pipeline"}))


@pytest.fixture
def other_process():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_second_run_is_refused_naming_the_holder(tmp_path, other_process):
    _hold(tmp_path, other_process.pid)
    with pytest.raises(lock.WorkspaceLocked) as err:
        with lock.workspace_lock(tmp_path):
            pytest.fail("entered a held workspace")
    message = str(err.value)
    assert f"pid {other_process.pid}" in message and socket.gethostname() in message
    assert "2026-12-01T06:00:00" in message and "diffusion pipeline" in message


def test_a_lock_on_another_host_is_not_taken_over(tmp_path):
    _hold(tmp_path, 1, host="elsewhere.example")
    with pytest.raises(lock.WorkspaceLocked, match="elsewhere.example"):
        with lock.workspace_lock(tmp_path):
            pass


def test_a_stale_lock_is_taken_over_and_released(tmp_path, other_process):
    other_process.kill()
    other_process.wait()
    _hold(tmp_path, other_process.pid)  # its process is gone
    with lock.workspace_lock(tmp_path) as path:
        assert lock.read_holder(path)["pid"] == os.getpid()
        with lock.workspace_lock(tmp_path):  # the holder may take it again
            pass
        assert path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_wait_takes_the_lock_once_the_holder_is_done(tmp_path, other_process):
    _hold(tmp_path, other_process.pid)
    released = threading.Timer(0.5, lambda: (tmp_path / lock.LOCK_NAME).unlink())
    released.start()
    with lock.workspace_lock(tmp_path, wait_s=30, poll_s=0.05) as path:
        assert lock.read_holder(path)["pid"] == os.getpid()
    released.join()


def test_the_cli_refuses_a_held_workspace_and_writes_nothing(tmp_path, monkeypatch, capsys, other_process):
    from tests.tiny import tiny_params, write_params

    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, tiny_params())
    _hold(tmp_path, other_process.pid)
    assert main(["prepare"]) == 1
    assert f"pid {other_process.pid}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == [lock.LOCK_NAME, "params.yaml"]


def test_the_flow_does_not_retry_what_a_retry_cannot_mend():
    from prefect.states import Failed

    from flows.distributed.train_ray import NonFiniteLoss, TrainingInterrupted
    from flows.entry.pipeline import retry_unless_final

    for error in (TrainingInterrupted("stop"), NonFiniteLoss("nan"), lock.WorkspaceLocked("held")):
        assert not retry_unless_final(None, None, Failed(data=error))
    assert retry_unless_final(None, None, Failed(data=RuntimeError("a Ray worker died")))
