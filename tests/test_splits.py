"""The data splits: train (the models' data, the FD floor's real pool), val (the tuning
reference), test (the final report's) and, for images, the FD feature extractor's only training
data (classifier for labelled images, extractor for unlabelled ones); evaluate against val or test."""
from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from diffusion_core.data import shards, sources
from flows.config.params import ConfigError, parse_params
from tests.tiny import ROOT, in_workspace, tiny_params, write_params

REPO = yaml.safe_load((ROOT / "params.yaml").read_text())
DIGITS_SPLITS = {"train": 697, "val": 300, "classifier": 300, "test": 500}


def _prepare(root: Path, source: str = "digits", **data):
    from flows.stages import data as stages

    values = copy.deepcopy(REPO)
    values["data"].update(source=source, out_dir=str(root / "shards"), **data)
    params = parse_params(values)
    with contextlib.redirect_stdout(io.StringIO()):
        return params, stages.prepare(params)


def _rows(x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in x}


def _manifest_shas(folder: Path) -> list:
    return sorted(shards.read_manifest(folder)[0].to_pylist(), key=lambda row: row["shard"])


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    params, result = _prepare(root)
    return root, params, result


def test_digits_get_four_disjoint_splits_of_the_configured_sizes(digits):
    root, _, result = digits
    assert {k: result[k] for k in DIGITS_SPLITS} == DIGITS_SPLITS
    assert shards.read_manifest(root / "shards")[1]["split_sizes"] == DIGITS_SPLITS
    loaded = {name: shards.load_split(root / "shards", name) for name in DIGITS_SPLITS}
    everything, _ = sources.load_source("digits", 0, 0)
    assert len(_rows(everything)) == len(everything)  # digits has no repeated image: bytes identify one
    union = set()
    for name, (x, y) in loaded.items():
        assert len(x) == len(y) == DIGITS_SPLITS[name]
        assert not union & _rows(x), f"{name} shares an example with another split"
        union |= _rows(x)
    assert union == _rows(everything)  # a partition of the source


def test_the_split_is_reproducible_from_the_seed(digits, tmp_path):
    root, _, _ = digits
    _prepare(tmp_path / "again")
    assert _manifest_shas(tmp_path / "again" / "shards") == _manifest_shas(root / "shards")
    _prepare(tmp_path / "other", seed=1)
    other = _rows(shards.load_split(tmp_path / "other" / "shards", "val")[0])
    assert other != _rows(shards.load_split(root / "shards", "val")[0])


def test_held_out_split_blocks_are_disjoint_and_test_avoids_the_old_test_block():
    x = np.arange(100, dtype=np.float32)[:, None]
    splits = sources.held_out_split(x, None, {"val": 10, "classifier": 15, "test": 20}, seed=3)
    ids = {name: set(split_x[:, 0].astype(int)) for name, (split_x, y) in splits.items()}
    assert {name: len(v) for name, v in ids.items()} == {"train": 55, "val": 10, "classifier": 15, "test": 20}
    assert set().union(*ids.values()) == set(range(100)) and sum(map(len, ids.values())) == 100
    old_test = sources.train_test_split(x, None, 20, seed=3)[2]  # the two-split layout's held-out block
    assert not ids["test"] & set(old_test[:, 0].astype(int))  # so no image settings were tuned on
    with pytest.raises(ValueError, match="leaving none to train on"):
        sources.held_out_split(x, None, {"val": 50, "test": 50}, seed=0)


def test_toys_get_train_val_and_test(tmp_path):
    _, result = _prepare(tmp_path, "toy:moons", toy_train_size=600, toy_val_size=40, toy_test_size=60)
    assert {k: result[k] for k in ("train", "val", "test")} == {"train": 600, "val": 40, "test": 60}
    assert "classifier" not in result
    meta = shards.read_manifest(tmp_path / "shards")[1]
    assert meta["split_sizes"] == {"train": 600, "val": 40, "test": 60}


def test_unlabelled_images_hold_out_an_extractor_split_not_a_classifier_split(tmp_path):
    path = tmp_path / "images.npz"
    np.savez(path, x=np.random.default_rng(0).integers(0, 256, (200, 8, 8), dtype=np.uint8))
    _, result = _prepare(tmp_path, f"npz:{path}", val_size=10, test_size=10, classifier_size=25,
                         samples_per_shard=16)  # batches of 128: train needs that many
    assert {k: result[k] for k in ("train", "val", "extractor", "test")} == {
        "train": 155, "val": 10, "extractor": 25, "test": 10}
    assert "classifier" not in result  # the contrastive network's split (tests/test_unlabelled_images.py)


def test_the_classifier_trains_on_exactly_the_classifier_split(digits, monkeypatch, tmp_path):
    """No image of the floor's pool (train) or of a reference (val, test) reaches the extractor."""
    from flows.stages import data as stages

    root, params, _ = digits
    seen = []
    real_train = stages.clf.train_classifier

    def spy(x, y, **kwargs):
        seen.append(x.copy())
        return real_train(x, y, **{**kwargs, "epochs": 1})

    monkeypatch.setattr(stages.clf, "train_classifier", spy)
    params = parse_params({**copy.deepcopy(REPO), "data": {**REPO["data"], "out_dir": str(root / "shards")},
                           "classifier": {**REPO["classifier"], "out_dir": str(tmp_path / "classifier")}})
    with contextlib.redirect_stdout(io.StringIO()):
        summary = stages.train_classifier(params)
    classifier_x, _ = shards.load_split(root / "shards", "classifier")
    assert len(seen) == 1 and _rows(seen[0]) == _rows(classifier_x)
    for name in ("train", "val", "test"):
        assert not _rows(seen[0]) & _rows(shards.load_split(root / "shards", name)[0]), name
    assert summary["trained_split"] == "classifier" and summary["trained_size"] == 300
    assert summary["trained_images_sha256"] == stages.images_sha256(classifier_x)
    assert summary["data_manifest_sha256"] == hashlib.sha256((root / "shards/manifest.parquet").read_bytes()).hexdigest()
    assert 0 <= summary["val_accuracy"] <= 1 and "test_accuracy" not in summary
    assert json.loads((tmp_path / "classifier/classifier_metrics.json").read_text()) == summary


@pytest.mark.parametrize("data, field", [
    ({"val_size": 0}, "data.val_size"),
    ({"classifier_size": -3}, "data.classifier_size"),
    ({"toy_val_size": 0}, "data.toy_val_size"),
    ({"val_size": 1400}, "data.val_size"),  # 1400 + 300 + 500 of digits' 1797
    ({"classifier_size": 1000, "test_size": 600}, "data.classifier_size"),
])
def test_bad_sizes_stop_with_the_field_named_and_nothing_written(tmp_path, data, field):
    from flows.entry.cli import main

    values = copy.deepcopy(REPO)
    values["data"].update(out_dir="shards", **data)
    with in_workspace(tmp_path):
        write_params(tmp_path, values)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            assert main(["prepare"]) == 2
    assert err.getvalue().startswith(f"error: bad params: {field}: "), err.getvalue()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_a_file_source_too_small_for_the_held_out_splits_is_refused_by_prepare(tmp_path):
    path = tmp_path / "points.npz"
    np.savez(path, x=np.zeros((50, 2), np.float32))
    with pytest.raises(ConfigError, match=r"^data\.test_size: holds out 10 val \+ 40 test = 50 of the 50"):
        _prepare(tmp_path, f"npz:{path}", val_size=10, test_size=40)
    assert not (tmp_path / "shards").exists()


def test_shards_from_before_the_val_split_are_refused_naming_the_folder(tmp_path):
    import pyarrow.parquet as pq

    x = np.zeros((20, 2), np.float32)
    folder = tmp_path / "old"
    shards.write_shards(folder, {"train": (x[:15], None), "test": (x[15:], None)}, 8, {})
    with pytest.raises(ValueError, match=rf"split 'val' not in {folder}.*run `diffusion prepare` again"):
        shards.load_split(folder, "val")
    table = pq.read_table(folder / shards.MANIFEST_NAME)
    meta = json.loads(table.schema.metadata[shards.META_KEY])
    pq.write_table(table.replace_schema_metadata(
        {shards.META_KEY: json.dumps({**meta, "schema_version": 1}).encode()}), folder / shards.MANIFEST_NAME)
    with pytest.raises(ValueError, match=rf"{folder}.*schema_version 1 \(written before the val split.*prepare"):
        shards.load_split(folder, "train")


def test_check_data_sees_the_new_train_size():
    """digits' train split is what val, classifier and test leave: 697 by default."""
    params = parse_params(copy.deepcopy(REPO))
    assert params.data.known_data() == ((1, 8, 8), 697, (300, 500))
    values = copy.deepcopy(REPO)
    values["data"].update(source="toy:gmm8", toy_train_size=800, toy_val_size=900, toy_test_size=700)
    values["vector"]["num_samples"] = 1000
    with pytest.raises(ConfigError, match="vector.num_samples: evaluate sets 900 samples"):
        parse_params(values)  # val's 900 need train subsets of 900 for the floor


# ---------------------------------------------------------------- evaluate --split val

def _evaluate_cli(root: Path, *extra: str) -> tuple[int, str]:
    from flows.entry.cli import main

    err = io.StringIO()
    with in_workspace(root), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["evaluate", "--framework", "ddpm", *extra])
    return code, err.getvalue()


@pytest.fixture(scope="module")
def digits_workspace(tmp_path_factory):
    """A digits workspace as train and sample leave it: shards, the classifier (1 epoch), an
    untrained model with its MLflow run, and jittered train images as its samples (the stages
    after sample need the files, not a good model)."""
    import torch

    from diffusion_core.data import atomic
    from diffusion_core.frameworks import DiffusionModel
    from flows.stages import data as stages
    from flows.stages.train import model_config
    from flows.tracking import runs as tracking

    root = tmp_path_factory.mktemp("digits_eval")
    values = tiny_params("digits", classifier={"epochs": 1}, image={"nll_points": 2},
                         evaluate={"nfe_sweep": [{"name": "ddim", "spacing": "karras", "steps": [2]}],
                                   "nfe_sweep_samples": 40, "max_pairwise": 200})
    with in_workspace(root), contextlib.redirect_stdout(io.StringIO()):
        write_params(root, values)
        params = parse_params(values)
        stages.prepare(params)
        stages.train_classifier(params)
        torch.manual_seed(0)
        model = DiffusionModel(model_config(params, "ddpm", {"kind": "image", "shape": [1, 8, 8]}))
        model.save(root / "models/ddpm")
        tracking.save_run_id(root / "models/ddpm", tracking.start_run("digits", "ddpm", {}, {}), "digits")
        x, _ = shards.load_split(root / "data/shards", "train")
        fake = x[:300] + 0.1 * np.random.default_rng(0).standard_normal(x[:300].shape)
        shards.write_shards(root / "samples/ddpm/shards",
                            {"samples": (np.clip(fake, -1, 1).astype(np.float32), None)}, 100, {})
        atomic.write_json(root / "samples/ddpm/sampling.json", {"sampler": "ddim", "nfe": 9, "seed": 1})
    return root


def _measured_by() -> tuple:
    """The fields that decide comparability (flows.tracking: registry, or figures where it moved)."""
    import importlib

    for name in ("flows.tracking.figures", "flows.tracking.registry"):
        with contextlib.suppress(ImportError):
            return importlib.import_module(name).MEASURED_BY
    raise AssertionError("no MEASURED_BY in flows.tracking")


@pytest.mark.slow  # the evaluate stage twice on Ray actors (features, the NFE sweep's draws)
def test_evaluate_against_val_writes_apart_and_reads_the_val_split(digits_workspace):
    from flows.tracking import runs as tracking

    root = digits_workspace
    assert _evaluate_cli(root)[0] == 0
    test_path = root / "metrics/ddpm.json"
    before = test_path.read_bytes()
    assert _evaluate_cli(root, "--split", "val")[0] == 0
    assert test_path.read_bytes() == before  # the report's figures are untouched
    val, test = json.loads((root / "metrics/val/ddpm.json").read_text()), json.loads(before)
    assert (val["reference_split"], val["num_reference"]) == ("val", 300)  # val's 300, not test's 500
    assert (test["reference_split"], test["num_reference"]) == ("test", 500)
    for record in (val, test):
        assert record["feature_extractor_split"] == "classifier"
        assert record["floor_split"].startswith("train subsets vs ") and "never saw" in record["floor_split"]
        assert record["nll_points"] == 2
    sweep = json.loads((root / "metrics/val/ddpm_nfe.json").read_text())["points"]
    assert [(p["reference_split"], p["num_reference"]) for p in sweep] == [("val", 300)]
    assert json.loads((root / "metrics/ddpm_nfe.json").read_text())["points"][0]["reference_split"] == "test"
    with in_workspace(root):
        run = tracking.client().get_run(tracking.load_run_id(root / "models/ddpm"))
    assert run.data.metrics["val_fd_ratio"] == pytest.approx(val["fd_ratio"])
    assert run.data.metrics["eval_fd_ratio"] == pytest.approx(test["fd_ratio"])
    # how each figure was measured names its reference, so val and test figures are never ranked
    # together (the registry compares these strings and the reference_split beside them)
    assert "reference=test:500" in run.data.tags["measurement"]
    assert "reference=val:300" in run.data.tags["val_measurement"]
    assert "reference_split" in dict(_measured_by())


@pytest.mark.slow  # reads the digits workspace's files; no Ray starts
def test_evaluate_refuses_an_extractor_trained_on_other_images(digits_workspace):
    root = digits_workspace
    path = root / "models/classifier/classifier_metrics.json"
    summary = json.loads(path.read_text())
    try:
        path.write_text(json.dumps({**summary, "trained_split": "train"}))
        code, err = _evaluate_cli(root, "--split", "val")
        assert code == 1 and "the FD feature extractor was trained on train" in err
        assert "run `diffusion train-classifier` again" in err
    finally:
        path.write_text(json.dumps(summary))


def test_evaluate_split_is_a_checked_param():
    from flows.stages import evaluate

    params = parse_params(copy.deepcopy(REPO))
    assert params.evaluate.split == "test"
    assert evaluate.metrics_dir(evaluate.with_split(params, "val")) == Path("metrics/val")
    assert evaluate.metrics_dir(params) == Path("metrics")
    with pytest.raises(ConfigError, match="evaluate.split: must be one of"):
        evaluate.with_split(params, "train")


@pytest.mark.slow  # the evaluate stage twice (SWD, MMD and the NLL of 16 points; no Ray: no sweep)
def test_vectors_evaluate_against_val_too(tmp_path):
    """Toys: the figures, their floors and the NLL read val, into metrics/val/."""
    import torch

    from diffusion_core.data import atomic
    from diffusion_core.frameworks import DiffusionModel
    from diffusion_core.noise import PerSampleNoise
    from flows.stages import data as stages
    from flows.stages import evaluate
    from flows.stages.train import model_config
    from flows.tracking import runs as tracking

    values = tiny_params(data={"toy_val_size": 300}, evaluate={"nfe_sweep": []}, vector={"nll_points": 16})
    with in_workspace(tmp_path), contextlib.redirect_stdout(io.StringIO()):
        params = parse_params(values)
        stages.prepare(params)
        torch.manual_seed(0)
        model = DiffusionModel(model_config(params, "ddpm", {"kind": "vector", "shape": [2]}))
        model.save(tmp_path / "models/ddpm")
        tracking.save_run_id(tmp_path / "models/ddpm", tracking.start_run("toy-checkerboard", "ddpm", {}, {}),
                             "toy-checkerboard")
        x, nfe = model.sample(500, (2,), params.ddpm.sampler, PerSampleNoise(range(500)))
        shards.write_shards(tmp_path / "samples/ddpm/shards", {"samples": (x.numpy(), None)}, 250, {})
        atomic.write_json(tmp_path / "samples/ddpm/sampling.json", {"sampler": "ddim", "nfe": nfe, "seed": 1})
        test = evaluate.evaluate(params, "ddpm")
        val = evaluate.evaluate(evaluate.with_split(params, "val"), "ddpm")
    assert (test["reference_split"], test["num_reference"]) == ("test", 500)
    assert (val["reference_split"], val["num_reference"]) == ("val", 300)  # tiny's toy_test_size is 500
    assert val["floor_split"] == "train subsets vs val" and val["feature_extractor_split"] is None
    assert json.loads((tmp_path / "metrics/val/ddpm.json").read_text())["swd"] == val["swd"]
    assert json.loads((tmp_path / "metrics/ddpm.json").read_text())["swd"] == test["swd"] != val["swd"]
