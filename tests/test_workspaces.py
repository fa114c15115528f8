"""Workspaces that keep to themselves (issue 29): two `diffusion pipeline`s started at once in
two folders of one machine, as one user (one Prefect home, never used before), each run on their
own local Ray and Prefect's temporary server, and finish without an error from the other. One
runs on toy points; the other on the user's own unlabelled RGB images (`npz:…/shapes.npz`),
which are named `shapes` throughout and get an FD/floor headline with its floor from a
contrastive feature network (no labels, no download).

Seen before the fix: Ray Train's placement-group cleaner, looking for "the" Ray instance on the
machine, found both and died with `ConnectionError: Found multiple active Ray instances`; and
the two temporary Prefect servers migrated the new home's database together, one failing with
`Application startup failed`."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
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


def _shapes_npz(path: Path, n: int = 600, size: int = 8) -> None:
    """Unlabelled N×H×W×3 uint8 images: a square or a disc of a random colour on black."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    images = np.zeros((n, size, size, 3), np.uint8)
    for i in range(n):
        cy, cx, r = rng.integers(2, size - 2, 2).tolist() + [rng.integers(1, 3)]
        inside = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r) if i % 2 else (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        images[i][inside] = rng.integers(80, 256, 3)
    np.savez(path, x=images)


def _workspaces(tmp_path: Path) -> tuple[Path, Path]:
    toy, own = tmp_path / "toy", tmp_path / "own"
    toy.mkdir(), own.mkdir()
    # no NLL and no NFE sweep: what is checked here is the runs' names, ends and headline
    quick = {"evaluate": {"nfe_sweep": []}}
    write_params(toy, tiny_params(vector={"steps": 40, "nll_points": 0}, **quick))
    _shapes_npz(tmp_path / "shapes.npz")
    write_params(own, tiny_params(source=f"npz:{tmp_path / 'shapes.npz'}",
                                  data={"val_size": 60, "test_size": 100, "classifier_size": 100},
                                  classifier={"contrastive_epochs": 20}, image={"nll_points": 0}, **quick))
    return toy, own


def test_two_pipelines_at_once_in_two_folders_each_finish_on_their_own(tmp_path):
    roots = _workspaces(tmp_path)
    procs = [_pipeline(root, tmp_path / "prefect-home") for root in roots]
    try:
        codes = [proc.wait(timeout=900) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for root, code, name in zip(roots, codes, ("toy-checkerboard", "shapes")):
        log = (root / "pipeline.log").read_text(errors="replace")
        assert code == 0, log[-3000:]
        assert not [sign for sign in SIGNS_OF_THE_OTHER if sign in log], log[-3000:]
        assert f"on `{name}`" in (root / "reports" / "compare.md").read_text()
        with in_workspace(root):  # each workspace's own store holds its own run, finished
            client = tracking.client()
            runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
            assert client.get_model_version_by_alias(f"{name}-ddpm", "champion")
        trained = [r for r in runs if r.data.tags.get("run") == "ddpm"]
        assert len(trained) == 1 and trained[0].info.status == "FINISHED"
        assert trained[0].data.tags["dataset"] == name
    record = json.loads((roots[1] / "metrics" / "ddpm.json").read_text())
    assert record["feature_extractor"] == "contrastive" and record["fd_floor"] > 0
    assert record["fd_ratio_low"] < record["fd_ratio"] < record["fd_ratio_high"]  # with its interval
    assert "Headline: FD/floor in the features of a small CNN trained contrastively" in \
        (roots[1] / "reports" / "compare.md").read_text()
