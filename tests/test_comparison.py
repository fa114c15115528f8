"""Comparable figures: KID and precision/recall beside their floors, the champion rule (a
difference within the error is no difference; versions measured differently are not ranked),
the experiment-kind tag, and the compare report's first table and verdict from metrics files."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from mlflow.exceptions import MlflowException

from diffusion_core.evaluation import fidelity, intervals
from diffusion_core.evaluation.frechet import FeatureStats
from flows.config.params import parse_params
from flows.stages import compare, compare_report
from flows.tracking import figures, registry
from flows.tracking import runs as tracking
from tests.tiny import tiny_params

SHA = "ab" * 32
MEASURED = {"feature_extractor_sha256": SHA, "reference_split": "test", "num_reference": 500, "num_samples": 2000,
            "bootstrap_seed": 0, "bootstrap_replicates": 400}
FLOOR = 2.0


def _headline(ratio: float, se: float, seed: int) -> dict:
    """An image record's headline as evaluate writes it: FD/floor with paired bootstrap
    replicates whose floor draws are shared (as for runs measured alike) and whose figure
    draws give the ratio a standard error of about ``se``."""
    floors = FLOOR + np.random.default_rng(0).normal(0, 0.01, 400)
    reps = np.column_stack([ratio * FLOOR + np.random.default_rng(seed).normal(0, se * FLOOR, 400), floors])
    interval = {"low": ratio - 1.96 * se, "high": ratio + 1.96 * se}
    return {"fd_at_n": ratio * FLOOR, "fd_floor": FLOOR, "fd_ratio": ratio, "fd_ratio_sem": se,
            "fd_ratio_low": interval["low"], "fd_ratio_high": interval["high"], "fd_within_floor": interval["low"] <= 1,
            "fd_replicates": reps.tolist(), "interval_level": 0.95}


def _gaussian(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)) + shift


# --------------------------------------------------------------------------- floors


def test_kid_of_identical_distributions_is_within_its_floor_and_a_shift_is_not():
    test, train = _gaussian(400, 8, 1), _gaussian(3000, 8, 2)
    same = fidelity.kid_with_floor(test, _gaussian(3000, 8, 3), train, subsets=50, subset_size=200)
    assert same["kid_within_floor"] and same["kid_subset_size"] == 200
    assert abs(same["kid"] - same["kid_floor"]) < 2 * same["kid_floor_std"]
    shifted = fidelity.kid_with_floor(test, _gaussian(3000, 8, 3, 0.4), train, subsets=50, subset_size=200)
    assert not shifted["kid_within_floor"] and shifted["kid"] > shifted["kid_floor_max"]


def test_precision_recall_use_equal_sized_sets_and_sit_at_their_floor_when_fake_is_real():
    test, train, fake = _gaussian(300, 8, 1), _gaussian(3000, 8, 2), _gaussian(5000, 8, 3)
    pr = fidelity.precision_recall_with_floor(test, fake, train, k=3, draws=4, seed=0)
    assert pr["pr_num_real"] == pr["pr_num_fake"] == 300 and pr["pr_draws"] == 4
    assert 0.5 < pr["precision_floor"] < 1 and 0.5 < pr["recall_floor"] < 1
    assert abs(pr["precision"] - pr["precision_floor"]) < 0.05
    assert abs(pr["recall"] - pr["recall_floor"]) < 0.05
    assert pr["precision_within_floor"] and pr["recall_within_floor"]
    far = fidelity.precision_recall_with_floor(test, fake + 1.5, train, k=3, draws=2, seed=0)
    assert not far["precision_within_floor"] and far["precision"] < far["precision_floor_min"]
    # a pool of exactly the common size is one draw, and a larger real set is cut to it
    one = fidelity.precision_recall_with_floor(_gaussian(600, 8, 4), fake[:300], train, k=3)
    assert one["pr_draws"] == 1 and one["pr_num_real"] == 300


def test_floor_functions_name_bad_input():
    with pytest.raises(ValueError, match="feature dims differ: real has 8, train has 3"):
        fidelity.kid_with_floor(_gaussian(50, 8, 0), _gaussian(50, 8, 1), _gaussian(50, 3, 2))
    with pytest.raises(ValueError, match="draws must be >= 1"):
        fidelity.precision_recall_with_floor(_gaussian(50, 2, 0), _gaussian(50, 2, 1), _gaussian(50, 2, 2), draws=0)


def _features(x: np.ndarray) -> SimpleNamespace:
    return SimpleNamespace(kept_features=x, stats=FeatureStats.from_features(x))


def test_image_figures_carry_their_floors_and_the_sweep_points_their_ratio():
    from flows.stages import evaluate, image_eval

    test, train, fake = (_features(_gaussian(n, 6, s)) for n, s in ((200, 1), (1000, 2), (800, 3)))
    out = image_eval._fidelity_block(fake, test, train, seed=0, pr_k=3, replicates=40)
    for key in ("fd_ratio", "fd_ratio_sem", "fd_ratio_low", "fd_ratio_high", "kid_floor", "precision_floor",
                "recall_floor"):
        assert np.isfinite(out[key]), key
    assert out["fd_ratio_low"] < out["fd_ratio"] < out["fd_ratio_high"]
    assert len(out["fd_replicates"]) == out["bootstrap_replicates"] == 40
    assert out["fd_within_floor"] and out["kid_within_floor"]  # samples of the data's own law
    shifted = image_eval._fidelity_block(_features(_gaussian(800, 6, 4, shift=1.0)), test, train, 0, 3, 40)
    assert not shifted["fd_within_floor"] and shifted["fd_ratio_low"] > 1
    floors = image_eval.fd_floors_at(train, test, [50, 5000], seed=0)
    assert set(floors) == {"50"}  # 5000 is more than the train features hold
    sweep = [{"metric": "fd", "value": 2 * floors["50"], "num_samples": 50}]
    evaluate.with_sweep_floors(None, sweep, {"fd_floor_by_n": floors}, "paper")
    assert sweep[0]["ratio"] == pytest.approx(2.0) and sweep[0]["recipe"] == "paper"


def test_vector_figures_carry_the_swd_ratio_error_and_how_they_were_measured():
    from flows.stages.evaluate import vector_metrics

    params = parse_params(tiny_params("toy:gmm8"))
    out = vector_metrics(_gaussian(300, 2, 1), _gaussian(300, 2, 2), _gaussian(2000, 2, 3), params, "toy:gmm8")
    assert out["swd_ratio_sem"] > 0 and out["num_reference"] == out["num_samples"] == 300
    figure = figures.headline(out)
    assert figure["metric"] == "swd_ratio" and figure["se"] == out["swd_ratio_sem"]
    assert figure["low"] < figure["value"] < figure["high"] and figures.ranked(figure)
    assert out["jackknife_groups"] == 10 and "jackknife=10" in figures.measurement(out)
    other = figures.headline(vector_metrics(_gaussian(300, 2, 4), _gaussian(300, 2, 2), _gaussian(2000, 2, 3),
                                            params, "toy:gmm8"))
    with_reference = figures.pairwise([("a", figure), ("b", other)])[0]
    samples_only = figures.pairwise([("a", {**figure, "jackknife": None}), ("b", {**other, "jackknife": None})])[0]
    assert with_reference["se"] > samples_only["se"]  # the reference's noise is in the difference


# --------------------------------------------------------------------------- MLflow


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A local sqlite tracking store and registry in a tmp folder."""
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        yield root, tracking.client()


def test_experiments_are_tagged_as_model_training(store):
    _, client = store
    key, kind = "mlflow.experimentKind", "custom_model_development"
    tracking.start_run("kind-new", "ddpm", {"lr": 1}, {"recipe": "paper"})
    assert client.get_experiment_by_name("kind-new").tags[key] == kind
    old = client.create_experiment("kind-old")  # made before the tag existed
    tracking.start_run("kind-old", "ddpm", {}, {})
    assert client.get_experiment(old).tags[key] == kind
    chosen = client.create_experiment("kind-chosen", tags={key: "genai_development"})
    tracking.start_run("kind-chosen", "ddpm", {}, {})
    assert client.get_experiment(chosen).tags[key] == "genai_development"  # a chosen kind is kept


def _register(store, dataset: str, key: str, value: float, se: float, **measured) -> tuple[str, int]:
    """A registry version as `register` tags it, without a model behind it."""
    root, client = store
    metrics = {**MEASURED, **measured, **_headline(value, se, seed=int(value * 1000)), "sampler": "ddim", "nfe": 10}
    name = f"{dataset}-{key}"
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    tags = registry.version_tags(figures.headline(metrics), metrics, root / "no-model", key)
    return name, int(client.create_model_version(name, str(root / "source"), tags=tags).version)


def test_a_challenger_takes_champion_only_when_better_by_more_than_the_error(store):
    first = _register(store, "rule", "ddpm", 1.50, 0.05)
    assert registry.update_champion("rule", first)["name"] == "rule-ddpm"
    close = _register(store, "rule", "sde", 1.45, 0.05)  # 0.05 better, error 0.07
    assert registry.update_champion("rule", close) == {"name": "rule-ddpm", "version": 1, "primary_value": 1.5}
    clear = _register(store, "rule", "ncsn", 1.20, 0.05)  # 0.30 better
    assert registry.update_champion("rule", clear)["name"] == "rule-ncsn"
    client = store[1]
    assert "champion" not in client.get_registered_model("rule-ddpm").aliases
    assert int(client.get_registered_model("rule-ncsn").aliases["champion"]) == 1


def test_versions_measured_differently_are_not_ranked_and_are_reported(store):
    _register(store, "meas", "ddpm", 1.50, 0.05)
    registry.update_champion("meas")
    fewer = _register(store, "meas", "sde", 0.90, 0.05, num_samples=500)
    assert registry.update_champion("meas", fewer)["name"] == "meas-sde"  # the newest's own kind
    better = _register(store, "meas", "edm", 0.10, 0.01, num_samples=500)
    latest = _register(store, "meas", "ncsn", 1.40, 0.05)  # measured like the first
    champion = registry.update_champion("meas", latest)
    assert champion["name"] == "meas-ncsn"  # 0.10 was measured on 500 samples: not ranked
    table = registry.ranking("meas", latest)
    reasons = {(v["name"], v["version"]): v["reason"] for v in table["not_ranked"]}
    assert set(reasons) == {fewer, better}
    assert reasons[fewer] == "measured with another sample count 500 vs 2000"
    uri, not_ranked = compare._registry_view("meas")
    assert uri == "models:/meas-ncsn@champion"
    text = compare_report.markdown("meas", [], {}, uri, not_ranked)
    assert "- `meas-sde` version 1: measured with another sample count 500 vs 2000" in text


def test_reasons_name_what_differs():
    a = figures.measurement_tags({**MEASURED, "fd_ratio": 1.0})
    b = figures.measurement_tags({**MEASURED, "fd_ratio": 1.0, "feature_extractor_sha256": "cd" * 32,
                                  "num_reference": 1000, "bootstrap_seed": 3})
    assert figures.not_comparable(a, a) is None
    assert figures.not_comparable(b, a) == ("measured with another feature extractor cdcdcdcdcdcd vs "
                                            "abababababab, reference size 1000 vs 500, bootstrap seed 3 vs 0")
    raw = figures.measurement_tags({**MEASURED, "fd": 3.0})
    assert figures.not_comparable(raw, a) == "another figure (fd vs fd_ratio)"


# --------------------------------------------------------------------------- the report


def _write_run(root, key: str, ratio: float, se: float, steps=(1200, 1200), stopped_by="steps", **metrics):
    """A run's files as train, sample and evaluate leave them."""
    framework, _, recipe = key.split(".")[0].partition("-")
    record = {**MEASURED, **_headline(ratio, se, seed=len(key) * 7 + int(ratio * 100)), "fd_n": 500,
              "kid": 0.001, "kid_floor": 0.0012, "kid_within_floor": True, "precision": 0.7,
              "precision_floor": 0.75, "recall": 0.6, "recall_floor": 0.74, "sampler": "ddim", "nfe": 50,
              "seed": 1, "recipe": recipe or "custom", "nll": 1.234, "nll_sem": 0.012, "nll_unit": "bits/dim",
              **metrics}
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics" / f"{key}.json").write_text(json.dumps(record))
    (root / "models" / key).mkdir(parents=True, exist_ok=True)
    config = {"framework": framework, "recipe": recipe or "custom"}
    (root / "models" / key / "model.json").write_text(json.dumps(config))
    (root / "models" / key / "train_summary.json").write_text(json.dumps(
        {"steps": steps[0], "planned_steps": steps[1], "stopped_by": stopped_by, "train_seconds": 60.0}))
    (root / "samples" / key).mkdir(parents=True, exist_ok=True)
    (root / "samples" / key / "sampling.json").write_text(json.dumps({"samples_per_s": 100.0}))


def test_the_report_opens_with_one_line_per_run_and_a_verdict(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = parse_params(tiny_params("digits"))
    _write_run(tmp_path, "ddpm-paper", 1.80, 0.05)
    _write_run(tmp_path, "sde-paper", 1.49, 0.06)
    _write_run(tmp_path, "ddpm-edm", 1.52, 0.07, steps=(700, 1200), stopped_by="time_limit")
    _write_run(tmp_path, "ncsn", 0.90, 0.05, num_samples=500)
    keys = ["ddpm-paper", "sde-paper", "ddpm-edm", "ncsn"]
    rows = [compare.run_row(params, key) for key in keys]
    sweep = {"sde-paper": [{"sampler": "pc", "steps": 10, "nfe": 20, "metric": "fd", "value": 9.0,
                            "num_samples": 200, "floor": 6.0, "ratio": 1.5}]}
    text = compare_report.markdown("digits", rows, sweep, "models:/digits-sde-paper@champion")
    lines = text.splitlines()
    assert lines[2].startswith("| run | framework | recipe | steps trained | sampler (NFE) | headline [95% interval]")
    assert lines[4] == ("| ddpm-paper | ddpm | paper | 1200 | ddim (50) | FD/floor 1.80 [1.70, 1.90] | "
                        "FD 3.6 vs floor 2 (n=500) | 1.234 [1.21, 1.258] bits/dim |")
    assert lines[6] == ("| ddpm-edm | ddpm | edm | 700 of 1200 (stopped by time cap) | ddim (50) | "
                        "FD/floor 1.52 [1.38, 1.66] | FD 3.04 vs floor 2 (n=500) | 1.234 [1.21, 1.258] bits/dim |")
    assert "| ncsn | ncsn | custom | 1200 | ddim (50) | FD/floor 0.90 [0.80, 1.00] (within floor) |" in lines[7]
    verdict = compare.verdict(rows)
    assert lines[9] == f"**Verdict:** {verdict}"
    assert verdict == ("Trained models, at 95% family-wise confidence (Bonferroni over 3 pairs; bootstrap over the samples, "
                       "reference and floor shared): sde-paper beats ddpm-paper by 0.31 [0.11, 0.51] FD/floor; ddpm-edm beats "
                       "ddpm-paper by 0.28 [0.07, 0.49] FD/floor; not separated: sde-paper and ddpm-edm "
                       "(0.03 [-0.20, 0.26]). One training seed per run: this compares these trained models, not their "
                       "recipes. ncsn not ranked against ddpm-paper: measured with another sample count 500 vs 2000.")
    assert lines[11] == "Champion (registry alias): `models:/digits-sde-paper@champion`"
    assert text.index("## Every metric") > text.index("**Verdict:**")
    assert "| 0.001 (within floor) | 0.0012 |" in text  # KID beside its floor
    assert "| sde-paper | pc | 10 | 20 | 200 | fd | 9 | 6 | 1.5 |" in text


def test_a_report_of_one_run_says_there_is_nothing_to_rank(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_run(tmp_path, "ddpm", 1.2, 0.1)
    row = compare.run_row(parse_params(tiny_params("digits")), "ddpm")
    assert compare.verdict([row]).startswith("Fewer than two runs have a headline figure with an interval: nothing to rank.")
    with pytest.raises(FileNotFoundError, match="sde.json is missing: run the evaluate stage first"):
        compare.run_row(parse_params(tiny_params("digits")), "sde")


def test_recipes_are_compared_only_from_three_seeds_and_with_the_between_seed_spread(tmp_path, monkeypatch):
    """ddpm-edm at three seeds is better than ddpm-paper at three by more than the seeds
    spread; ncsn at two seeds gets a mean but no claim; the seed means carry t intervals."""
    monkeypatch.chdir(tmp_path)
    runs = {"ddpm-paper": (2.9, 3.1, 3.0), "ddpm-edm": (2.0, 2.2, 2.1), "ncsn": (1.5, 2.6)}
    keys = [f"{key}.s{i}" for key, values in runs.items() for i in range(len(values))]
    for key, values in runs.items():
        for i, value in enumerate(values):
            _write_run(tmp_path, f"{key}.s{i}", value, 0.05)
    rows = [compare.run_row(parse_params(tiny_params("digits")), k) for k in keys]
    text = compare.verdict(rows)
    assert "Trained models" not in text  # with seeds, the keys speak
    assert ("Recipes over training seeds, at 95% family-wise confidence (Welch's interval on the seed means, "
            "Bonferroni over 1 pairs): ddpm-edm beats ddpm-paper by 0.90 [") in text
    assert "Fewer than 3 training seeds, no claim about the recipe: ncsn." in text
    means = compare.key_means(rows)
    assert means["ddpm-edm"]["seeds"] == 3 and means["ddpm-edm"]["estimate"] == pytest.approx(2.1)
    assert means["ncsn"]["high"] - means["ncsn"]["low"] > 10  # two seeds far apart: t with 1 df
    table = "\n".join(compare_report.markdown("digits", rows, {}, None).splitlines())
    assert "| ddpm-edm | 3 | 2.10 [" in table and "ddpm-edm.s1: 2.20" in table


def test_seed_means_carry_the_references_noise_when_the_runs_carry_jackknifes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pattern = np.tile([0.2, -0.2], 5)
    for i, value in enumerate((2.0, 2.2, 2.1)):  # fd_floor 2 (MEASURED): figure = (ratio + δ_g) · 2
        jackknife = np.column_stack([(value + pattern) * 2.0, np.full(10, 2.0)]).tolist()
        _write_run(tmp_path, f"ddpm-edm.s{i}", value, 0.05, fd_jackknife=jackknife, jackknife_groups=10)
    rows = [compare.run_row(parse_params(tiny_params("digits")), f"ddpm-edm.s{i}") for i in range(3)]
    mean = compare.key_means(rows)["ddpm-edm"]
    plain = intervals.seed_mean([2.0, 2.2, 2.1])
    assert mean["se"] == pytest.approx(np.sqrt(plain["se"] ** 2 + 0.9 * 10 * 0.04))


def test_a_figure_without_an_interval_is_listed_never_ranked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_run(tmp_path, "ddpm", 1.2, 0.1)
    _write_run(tmp_path, "sde", 3.0, 0.1, fd_replicates=None)
    rows = [compare.run_row(parse_params(tiny_params("digits")), k) for k in ("ddpm", "sde")]
    text = compare.verdict(rows)
    assert text.startswith("Fewer than two runs have a headline figure with an interval")
    assert "sde listed, not ranked: no interval" in text


def test_a_version_without_an_interval_never_takes_champion(store):
    old = _register(store, "old", "ddpm", 1.50, 0.05)
    store[1].set_model_version_tag(old[0], old[1], "primary_replicates", "")  # as before intervals
    assert registry.update_champion("old", old)["name"] is None
    new = _register(store, "old", "sde", 1.9, 0.05)
    assert registry.update_champion("old", new)["name"] == "old-sde"  # the only rankable one
    reasons = {(v["name"], v["version"]): v["reason"] for v in registry.ranking("old", new)["not_ranked"]}
    assert reasons[old].startswith("no interval")


def test_the_ladder_table_shows_each_rungs_change_with_its_interval(tmp_path, monkeypatch):
    """ddpm:paper:edm with one seed per rung: each rung's change from the one before by the
    paired bootstrap, at Bonferroni over the rungs; a big step is separated, a small one not."""
    from flows.config.ladder import ladder_keys, parse_ladder

    monkeypatch.chdir(tmp_path)
    params = parse_params(tiny_params("digits", compare={"ladders": ["ddpm:paper:edm"]}))
    keys = ladder_keys(params, parse_ladder("ddpm:paper:edm", "x"))
    values = [3.0, 2.95] + [2.0] * (len(keys) - 2)  # rung 1 changes little, rung 2 much
    for key, value in zip(keys, values):
        _write_run(tmp_path, key, value, 0.05)
    rows = [compare.run_row(params, k) for k in keys]
    table = compare.ladder_table(rows, params, "ddpm:paper:edm")
    assert table[0].startswith("Ablation ladder `ddpm:paper:edm`")
    assert table[4] == "| 0 | ddpm-paper | (start) | 3.00 | - | |"
    assert table[5].startswith("| 1 | ddpm-paper_to_edm_1 | `parameterization` eps → edm | 2.95 | -0.05 [")
    assert table[5].endswith("| not separated |")
    assert table[6].startswith("| 2 | ddpm-paper_to_edm_2 | `noise` uniform → lognormal | 2.00 | -0.95 [")
    assert table[6].endswith("| better |")
    assert table[-1].startswith(f"| {len(keys) - 1} | ddpm-edm | `")  # the last rung is the end recipe
    text = compare_report.markdown("digits", rows, {}, None, ladders=[table])
    assert "| 2 | ddpm-paper_to_edm_2 |" in text
