"""Workspaces that keep to themselves (issue 29): two `diffusion pipeline`s started at once in
two folders of one machine, as one user (one Prefect home, never used before), each run on their
own local Ray and Prefect's temporary server, and finish without an error from the other.

Seen before the fix: Ray Train's placement-group cleaner, looking for "the" Ray instance on the
machine, found both and died with `ConnectionError: Found multiple active Ray instances`; and
the two temporary Prefect servers migrated the new home's database together, one failing with
`Application startup failed`."""
import subprocess
import sys
from pathlib import Path

import pytest

from flows.tracking import runs as tracking
from tests.test_services import service_env
from tests.tiny import in_workspace, tiny_params, write_params

pytestmark = pytest.mark.slow  # two pipelines at once

BIN = Path(sys.executable).parent
SIGNS_OF_THE_OTHER = ("multiple active Ray instances", "Application startup failed",
                      "database is locked", "no column named")


def _pipeline(root: Path, prefect_home: Path) -> subprocess.Popen:
    env = service_env(PREFECT_HOME=str(prefect_home), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300")
    for key in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "PREFECT_API_URL"):
        env.pop(key, None)
    with open(root / "pipeline.log", "wb") as out:
        return subprocess.Popen([str(BIN / "diffusion"), "pipeline"], cwd=root, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def test_two_pipelines_at_once_in_two_folders_each_finish_on_their_own(tmp_path):
    roots = [tmp_path / "a", tmp_path / "b"]
    for root in roots:
        root.mkdir()
        write_params(root, tiny_params(vector={"steps": 40}))
    procs = [_pipeline(root, tmp_path / "prefect-home") for root in roots]
    try:
        codes = [proc.wait(timeout=900) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for root, code in zip(roots, codes):
        log = (root / "pipeline.log").read_text(errors="replace")
        assert code == 0, log[-3000:]
        assert not [sign for sign in SIGNS_OF_THE_OTHER if sign in log], log[-3000:]
        assert (root / "reports" / "compare.md").is_file()
        with in_workspace(root):  # each workspace's own store holds its own run, finished
            runs = tracking.client().search_runs(
                [tracking.client().get_experiment_by_name("toy-checkerboard").experiment_id])
        trained = [r for r in runs if r.data.tags.get("run") == "ddpm"]
        assert len(trained) == 1 and trained[0].info.status == "FINISHED"
