"""The ablation ladder (flows/config/ladder.py): rungs from one recipe to another that change
one setting at a time, the pipeline's --ladder override, and bad ladders named."""
import pytest

from flows.config.deviations import data_kind, run_settings, same_setting
from flows.config.ladder import ladder_keys, parse_ladder, rungs
from flows.config.params import ConfigError, as_dict, load_params, parse_params
from flows.entry.cli import main
from flows.entry.pipeline import with_overrides
from tests.tiny import ROOT


@pytest.fixture(scope="module")
def params():
    return load_params(ROOT / "params.yaml")


@pytest.mark.parametrize("spec", ["ddpm:paper:edm", "ncsn:paper:edm", "sde:paper:edm"])
def test_each_rung_changes_exactly_the_settings_it_names(params, spec):
    ladder = parse_ladder(spec, "x")
    laddered = with_overrides(params, None, None, ladder=spec)
    keys, kind = ladder_keys(params, ladder), data_kind(params)
    assert keys[0] == f"{ladder.framework}-paper" and keys[-1] == f"{ladder.framework}-edm"
    assert laddered.train.frameworks == keys and laddered.compare.ladders == [spec]
    for rung, before, after in zip(rungs(params, ladder), keys[:-1], keys[1:]):
        a, b = run_settings(laddered, before, kind), run_settings(laddered, after, kind)
        changed = [s for s in a if not same_setting(s, a[s], b[s])]
        assert changed == rung["settings"], (before, after)


def test_the_ddpm_ladder_walks_from_the_paper_to_edm(params):
    steps = rungs(params, parse_ladder("ddpm:paper:edm", "x"))
    changed = [s for step in steps for s in step["settings"]]
    assert {"parameterization", "noise", "conditioning", "ema", "optimizer.lr"} <= set(changed)
    assert len(changed) == len(set(changed)) and steps[-1]["recipe"] == "edm"
    assert all(len(step["settings"]) == 1 for step in steps)  # on these recipes each setting stands alone


def test_a_setting_that_needs_another_moves_with_it(params):
    """beta_min above the start's beta_max is no valid chain on its own: the rung that raises
    beta_min waits for beta_max; a 40-step chain cannot hold DDIM's 50 steps, so it comes with
    the sampler that fits it."""
    raw = as_dict(params)
    paper = raw["ddpm"]["recipes"]["paper"]
    raw["ddpm"]["recipes"]["odd"] = {**paper, "beta_min": 25.0, "beta_max": 30.0, "N": 40,
                                     "sampler": {"name": "ddim", "steps": 30, "spacing": "uniform"}}
    steps = rungs(parse_params(raw), parse_ladder("ddpm:paper:odd", "x"))
    assert [step["settings"] for step in steps] == [["beta_min", "beta_max"], ["N", "sampler"]]


@pytest.mark.parametrize("spec, message", [
    ("ddpm:paper", "a ladder is '<framework>:<start recipe>:<end recipe>'"),
    ("gan:paper:edm", "a ladder is"),
    ("ddpm:paper:paper", "starts and ends at the same recipe"),
    ("ddpm:paper:nope", "ddpm has no recipe 'nope'"),
])
def test_bad_ladders_are_named(params, spec, message):
    with pytest.raises(ConfigError, match=message):
        with_overrides(params, None, None, ladder=spec)


def test_the_cli_refuses_a_bad_ladder_with_exit_2(capsys):
    assert main(["check-params", "--params", str(ROOT / "params.yaml"), "--ladder", "ddpm:paper"]) == 2
    assert "error: bad params: --ladder: a ladder is" in capsys.readouterr().err
    assert main(["check-params", "--params", str(ROOT / "params.yaml"), "--ladder", "ddpm:paper:edm",
                 "--seeds", "0", "1"]) == 0
    assert '"ddpm-paper_to_edm_1.s1"' in capsys.readouterr().out
