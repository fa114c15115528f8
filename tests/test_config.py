"""params.yaml validation: one message naming the field, exit code 2, nothing touched."""
import subprocess
import sys

import pytest
import yaml

from diffusion_core.processes.sde import VPSDE
from diffusion_core.samplers.registry import fits_process
from flows.config.params import ConfigError, as_dict, load_params, parse_params
from flows.entry.cli import main
from tests.tiny import ROOT, tiny_params, write_params


def _assert_kept(written: dict, parsed: dict, where: str = "") -> None:
    """Every value written in a params mapping is the parsed value: none dropped, renamed,
    retyped beyond int -> float, or replaced by a default."""
    for key, value in written.items():
        assert key in parsed, f"{where}{key}: missing after parsing"
        if isinstance(value, dict):
            _assert_kept(value, parsed[key], f"{where}{key}.")
        else:
            assert parsed[key] == value, f"{where}{key}: wrote {value!r}, parsed {parsed[key]!r}"


def test_defaults_and_repo_params_are_valid():
    defaults = parse_params({})
    assert defaults.train.frameworks == ["ddpm"] and defaults.ddpm.sampler["name"] == "ddim"
    process = defaults.ddpm.model_parts(defaults.vector)["process"]
    assert process["kind"] == "vp"  # Ho et al.'s chain: beta = linspace(1e-4, 0.02) over 1000 steps
    betas = VPSDE(process["beta_min"], process["beta_max"], process["N"]).discrete_betas
    assert betas.numel() == 1000 and float(betas[0]) == pytest.approx(1e-4) and float(betas[-1]) == pytest.approx(0.02)
    assert defaults.ncsn.model_parts()["process"]["kind"] == "ve"
    assert fits_process(defaults.ncsn.sampler["name"], "ve")
    assert fits_process(defaults.sde.sampler["name"], defaults.sde.process)

    written = yaml.safe_load((ROOT / "params.yaml").read_text())
    repo = load_params(ROOT / "params.yaml")
    _assert_kept(written, as_dict(repo))
    assert repo.train.frameworks == written["train"]["frameworks"] and len(repo.train.frameworks) >= 2
    assert parse_params(as_dict(repo)) == repo  # the dict form (stored with a registered model) re-parses

    tiny = parse_params(tiny_params())
    _assert_kept(tiny_params(), as_dict(tiny))
    assert tiny.data.source == "toy:checkerboard" and tiny.vector.steps == 60 and tiny.ray.num_workers == 2
    assert tiny.ddpm.sampler == {"name": "ddim", "steps": 9, "spacing": "karras"}
    assert tiny.vector.clip is None and tiny.image.clip == written["image"]["clip"]


@pytest.mark.parametrize("section, change, field", [
    ("train", {"bogus": 1}, "train.bogus"),
    ("vector", {"steps": -5}, "vector.steps"),
    ("vector", {"lr": "fast"}, "vector.lr"),
    ("ddpm", {"beta_min": 30.0}, "ddpm.beta_min"),
    ("ddpm", {"beta_max": 2000.0}, "ddpm.beta_max"),
    ("ddpm", {"parameterization": "v"}, "ddpm.parameterization"),
    ("ddpm", {"sampler": {"name": "euler"}}, "ddpm.sampler.name"),
    ("ddpm", {"sampler": {"name": "ddim", "stpes": 5}}, "ddpm.sampler.stpes"),
    ("ddpm", {"sampler": {"name": "ddim", "steps": 0}}, "ddpm.sampler.steps"),
    ("ray", {"num_workers": 0}, "ray.num_workers"),
    ("train", {"frameworks": ["gan"]}, "train.frameworks"),
    ("train", {"lr_schedule": "linear"}, "train.lr_schedule"),
    ("vector", {"network": {"depth": True}}, "vector.network.depth"),
    ("vector", {"network": {"kind": "mlp"}}, "vector.network.kind"),
    ("data", {"name": "my shapes"}, "data.name"),
    ("data", {"name": "-shapes"}, "data.name"),
    ("data", {"name": "x" * 65}, "data.name"),
])
def test_bad_value_names_the_field(section, change, field):
    data = tiny_params()
    data[section].update(change)
    with pytest.raises(ConfigError) as err:
        parse_params(data)
    assert str(err.value).startswith(field)


def test_unknown_section_is_named():
    with pytest.raises(ConfigError, match="^nonsense"):
        parse_params({**tiny_params(), "nonsense": {}})


def test_cli_exits_2_and_touches_nothing(tmp_path, capsys):
    data = tiny_params()
    data["data"]["out_dir"] = str(tmp_path / "shards")
    data["vector"]["steps"] = 0
    code = main(["prepare", "--params", str(write_params(tmp_path, data))])
    assert code == 2
    assert "vector.steps" in capsys.readouterr().err
    assert not (tmp_path / "shards").exists()


def test_cli_reports_a_missing_params_file(tmp_path, capsys):
    assert main(["prepare", "--params", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # a fresh interpreter importing the CLI with Ray, MLflow and Prefect: ~7 s here
def test_console_script_reports_missing_params_file(tmp_path):
    result = subprocess.run([sys.executable, "-m", "flows.entry.cli", "prepare", "--params",
                             str(tmp_path / "absent.yaml")], capture_output=True, text=True)
    assert result.returncode == 2 and "absent.yaml" in result.stderr


SWEEP = [{"name": "ddim", "steps": [10, 50]}, {"name": "annealed_langevin", "steps_per_sigma": [1, 2]},
         {"name": "pc", "steps": [50], "frameworks": ["sde"]}]


@pytest.mark.parametrize("framework, kind, expected", [
    ("ddpm", "vp", [("ddim", 10), ("ddim", 50)]),
    ("ncsn", "ve", [("annealed_langevin", 1), ("annealed_langevin", 2)]),  # no chain samplers on VE
    ("sde", "vp", [("ddim", 10), ("ddim", 50), ("pc", 50)]),
    ("sde", "ve", [("annealed_langevin", 1), ("annealed_langevin", 2), ("pc", 50)]),
])
def test_nfe_sweep_gives_each_framework_the_samplers_that_fit_it(framework, kind, expected):
    from flows.stages.nfe_sweep import sweep_points

    points = sweep_points(SWEEP, framework, kind)
    assert [(p["name"], p.get("steps", p.get("steps_per_sigma"))) for p in points] == expected
    assert all("frameworks" not in p for p in points)


@pytest.mark.parametrize("entry, field", [
    ({"name": "ddim", "steps": [10], "eta": [0.0, 1.0]}, "evaluate.nfe_sweep[0]"),
    ({"name": "ddim", "steps": [10], "frameworks": ["gan"]}, "evaluate.nfe_sweep[0].frameworks"),
    ({"name": "annealed_langevin", "steps_per_sigma": [1], "eps": -1.0}, "evaluate.nfe_sweep[0]"),
])
def test_bad_nfe_sweep_entry_names_the_field(entry, field):
    with pytest.raises(ConfigError, match=rf"^{field.replace('[', '.').replace(']', '.')}"):
        parse_params(tiny_params(evaluate={"nfe_sweep": [entry]}))


@pytest.mark.parametrize("source, name, expected", [
    ("digits", "", "digits"),
    ("toy:checkerboard", "", "toy-checkerboard"),
    ("npz:/data/sets/shapes.npz", "", "shapes"),
    ("npz:relative/my shapes.v2.npz", "", "my-shapes.v2"),
    ("folder:/data/cats/", "", "cats"),
    ("npz:/data/sets/shapes.npz", "shapes-rgb", "shapes-rgb"),
])
def test_a_data_set_is_named_by_data_name_or_else_by_its_source(source, name, expected):
    """The name of experiments, registered models, runs and reports is data.name, or the
    source's stem: a user of npz:/…/shapes.npz reads 'shapes', not 'npz-_data_sets_shapes.npz'."""
    from flows.tracking import registry

    data = tiny_params(source=source)
    data["data"]["name"] = name
    params = parse_params(data)
    assert params.data.dataset == expected
    assert registry.registered_name(params, "ddpm-edm.s1") == f"{expected}-ddpm-edm"


def test_a_scheduled_runs_source_names_its_data_set():
    """`diffusion deploy --source npz:/…/cats.npz` over params naming their data set 'shapes'
    trains and registers as 'cats', not under the params' name."""
    from flows.entry.pipeline import with_overrides

    data = tiny_params(source="npz:/data/shapes.npz")
    data["data"]["name"] = "shapes"
    params = with_overrides(parse_params(data), "npz:/data/cats.npz", None)
    assert params.data.dataset == "cats"
