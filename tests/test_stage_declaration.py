"""A stage is declared once (flows/entry/stages.py): the CLI and the Prefect flow read that
declaration, and dvc.yaml, which also lists each stage's data, runs the same stages."""
from __future__ import annotations

import shlex

import pytest
import yaml

from flows.entry.cli import COMMANDS
from flows.entry.pipeline import RETRY, TASKS
from flows.entry.stages import STAGES
from tests.tiny import ROOT

DECLARED = {stage.name: stage for stage in STAGES}


def _dvc_stages() -> dict:
    """{DVC stage name: (its command as words, whether it runs once per run)}: a `foreach` over
    train.frameworks runs its `do` once per run of train.frameworks."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, spec in stages.items():
        per_run = "foreach" in spec
        if per_run:
            assert spec["foreach"] == "${train.frameworks}", name
        out[name] = (shlex.split((spec["do"] if per_run else spec)["cmd"]), per_run)
    return out


@pytest.mark.parametrize("name", sorted(_dvc_stages()))
def test_each_dvc_stage_runs_the_declared_stage_of_its_name(name):
    words, per_run = _dvc_stages()[name]
    assert words[:2] == ["diffusion", name] and name in DECLARED, f"dvc.yaml's {name}: {words}"
    assert DECLARED[name].per_run == per_run, f"{name}: once per run in one place, once in the other"
    assert words[2:] == (["--framework", "${item}"] if per_run else [])


def test_every_declared_stage_is_in_dvc_yaml():
    assert set(DECLARED) <= set(_dvc_stages()), set(DECLARED) - set(_dvc_stages())


def test_the_cli_and_the_flow_take_their_stages_from_the_declaration():
    assert all(COMMANDS[stage.name] is stage for stage in STAGES)
    assert list(TASKS) == list(DECLARED)
    assert all(TASKS[stage.name].retries == (RETRY["retries"] if stage.retried else 0) for stage in STAGES)


def test_the_per_run_stages_stand_together():
    """The flow runs each run through the per-run stages in turn, in place of the first of them."""
    flags = [stage.per_run for stage in STAGES]
    first, last = flags.index(True), len(flags) - 1 - flags[::-1].index(True)
    assert all(flags[first:last + 1])
