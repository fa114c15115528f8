"""The MLflow registry on a local sqlite store: pyfunc samplers, the champion alias, bad input."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from diffusion_core.frameworks import DiffusionModel
from flows.config.params import ConfigError, parse_params
from flows.distributed import sample_ray
from flows.stages import data as stages
from flows.stages import train as train_stage
from flows.tracking import figures, registry
from flows.tracking import runs as tracking
from tests.tiny import fd_record, in_workspace, tiny_params


def _trained_run(root, params, ratio: float) -> str:
    """A framework's outputs as train and evaluate leave them: weights, run id, metrics.
    (An untrained tiny U-Net: the registry needs the files, not a good model.)"""
    meta = stages.dataset_meta(params)
    model_dir = root / "models" / "ddpm"
    DiffusionModel(train_stage.model_config(params, "ddpm", meta)).save(model_dir)
    run_id = tracking.start_run("digits", "ddpm", {}, {"framework": "ddpm"})
    tracking.save_run_id(model_dir, run_id, "digits")
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics" / "ddpm.json").write_text(json.dumps(fd_record(ratio, seed=int(ratio * 10))))
    return run_id


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    with in_workspace(root):
        params = parse_params(tiny_params("digits"))
        stages.prepare(params)
        run_id = _trained_run(root, params, ratio=2.5)
        first = registry.register(params, "ddpm")
        yield root, params, run_id, first


def test_register_keeps_the_named_store_for_the_rest_of_the_process(tmp_path):
    """A store named by MLFLOW_TRACKING_URI (a server, in production) stays the store after
    register: MLflow's own temporary-URI helper unset the variable, so the champion lookup
    that follows went to a local sqlite file and found no version."""
    with in_workspace(tmp_path) as patch:
        uri = f"sqlite:///{tmp_path / 'named' / 'store.db'}"
        (tmp_path / "named").mkdir()
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        params = parse_params(tiny_params("digits"))
        stages.prepare(params)
        _trained_run(tmp_path, params, ratio=2.5)
        assert registry.register(params, "ddpm")["champion"]["version"] == 1
        assert os.environ["MLFLOW_TRACKING_URI"] == uri
        assert not (tmp_path / "mlflow.db").exists()
        # MLflow's own client follows the variable after it changes: register left no
        # process-wide URI behind (one pointing at a stopped server failed a later test)
        later = f"sqlite:///{tmp_path / 'named' / 'later.db'}"
        patch.setenv("MLFLOW_TRACKING_URI", later)
        from mlflow.tracking import MlflowClient

        assert MlflowClient().tracking_uri == later


def test_register_names_the_model_and_gives_champion(registered):
    _, _, run_id, first = registered
    assert first["name"] == "digits-ddpm" and first["version"] == 1
    assert first["champion"] == {"name": "digits-ddpm", "version": 1, "primary_value": 2.5}
    version = tracking.client().get_model_version_by_alias("digits-ddpm", "champion")
    assert version.run_id == run_id and version.tags["primary_metric"] == "fd_ratio"
    assert registry.champion_uri("digits") == "models:/digits-ddpm@champion"


def test_the_champion_draws_the_sample_stages_samples_seed_by_seed(registered):
    root, _, _, _ = registered
    sampler = registry.load_sampler("digits-ddpm")
    x = sampler.predict(None, params={"num_samples": 5, "seed": 3})
    assert x.shape == (5, 1, 8, 8) and x.dtype == np.float32
    assert x.min() >= -1 and x.max() <= 1 and np.isfinite(x).all()
    # sample i is fixed by (seed, i) alone: a smaller draw is a prefix, another seed other samples
    # (up to rounding: BLAS kernels may sum in another order at another batch size)
    prefix = sampler.predict(None, params={"num_samples": 3, "seed": 3})
    np.testing.assert_allclose(prefix, x[:3], rtol=0, atol=1e-5)
    other_seed = sampler.predict(None, params={"num_samples": 5, "seed": 4})
    assert len({row.tobytes() for row in np.concatenate([x, other_seed])}) == 10
    # the sample stage with sample.seed = 3 draws samples 2..4 (one of its parts, as its Ray actors
    # draw it, from models/ddpm) equal to the champion's samples 2..4
    data = tiny_params("digits")
    stage = parse_params({**data, "sample": {**data["sample"], "seed": 3}})
    part = sample_ray.stage_callables(stage, "ddpm", root / "models" / "ddpm", "image", (1, 8, 8))
    drawn, nfe = part["draw"](part["load_model"](), part["seeds_of"](2, 3))
    assert nfe == stage.ddpm.sampler["steps"]
    np.testing.assert_allclose(x[2:], drawn, rtol=0, atol=1e-5)
    # the sampler and its number of steps are parameters of the draw
    heun = sampler.predict(None, params={"num_samples": 2, "seed": 3, "sampler": "heun", "steps": 3})
    fewer = sampler.predict(None, params={"num_samples": 2, "seed": 3, "steps": 2})
    assert heun.shape == fewer.shape == (2, 1, 8, 8)
    assert not np.allclose(heun, x[:2]) and not np.allclose(fewer, x[:2]) and not np.allclose(heun, fewer)


def test_bad_predict_parameters_are_named(registered):
    sampler = registry.load_sampler("digits-ddpm")
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        sampler.predict(None, params={"num_samples": 0})
    with pytest.raises(ConfigError, match="sampler"):
        sampler.predict(None, params={"num_samples": 1, "sampler": "euler-nonsense"})


def test_a_better_run_takes_champion_and_a_worse_one_does_not(registered):
    root, params, _, _ = registered
    _trained_run(root, params, ratio=1.5)  # better by 1.0, its interval far from zero
    better = registry.register(params, "ddpm")
    assert better["version"] == 2 and better["champion"]["version"] == 2
    _trained_run(root, params, ratio=4.5)
    worse = registry.register(params, "ddpm")
    assert worse["version"] == 3 and worse["champion"]["version"] == 2
    again = registry.register(params, "ddpm")  # the same run registered twice: no new version
    assert again["version"] == 3


def test_champion_moves_across_frameworks_of_a_data_set(registered):
    client = tracking.client()
    best = client.get_model_version("digits-ddpm", "2")
    client.create_registered_model("digits-rival")
    record = fd_record(0.5, seed=3)  # measured like the ddpm versions, clearly better
    tags = registry.version_tags(figures.headline(record), record, Path("no-model"), "rival")
    client.create_model_version("digits-rival", best.source, run_id=best.run_id, tags=tags)
    assert registry.update_champion("digits") == {"name": "digits-rival", "version": 1,
                                                 "primary_value": 0.5}
    assert "champion" not in client.get_registered_model("digits-ddpm").aliases
    client.delete_registered_model("digits-rival")
    assert registry.update_champion("digits")["name"] == "digits-ddpm"


def test_bad_input_is_named_and_changes_nothing(registered):
    root, params, _, _ = registered
    with pytest.raises(ValueError, match="registered model 'digits-nope' does not exist"):
        registry.load_sampler("digits-nope")
    client = tracking.client()
    before = len(client.search_model_versions("name='digits-ddpm'"))
    (root / "metrics" / "ddpm.json").unlink()
    with pytest.raises(FileNotFoundError, match="ddpm.json is missing"):
        registry.register(params, "ddpm")
    (root / "metrics" / "ddpm.json").write_text(json.dumps({"fd": float("nan")}))
    with pytest.raises(ValueError, match="no finite primary metric 'fd'"):
        registry.register(params, "ddpm")
    assert len(client.search_model_versions("name='digits-ddpm'")) == before


def test_compare_writes_the_report_and_logs_it(registered, tmp_path):
    from flows.stages import compare

    root, params, _, _ = registered
    (root / "metrics" / "ddpm.json").write_text(json.dumps(
        {"fd": 3.0, "fd_at_n": 3.0, "fd_floor": 2.0, "fd_ratio": 1.5, "kid": 0.01, "precision": 0.8, "recall": 0.7,
         "sampler": "ddim", "nfe": 9, "num_samples": 64}))
    (root / "metrics" / "ddpm_nfe.json").write_text(json.dumps({"points": [
        {"sampler": "ddim", "steps": s, "nfe": s, "metric": "fd", "value": 10.0 / s} for s in (3, 9)]}))
    (root / "models" / "ddpm" / "train_summary.json").write_text(json.dumps({"train_seconds": 12.5, "steps": 20}))
    (root / "samples" / "ddpm").mkdir(parents=True)
    (root / "samples" / "ddpm" / "sampling.json").write_text(json.dumps({"samples_per_s": 50.0}))
    np.savez(root / "samples" / "ddpm" / "samples.npz", x=np.zeros((16, 1, 8, 8), np.float32))
    result = compare.compare(params, tmp_path / "reports")
    report = (tmp_path / "reports" / "compare.md").read_text()
    assert "| ddpm | ddim | 9 | 3 | 2 | 1.5 | 0.01 | 0.8 | 0.7 |" in report
    assert "`models:/digits-ddpm@champion`" in report and "## Quality against NFE" in report
    # the stages that ran in this workspace recorded their cost, and the report shows it
    assert "## What each stage cost" in report
    assert "| prepare | - |" in report and "| register | ddpm |" in report
    assert result["stage_costs"][0]["stage"] == "prepare" and result["stage_costs"][-1]["peak_rss_mb"] > 10
    for name in ("quality_vs_nfe.png", "samples_side_by_side.png", "compare.json"):
        assert (tmp_path / "reports" / name).stat().st_size > 100
    names = {a.path for a in tracking.client().list_artifacts(result["run_id"], "report")}
    assert "report/compare.md" in names


def test_a_runs_experiment_and_names_carry_the_data_sets_name(tmp_path):
    """npz:/…/shapes.npz trains in experiment 'shapes', as Ray run 'shapes-ddpm-…', tagged with
    the name and the source."""
    source = f"npz:{tmp_path / 'shapes.npz'}"
    with in_workspace(tmp_path):
        params = parse_params(tiny_params(source=source))
        inputs = {"seed": 0, "data_manifest_sha256": "0" * 64}
        record = train_stage._start_or_continue(params, "ddpm", params.data.dataset, inputs)
        run = tracking.client().get_run(record["run_id"])
        experiment = tracking.client().get_experiment(run.info.experiment_id)
    assert experiment.name == "shapes" and record["ray_run_name"].startswith("shapes-ddpm-")
    assert run.data.tags["dataset"] == "shapes" and run.data.tags["data_source"] == source
