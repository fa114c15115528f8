"""Training-seed replicates: a run key may end in `.s<seed>` (`ddpm-edm.s2`), the run it names
trained at that seed. Replicates of one base key are child runs of one MLflow parent run and
versions of one registered model, each tagged with its training seed."""
import hashlib
import json
import re

import pytest

from flows.config.params import ConfigError, parse_params
from flows.config.recipes import base_key, recipe_of, run_seed, split_run, with_seeds
from flows.config.sweep import sweep_points
from flows.tracking import runs as tracking
from tests.tiny import in_workspace, tiny_params, write_params


@pytest.mark.parametrize("key, base, seed, framework, recipe", [
    ("ddpm-edm.s2", "ddpm-edm", 2, "ddpm", "edm"),
    ("ddpm-edm", "ddpm-edm", None, "ddpm", "edm"),
    ("ddpm.s0", "ddpm", 0, "ddpm", "custom"),
    ("sde-paper.s4294967295", "sde-paper", 2**32 - 1, "sde", "paper"),
])
def test_a_key_splits_into_its_run_and_its_seed(key, base, seed, framework, recipe):
    assert run_seed(key) == (base, seed) and base_key(key) == base
    assert split_run(key)[0] == framework and recipe_of(key) == recipe


@pytest.mark.parametrize("key", ["ddpm.sx", "ddpm.s-1", "ddpm.s01", "ddpm.s", "ddpm.2", "ddpm-edm.s1.s2",
                                 "ddpm.s4294967296", "ddpm.s1\n"])
def test_a_malformed_seed_suffix_is_refused_naming_the_field(key):
    with pytest.raises(ConfigError, match=r"^train\.frameworks: .*\.s<seed>"):
        parse_params(tiny_params(train={"frameworks": [key]}))
    sweep = [{"name": "ddim", "steps": [3], "frameworks": [key]}]
    with pytest.raises(ConfigError, match=r"^evaluate\.nfe_sweep\[0\]\.frameworks: "):
        parse_params(tiny_params(evaluate={"nfe_sweep": sweep}))


def test_suffixed_keys_are_validated_like_their_base_key():
    params = parse_params(tiny_params(train={"frameworks": ["ddpm", "ddpm.s1", "ddpm-edm.s2"]}))
    assert params.train.frameworks == ["ddpm", "ddpm.s1", "ddpm-edm.s2"]
    with pytest.raises(ConfigError, match=r"^train\.frameworks: 'ddpm-nosuch\.s1': ddpm has no recipe"):
        parse_params(tiny_params(train={"frameworks": ["ddpm-nosuch.s1"]}))
    with pytest.raises(ConfigError, match=r"^train\.frameworks: unknown framework 'gan\.s1'"):
        parse_params(tiny_params(train={"frameworks": ["gan.s1"]}))


def test_the_training_seed_is_the_suffixs_else_train_seed():
    from flows.stages import train as train_stage

    params = parse_params(tiny_params(train={"frameworks": ["ddpm", "ddpm.s3"], "seed": 7}))
    assert params.train_seed("ddpm") == 7 and params.train_seed("ddpm.s3") == 3
    meta = {"kind": "vector", "shape": [2]}
    loops = {key: train_stage._loop_config(params, key, params.vector,
                                           train_stage.model_config(params, key, meta))
             for key in ("ddpm", "ddpm.s3")}
    assert loops["ddpm"]["seed"] == 7 and loops["ddpm.s3"]["seed"] == 3
    # the replicate trains the base key's model and recipe: only the seed (and the name) differ
    assert loops["ddpm.s3"]["model"] == loops["ddpm"]["model"]
    assert {k for k in loops["ddpm"] if loops["ddpm"][k] != loops["ddpm.s3"][k]} == {"framework", "seed"}


def test_an_nfe_sweep_entry_naming_a_base_key_covers_its_replicates():
    entry = {"name": "ddim", "steps": [3, 9], "frameworks": ["ddpm-edm"]}
    assert len(sweep_points([entry], "ddpm-edm.s1", "vp")) == 2
    assert sweep_points([entry], "ddpm-paper.s1", "vp") == []
    only_one = {**entry, "frameworks": ["ddpm-edm.s1"]}
    assert len(sweep_points([only_one], "ddpm-edm.s1", "vp")) == 2
    assert sweep_points([only_one], "ddpm-edm.s2", "vp") == []


def test_seeds_expand_every_key_without_a_suffix():
    from flows.entry.pipeline import with_overrides

    assert with_seeds(["ddpm-edm", "sde.s5"], [0, 1]) == ["ddpm-edm.s0", "ddpm-edm.s1", "sde.s5"]
    params = parse_params(tiny_params(train={"frameworks": ["ddpm", "ddpm-edm"]}))
    expanded = with_overrides(params, None, None, [0, 2])
    assert expanded.train.frameworks == ["ddpm.s0", "ddpm.s2", "ddpm-edm.s0", "ddpm-edm.s2"]
    assert with_overrides(params, None, None, None).train.frameworks == ["ddpm", "ddpm-edm"]
    with pytest.raises(ConfigError, match=r"^train\.frameworks: 'ddpm\.s-1'"):
        with_overrides(params, None, None, [-1])
    with pytest.raises(ConfigError, match=r"^train\.frameworks: names a run twice"):
        with_overrides(params, None, None, [1, 1])


def test_the_prefect_flow_takes_seeds_as_a_parameter():
    """A flow run (a deployment's, say) passes `seeds` as a list of integers, checked by Prefect."""
    from flows.entry.pipeline import pipeline_flow

    assert pipeline_flow.validate_parameters({"seeds": [0, 1]})["seeds"] == [0, 1]
    assert pipeline_flow.parameters.properties["seeds"]["anyOf"][0] == {"items": {"type": "integer"},
                                                                          "type": "array"}


def test_check_params_with_seeds_lists_the_replicates_and_refuses_bad_ones(tmp_path, capsys):
    from flows.entry.cli import main

    write_params(tmp_path, tiny_params(train={"frameworks": ["ddpm-paper", "ddpm-edm.s9"]}))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        assert main(["check-params", "--seeds", "0", "1"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["frameworks"] == ["ddpm-paper.s0", "ddpm-paper.s1", "ddpm-edm.s9"]
        assert main(["check-params", "--seeds", "0", "-3"]) == 2
        assert "error: bad params: train.frameworks: 'ddpm-paper.s-3'" in capsys.readouterr().err


def test_the_parent_run_of_a_seed_group_is_found_again(tmp_path):
    with in_workspace(tmp_path):
        first = tracking.start_run("toy", "ddpm-edm.s0", {}, {"seed": "0", "recipe": "edm"}, seed_group="ddpm-edm")
        second = tracking.start_run("toy", "ddpm-edm.s1", {}, {"seed": "1", "recipe": "edm"}, seed_group="ddpm-edm")
        other = tracking.start_run("toy", "ddpm-paper.s0", {}, {"seed": "0"}, seed_group="ddpm-paper")
        plain = tracking.start_run("toy", "ddpm-edm", {}, {"seed": "0"})
        client = tracking.client()
        parents = {run: client.get_run(run).data.tags.get(tracking.PARENT_RUN_TAG)
                   for run in (first, second, other, plain)}
        assert parents[first] == parents[second] != parents[other]
        assert parents[plain] is None  # a key without a suffix trains as before: no parent
        group = client.get_run(parents[first])
        assert group.info.run_name == "ddpm-edm" and group.data.tags["seed_group"] == "ddpm-edm"
        assert group.data.tags["recipe"] == "edm" and "seed" not in group.data.tags
        client.delete_run(parents[first])  # a deleted parent is not reused
        third = tracking.start_run("toy", "ddpm-edm.s2", {}, {}, seed_group="ddpm-edm")
        assert client.get_run(third).data.tags[tracking.PARENT_RUN_TAG] not in (None, parents[first])


def test_an_unfinished_replicate_continues_its_own_child_run(tmp_path):
    """A train call that finds the replicate's in-progress record (after a kill, a failed try)
    continues that child run: no second run, no second parent."""
    from flows.stages import train as train_stage

    params = parse_params(tiny_params(train={"frameworks": ["ddpm.s1"]}))
    inputs = {"seed": 1, "data_manifest_sha256": "0" * 64}
    with in_workspace(tmp_path):
        first = train_stage._start_or_continue(params, "ddpm.s1", "toy", inputs)
        again = train_stage._start_or_continue(params, "ddpm.s1", "toy", inputs)
        assert again["run_id"] == first["run_id"]
        client = tracking.client()
        runs = client.search_runs([client.get_experiment_by_name("toy").experiment_id])
        assert sorted(run.info.run_name for run in runs) == ["ddpm", "ddpm.s1"]  # the parent, the child
        child = client.get_run(first["run_id"]).data.tags
        assert (child["seed"], child["run_key"], child["base_key"]) == ("1", "ddpm.s1", "ddpm")


def test_a_registry_version_records_its_training_and_sample_seeds(tmp_path):
    from flows.tracking import registry

    (tmp_path / "train_summary.json").write_text(json.dumps({"seed": 2, "steps": 20}))
    figure = {"metric": "swd", "value": 0.5, "se": None}
    tags = registry.version_tags(figure, {"swd": 0.5, "seed": 1, "sampler": "ddim"}, tmp_path, "ddpm.s2")
    assert tags["train_seed"] == "2" and tags["sample_seed"] == "1" and tags["run"] == "ddpm.s2"
    assert "seed" not in tags  # renamed: which seed a bare "seed" meant was ambiguous
    params = parse_params(tiny_params())
    assert registry.registered_name(params, "ddpm-edm.s2") == registry.registered_name(params, "ddpm-edm")


def _weights_sha256(folder) -> str:
    return hashlib.sha256((folder / "weights.pt").read_bytes()).hexdigest()


@pytest.mark.slow
def test_two_seeds_of_a_key_are_two_children_of_one_parent_and_two_versions(tmp_path):
    """Tiny real train stages on Ray Train and a local sqlite MLflow store: `ddpm` (train.seed 0),
    `ddpm.s0` and `ddpm.s1`; the replicates registered (their metrics records written here, as
    evaluate leaves them: the registry needs a figure, not a good one)."""
    from flows.stages import data, train
    from flows.tracking import registry

    keys = ["ddpm", "ddpm.s0", "ddpm.s1"]
    with in_workspace(tmp_path):
        params = parse_params(tiny_params(train={"frameworks": keys}, ray={"num_workers": 1}))
        data.prepare(params)
        summaries = {key: train.train(params, key) for key in keys}
        assert [summaries[key]["seed"] for key in keys] == [0, 0, 1]
        weights = {key: _weights_sha256(tmp_path / "models" / key) for key in keys}
        assert weights["ddpm.s0"] == weights["ddpm"] != weights["ddpm.s1"]
        client = tracking.client()
        runs = {key: client.get_run(tracking.load_run_id(tmp_path / "models" / key)) for key in keys}
        assert tracking.PARENT_RUN_TAG not in runs["ddpm"].data.tags
        parent = runs["ddpm.s0"].data.tags[tracking.PARENT_RUN_TAG]
        assert runs["ddpm.s1"].data.tags[tracking.PARENT_RUN_TAG] == parent
        assert client.get_run(parent).data.tags["seed_group"] == "ddpm"
        for key, seed in (("ddpm.s0", "0"), ("ddpm.s1", "1")):
            tags = runs[key].data.tags
            assert (tags["seed"], tags["run_key"], tags["base_key"]) == (seed, key, "ddpm")
            assert runs[key].info.run_name == key
        versions = {}
        for key in ("ddpm.s0", "ddpm.s1"):
            (tmp_path / "metrics").mkdir(exist_ok=True)
            (tmp_path / "metrics" / f"{key}.json").write_text(json.dumps(
                {"swd": 0.5, "sampler": "ddim", "nfe": 9, "seed": params.sample.seed}))
            result = registry.register(params, key)
            versions[key] = client.get_model_version(result["name"], str(result["version"]))
        assert {v.name for v in versions.values()} == {"toy-checkerboard-ddpm"}
        assert [versions[key].tags["train_seed"] for key in ("ddpm.s0", "ddpm.s1")] == ["0", "1"]
        assert {v.tags["sample_seed"] for v in versions.values()} == {str(params.sample.seed)}
        assert versions["ddpm.s1"].run_id == runs["ddpm.s1"].info.run_id


@pytest.mark.slow
def test_dvc_makes_one_stage_of_each_kind_per_replicate(tmp_path):
    """dvc.yaml's foreach over train.frameworks takes suffixed keys as they are."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from tests.tiny import ROOT

    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copytree(ROOT / ".dvc", tmp_path / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    write_params(tmp_path, tiny_params(train={"frameworks": ["ddpm-edm.s0", "ddpm-edm.s1"]}))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    listed = subprocess.run([str(Path(sys.executable).parent / "dvc"), "stage", "list"], cwd=tmp_path,
                            env={**os.environ, "DVC_NO_ANALYTICS": "1"}, capture_output=True, text=True,
                            timeout=120)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    for seed in (0, 1):
        assert re.search(rf"^train@ddpm-edm\.s{seed} +Outputs models/ddpm-edm\.s{seed}$", listed.stdout, re.M)
        for stage in ("sample", "evaluate", "register"):
            assert re.search(rf"^{stage}@ddpm-edm\.s{seed} ", listed.stdout, re.M), listed.stdout
