"""Distributed sampling on a local Ray: identical samples for 1 and 2 workers, resumption
without duplicates or gaps, clear errors for damaged parts."""
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from diffusion_core.frameworks import DiffusionModel
from flows.config.params import parse_params
from flows.distributed import sample_ray
from flows.stages import data as stages
from flows.stages import train as train_stage
from flows.tracking.sampler import sample_seeds
from tests.tiny import in_workspace, tiny_params
from tests.waiting import log_tail, wait_for

pytestmark = pytest.mark.slow  # every test starts a local Ray (actor pools): the service tier


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """Tiny digits data and an untrained tiny U-Net (sampling plumbing needs no training)."""
    root = tmp_path_factory.mktemp("sample_ray")
    with in_workspace(root):
        params = parse_params(tiny_params("digits"))
        stages.prepare(params)
        meta = stages.dataset_meta(params)
        DiffusionModel(train_stage.model_config(params, "ddpm", meta)).save(root / "model")
        callables = sample_ray.stage_callables(params, "ddpm", root / "model", meta["kind"],
                                               meta["shape"])
        yield root, params, callables


PLAN = sample_ray.SamplePlan(total=20, per_part=6, batch_size=4, fingerprint={"seed": 1})


def _run(job, folder, workers, plan=PLAN):
    root, _, callables = job
    info = sample_ray.draw_parts(root / folder, plan, num_workers=workers, cpus_per_worker=1,
                                 **callables)
    x, nfe = sample_ray.collect(root / folder, plan, callables["seeds_of"])
    return info, x, nfe


@pytest.fixture(scope="module")
def drawn(job):
    """PLAN drawn once by 1 worker and once by 2 (the other tests copy these folders)."""
    return {workers: _run(job, f"workers-{workers}", workers) for workers in (1, 2)}


def _copy(job, source: str, folder: str) -> Path:
    import shutil

    return Path(shutil.copytree(job[0] / source, job[0] / folder))


def test_one_and_two_workers_draw_identical_samples(job, drawn):
    (one_info, one, nfe), (two_info, two, _) = drawn[1], drawn[2]
    assert one_info["workers"] == 1 and two_info["workers"] == 2
    assert one.shape == (20, 1, 8, 8) and one.dtype == np.float32 and nfe > 0
    np.testing.assert_array_equal(one, two)
    assert len({x.tobytes() for x in one}) == 20  # every sample its own seed
    # the samples of seeds 6..11 do not depend on which part or batch drew them
    _, params, callables = job
    model = callables["load_model"]()
    direct, _ = callables["draw"](model, sample_seeds(params, 6, 6))
    np.testing.assert_allclose(direct, one[6:12], atol=1e-5)


def test_an_interrupted_run_draws_only_the_missing_parts(job, drawn, capsys):
    folder = _copy(job, "workers-2", "resume")
    parts = sorted(folder.glob("part-*.npz"))
    assert len(parts) == 4
    for lost in parts[1:3]:  # an interrupted run: two parts never finished, one write half done
        lost.unlink()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()  # a writer that died mid-write
    (folder / f".{parts[1].name}.tmp-{dead}-0123abcd").write_bytes(b"half a part")
    info, again, _ = _run(job, "resume", 2)
    assert info["drawn"] == 12 and info["reused"] == 8
    assert "sample: 12/12 samples (100%)" in capsys.readouterr().out
    np.testing.assert_array_equal(again, drawn[1][1])
    assert not list(folder.glob(".*.tmp-*"))  # its temporary was swept when the part was redrawn


def test_a_changed_plan_starts_afresh(job, drawn):
    folder = _copy(job, "workers-1", "plan")
    other = sample_ray.SamplePlan(total=6, per_part=6, batch_size=4, fingerprint={"seed": 2})
    info, x, _ = _run(job, "plan", 1, other)
    assert info["drawn"] == 6 and len(x) == 6
    assert sorted(p.name for p in folder.glob("part-*")) == ["part-000000000-000000006.npz"]


def test_an_empty_or_corrupt_part_is_named(job, drawn):
    callables = job[2]
    folder = _copy(job, "workers-1", "corrupt")
    path = sample_ray.part_path(folder, 6, 12)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=f"sample part {path} is corrupt or empty"):
        sample_ray.draw_parts(folder, PLAN, num_workers=1, **callables)
    path.unlink()
    with pytest.raises(ValueError, match="part-000000006-000000012.npz is missing"):
        sample_ray.collect(folder, PLAN, callables["seeds_of"])


def test_per_shard_feature_stats_on_ray_equal_a_single_pass(job, tmp_path):
    from diffusion_core.data import shards
    from diffusion_core.features import classifier as clf
    from flows.distributed.shard_features import Extractor, split_features

    root, params, _ = job
    folder = clf.save_classifier(clf.DigitClassifier(1, 8, 10), tmp_path / "classifier")
    extractor = Extractor("classifier", str(folder))
    got = split_features(params.data.out_dir, "train", extractor, keep=300, num_workers=2,
                         n_classes=10)
    x, _ = shards.load_split(params.data.out_dir, "train")
    feats = clf.extract_features(clf.load_classifier(folder), x)
    np.testing.assert_allclose(got.stats.mean, feats.mean(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got.stats.cov, np.cov(feats, rowvar=False), rtol=1e-8, atol=1e-12)
    assert got.stats.n == len(x) and got.histogram.sum() == len(x)
    np.testing.assert_array_equal(got.kept_x, x[:300])
    np.testing.assert_allclose(got.kept_features, feats[:300], rtol=1e-6)


def test_a_damaged_shard_is_named_by_the_evaluation(job, tmp_path):
    from diffusion_core.data import shards
    from flows.distributed.shard_features import Extractor, split_features

    root, params, _ = job
    data = tmp_path / "data"
    shards.write_shards(data, {"samples": (np.zeros((10, 1, 8, 8), np.float32), None)}, 5, {})
    (data / "samples-000001.tar").write_bytes(b"")
    with pytest.raises(shards.ShardChecksumError, match="samples-000001.tar"):
        split_features(data, "samples", Extractor("classifier", "unused"), keep=0, num_workers=1)
    (data / "samples-000001.tar").unlink()
    shards.write_shards(data, {"samples": (np.zeros((10, 1, 8, 8), np.float32), None)}, 5, {})
    with pytest.raises(RuntimeError, match="FeatureWorker actor failed to start: .*'nowhere' has no"):
        split_features(data, "samples", Extractor("classifier", "nowhere"), keep=0, num_workers=1)


def test_image_fidelity_records_how_each_figure_was_made(job, tmp_path, monkeypatch):
    import json

    from diffusion_core.data import shards
    from diffusion_core.features import classifier as clf
    from flows.stages.image_eval import image_fidelity

    root, params, _ = job
    monkeypatch.delenv("DIFFUSION_INCEPTION_WEIGHTS", raising=False)
    folder = clf.save_classifier(clf.DigitClassifier(1, 8, 10), tmp_path / "classifier")
    (folder / "classifier_metrics.json").write_text(json.dumps(
        {"applicable": True, "test_accuracy": 0.1, "sha256": clf.classifier_hash(folder)}))
    x, _ = shards.load_split(params.data.out_dir, "train")
    shards.write_shards(tmp_path / "samples", {"samples": (x[:300], None)}, 100, {})
    result = image_fidelity(tmp_path / "samples", params.data.out_dir, folder, keep=200, num_workers=2)
    for key in ("fd", "fd_floor", "kid", "precision", "recall", "class_coverage", "nn_ratio"):
        assert np.isfinite(result[key]), key
    assert result["num_samples"] == 300 and result["pairwise_num_samples"] == 200
    assert result["fd_floor_draws"] == 64  # the floor is a mean over train subsets, with its range
    assert result["fd_at_n_draws"] == 64  # random test-sized subsets of the samples, like the floor
    assert result["fd_ratio"] == pytest.approx(result["fd_at_n"] / result["fd_floor"])
    assert result["fd_floor_min"] <= result["fd_floor"] <= result["fd_floor_max"]
    assert result["feature_extractor_sha256"] == hashlib.sha256((folder / "model.pt").read_bytes()).hexdigest()
    assert result["fid"] is None and "nothing is downloaded" in result["fid_note"]
    assert result["copy_fraction"] > 0.9  # training images themselves: flagged as copies
    shards.write_shards(tmp_path / "wide", {"samples": (2 * x[:50], None)}, 100, {})
    with pytest.raises(ValueError, match=r"wide: samples must lie in \[-1, 1\]"):
        image_fidelity(tmp_path / "wide", params.data.out_dir, folder, keep=10, num_workers=1)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.pt cannot be read"):
        image_fidelity(tmp_path / "samples", params.data.out_dir, folder, inception_weights=str(tmp_path / "junk.pt"))


# The killed run's script: the stage's drawing with its fifth part held back (the actor waits
# for a gate that never opens), so the kill finds four parts written and one in progress
# however fast or slow this machine is.
KILLED_RUN = """
import functools
import threading

from flows.config.params import parse_params
from flows.distributed import sample_ray
from tests.tiny import tiny_params

def held_back(draw, first_held, model, seeds):
    if seeds[0] >= first_held:
        threading.Event().wait()  # never set: this part is in progress when the kill comes
    return draw(model, seeds)

params = parse_params(tiny_params('digits'))
callables = sample_ray.stage_callables(params, 'ddpm', {model!r}, 'image', [1, 8, 8])
callables['draw'] = functools.partial(held_back, callables['draw'], callables['seeds_of'](16, 1)[0])
print('drawing', flush=True)
sample_ray.draw_parts({parts!r}, sample_ray.SamplePlan(40, 4, 4, {{'kill': 1}}), num_workers=1, **callables)
"""


def test_a_stage_killed_halfway_completes_on_rerun_without_duplicates_or_gaps(job, drawn, tmp_path):
    """Kill a drawing run (its whole process group) while it draws a part, then run again: the
    rerun reuses exactly the parts the killed run wrote and draws exactly the rest."""
    import os
    import signal
    import subprocess
    import sys

    root, _, callables = job
    plan = sample_ray.SamplePlan(total=40, per_part=4, batch_size=4, fingerprint={"kill": 1})
    parts = tmp_path / "parts"
    script = KILLED_RUN.format(model=str(root / "model"), parts=str(parts))
    log = tmp_path / "killed.log"
    with open(log, "wb") as out:
        child = subprocess.Popen([sys.executable, "-c", script], start_new_session=True, stdout=out,
                                 stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[1],
                                 env={**os.environ, "RAY_ADDRESS": ""})
    try:  # Ray's start-up in a fresh process, then four parts
        wait_for(lambda: len(list(parts.glob("part-*.npz"))) >= 4, "4 parts written by the drawing run",
                 180, alive=child, detail=log_tail(log))
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    written = sorted(p.name for p in parts.glob("part-*.npz"))
    assert written == [sample_ray.part_path(parts, first, first + 4).name for first in (0, 4, 8, 12)]
    info = sample_ray.draw_parts(parts, plan, num_workers=2, **callables)
    assert info["reused"] == 4 * len(written) and info["drawn"] == 40 - 4 * len(written)
    x, _ = sample_ray.collect(parts, plan, callables["seeds_of"])
    assert len({row.tobytes() for row in x}) == 40
    np.testing.assert_allclose(x[:20], drawn[1][1], atol=1e-5)  # same seeds, other parts


def test_nfe_sweep_records_quality_against_nfe_per_sampler(job, monkeypatch):
    import json
    import shutil

    from diffusion_core.features import classifier as clf
    from flows.stages import nfe_sweep

    root, _, _ = job
    monkeypatch.chdir(root)
    params = parse_params(tiny_params(
        "digits", sample={"samples_per_shard": 6},
        evaluate={"nfe_sweep": [{"name": "ddim", "steps": [2, 4]}, {"name": "heun", "steps": [3]}],
                  "nfe_sweep_samples": 12}))
    shutil.copytree(root / "model", root / "models" / "ddpm", dirs_exist_ok=True)
    folder = clf.save_classifier(clf.DigitClassifier(1, 8, 10), root / "models" / "classifier")
    (folder / "classifier_metrics.json").write_text(json.dumps({"applicable": True}))
    records = nfe_sweep.nfe_sweep(params, "ddpm")
    assert [(r["sampler"], r["steps"], r["nfe"]) for r in records] == [
        ("ddim", 2, 2), ("ddim", 4, 4), ("heun", 3, 3)]
    assert all(r["metric"] == "fd" and np.isfinite(r["value"]) and r["num_samples"] == 12 for r in records)
    assert records[0]["feature_extractor_sha256"] == hashlib.sha256((folder / "model.pt").read_bytes()).hexdigest()
    path = nfe_sweep.save(records, "ddpm", root / "metrics")
    assert json.loads(path.read_text())["points"][2]["sampler"] == "heun"
    assert (root / "metrics" / "ddpm_nfe.png").stat().st_size > 1000
