"""Bad input is refused before any work, named, and leaves the working folder as it was.

Params: the repo's params.yaml mutated by hypothesis (a value of another type, an out-of-range
number or an unknown key at a random place; cross-field contradictions), malformed YAML and
malformed command lines, all through the real CLI: exit code 2 and one line
`error: bad params: <dotted.field>: ...` naming the field (or the file), never a traceback.
Data: corrupt, truncated or missing shards and manifests, and bad `folder:` / `npz:` sources,
each refused with a message naming the file and the problem; the previous shards stay whole.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import io
import math
import re
import shutil
import string
import tempfile
import typing
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusion_core.data import (
    ShardChecksumError,
    load_source,
    load_split,
    read_manifest,
    verify_shards,
)
from diffusion_core.data.shards import MANIFEST_NAME, read_shard, write_shards
from diffusion_core.data.sources import DIGITS_SHAPE, DIGITS_SIZE
from diffusion_core.frameworks import FRAMEWORKS
from diffusion_core.samplers.registry import SAMPLERS
from flows.config.params import Params, parse_params
from flows.entry.cli import main
from flows.stages.data import prepare
from tests.tiny import ROOT

REPO = yaml.safe_load((ROOT / "params.yaml").read_text())
PREFIX = "error: bad params: "
FAST = settings(max_examples=25, deadline=None)


# ---------------------------------------------------------------- helpers

def _run_cli(argv: list[str]) -> tuple[int, str]:
    """The CLI's exit code and stderr (argparse's exits included)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code
    return code, err.getvalue()


def _listing(folder: Path) -> dict[str, str]:
    """Every file and folder under `folder`, hidden ones included, with each file's sha256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(Path(folder).rglob("*"))}


def _one_line(err: str) -> str:
    """stderr holds exactly one line, and no traceback."""
    assert "Traceback" not in err, err
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0], f"expected one line on stderr, got {err!r}"
    return lines[0]


def _field(err: str) -> str:
    """The dotted field an `error: bad params: <field>: ...` line names."""
    line = _one_line(err)
    assert line.startswith(PREFIX), line
    return line[len(PREFIX):].split(": ", 1)[0]


def _refused(data, commands=("check-params", "prepare")) -> list[str]:
    """Write `data` as params.yaml in a fresh working folder, run each command on it there, and
    return the fields named; each must exit 2 without touching the folder."""
    fields = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        Path("params.yaml").write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
        before = _listing(Path("."))
        for command in commands:
            code, err = _run_cli([command, "--params", "params.yaml"])
            assert code == 2, f"{command}: exit {code}, stderr {err!r}"
            fields.append(_field(err))
            assert _listing(Path(".")) == before, f"{command} wrote into the working folder"
    return fields


def _dotted(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


PAIRS = {"beta_max": "beta_min", "sigma_max": "sigma_min"}  # checked as 0 < low < high, named low


def _names_for(path: tuple) -> set[str]:
    """What may name a mutation at `path`: the path itself, the list it is an element of, the
    NFE-sweep entry it sits in (an entry is checked as one sampler setting per point), or for
    the upper end of an ordered pair (beta_min < beta_max), the pair's check."""
    name = _dotted(path)
    names = {name, re.sub(r"\[\d+\]$", "", name)}
    entry = re.match(r"evaluate\.nfe_sweep\[\d+\]", name)
    if path[-1] in PAIRS and path[0] in ("ddpm", "sde"):
        names.add(_dotted(path[:-1] + (PAIRS[path[-1]],)))
    return names | ({entry.group(0)} if entry else set())


def _at(tree, path: tuple):
    for part in path:
        tree = tree[part]
    return tree


def _with(path: tuple, value) -> dict:
    """A deep copy of the repo's params with the value at `path` replaced."""
    data = copy.deepcopy(REPO)
    _at(data, path[:-1])[path[-1]] = value
    return data


def _paths(tree, path: tuple = ()):
    """Every path into the params tree (inner nodes included), as tuples of keys and indices."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for key, value in items:
        yield path + (key,)
        yield from _paths(value, path + (key,))


def _known_keys(cls=Params) -> set[str]:
    """Every field name of the params dataclasses, and every sampler setting."""
    keys = set()
    for name, hint in typing.get_type_hints(cls).items():
        keys.add(name)
        if dataclasses.is_dataclass(hint):
            keys |= _known_keys(hint)
    return keys | {key for spec in SAMPLERS.values() for key in spec.settings} | {"name", "frameworks"}


PATHS = list(_paths(REPO))
NUMBERS = [p for p in PATHS if type(_at(REPO, p)) in (int, float)]
MAPPINGS = [()] + [p for p in PATHS if isinstance(_at(REPO, p), dict) and p[-1] != "recipes"]  # recipes: open
KNOWN = _known_keys()
TEXT = st.text(string.ascii_letters + string.digits + " _-.:/", max_size=12)


def _sampler_setting_is_float(path: tuple) -> bool | None:
    """For a path inside a sampler mapping (a section's, a recipe's, an NFE-sweep entry's):
    whether its setting takes floats; None for paths outside one."""
    for depth in range(len(path) - 1, 0, -1):
        node = _at(REPO, path[:depth])
        if isinstance(node, dict) and node.get("name") in SAMPLERS:
            return isinstance(SAMPLERS[node["name"]].settings.get(path[depth]), float)
    return None


def _float_field(path: tuple) -> bool:
    """Whether the field at `path` takes floats (YAML writes 1 for a float field's 1.0, and
    an int is a float's valid value), from the sampler table or the params dataclasses."""
    in_sampler = _sampler_setting_is_float(path)
    if in_sampler is not None:
        return in_sampler
    cls, parts = Params, list(path)
    while parts:
        part = parts.pop(0)
        if part == "recipes":  # a recipe holds its section's fields
            parts.pop(0)
            continue
        hint = typing.get_type_hints(cls)[part]
        hint = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
        if not dataclasses.is_dataclass(hint):
            return hint is float
        cls = hint
    return False


def _kind(path: tuple) -> str:
    value = _at(REPO, path)
    if type(value) is int and _float_field(path):
        return "float"
    return "none" if value is None else type(value).__name__


def _values_of_another_type(path: tuple):
    """Values no field of the kind at `path` accepts: ints stand for floats, so a float never
    gets one; a swept list of an NFE-sweep entry takes a single value, so it never gets an int;
    None is valid for optional scalars, so only containers get it; a field that is None may be
    an optional number or string, so it gets neither (nor an int, which stands for a float)."""
    current = _kind(path)
    swept = len(path) == 4 and path[:2] == ("evaluate", "nfe_sweep") and path[3] != "frameworks"
    strategies = {"bool": st.booleans(), "int": st.integers(-10**6, 10**6),
                  "float": st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: not v.is_integer()),
                  "str": TEXT, "list": st.lists(st.integers(0, 9), max_size=3),
                  "dict": st.dictionaries(st.sampled_from("abc"), st.integers(0, 9), max_size=2),
                  "none": st.none()}
    refused = {current, "none"} | ({"int"} if current == "float" or swept else set())
    if current in ("dict", "list", "none"):
        refused = {current} | ({"int"} if swept else set()) | ({"str", "float", "int"} if current == "none" else set())
    return st.one_of([strategies[k] for k in strategies if k not in refused])


@st.composite
def wrong_types(draw):
    path = draw(st.sampled_from(PATHS))
    return _with(path, draw(_values_of_another_type(path))), path


@st.composite
def out_of_range(draw):
    """A negative number, NaN or an infinity where a number is (p_mean, a mean, only the latter two)."""
    path = draw(st.sampled_from(NUMBERS))
    if isinstance(_at(REPO, path), int):
        value = draw(st.integers(-10**9, -1))
    else:
        bad = [st.just(math.nan), st.just(math.inf), st.just(-math.inf)]
        if path[-1] != "p_mean":
            bad.append(st.floats(-1e9, -1e-12))
        value = draw(st.one_of(bad))
    return _with(path, value), path


@st.composite
def unknown_keys(draw):
    path = draw(st.sampled_from(MAPPINGS))
    key = draw(st.text(string.ascii_lowercase + "_", min_size=1, max_size=10).filter(lambda k: k not in KNOWN))
    data = copy.deepcopy(REPO)
    _at(data, path)[key] = draw(st.one_of(st.integers(), TEXT, st.booleans(), st.none()))
    return data, path + (key,)


# ---------------------------------------------------------------- params: hypothesis

@FAST
@given(wrong_types())
def test_a_value_of_another_type_anywhere_is_named(mutation):
    data, path = mutation
    for field in _refused(data):
        assert field in _names_for(path), f"mutated {_dotted(path)}, message names {field}"


@FAST
@given(out_of_range())
def test_an_out_of_range_number_anywhere_is_named(mutation):
    data, path = mutation
    for field in _refused(data):
        assert field in _names_for(path), f"mutated {_dotted(path)}, message names {field}"


@settings(max_examples=15, deadline=None)
@given(unknown_keys())
def test_an_unknown_key_at_any_level_is_named(mutation):
    data, path = mutation
    for field in _refused(data):
        assert field in _names_for(path), f"added {_dotted(path)}, message names {field}"


def _pair(draw, section: str, low: str, high: str, top: float) -> tuple[dict, set[str]]:
    """`low` >= `high` in one section: the ordered pair is contradicted."""
    data = copy.deepcopy(REPO)
    high_value = draw(st.floats(0.01, top))
    data[section].update({high: high_value, low: draw(st.floats(high_value, 4 * top))})
    return data, {f"{section}.{low}", f"{section}.{high}"}


@st.composite
def contradictions(draw):
    """params whose fields each pass alone but contradict each other, and the fields involved."""
    case = draw(st.sampled_from(["ddpm_beta", "sde_beta", "sde_sigma", "ncsn_sigma", "recipe_beta",
                                 "unknown_framework", "unknown_recipe", "twice", "ddim_steps",
                                 "batch_split", "digits_test_size", "sweep_recipe", "sampler_process",
                                 "unet_levels", "vector_floor", "pr_k"]))
    data = copy.deepcopy(REPO)
    runs = data["train"]["frameworks"]
    if case == "ddpm_beta":
        return _pair(draw, "ddpm", "beta_min", "beta_max", 19.0)
    if case == "sde_beta":
        return _pair(draw, "sde", "beta_min", "beta_max", 19.0)
    if case == "sde_sigma":
        return _pair(draw, "sde", "sigma_min", "sigma_max", 50.0)
    if case == "ncsn_sigma":
        return _pair(draw, "ncsn", "sigma_min", "sigma_max", 50.0)
    if case == "recipe_beta":  # a recipe's value against the section's
        data["ddpm"]["recipes"]["edm"]["beta_min"] = draw(st.floats(20.0, 1e3))
        return data, {"ddpm.recipes.edm.beta_min"}
    if case == "unknown_framework":
        name = draw(st.text(string.ascii_lowercase, min_size=1, max_size=8).filter(lambda k: k not in FRAMEWORKS))
        runs.insert(draw(st.integers(0, len(runs))), name)
        return data, {"train.frameworks"}
    if case == "unknown_recipe":
        framework = draw(st.sampled_from(FRAMEWORKS))
        recipe = draw(st.text(string.ascii_lowercase, min_size=1, max_size=8).filter(
            lambda r: r not in REPO[framework]["recipes"]))
        runs.insert(draw(st.integers(0, len(runs))), f"{framework}-{recipe}")
        return data, {"train.frameworks"}
    if case == "twice":
        runs.insert(draw(st.integers(0, len(runs))), draw(st.sampled_from(list(runs))))
        return data, {"train.frameworks"}
    if case == "ddim_steps":  # more DDIM steps than the chain has
        n = draw(st.integers(21, 300))
        data["ddpm"].update(N=n, sampler={"name": "ddim", "steps": draw(st.integers(n + 1, 5000))})
        data["train"]["frameworks"], data["evaluate"]["nfe_sweep"] = ["ddpm"], []
        return data, {"ddpm.sampler.steps", "ddpm.N"}
    if case == "batch_split":  # fewer examples a step than Ray Train workers
        workers = draw(st.integers(2, 64))
        data["data"]["source"] = "toy:moons"
        data["ray"]["num_workers"] = workers
        data["vector"]["batch_size"] = draw(st.integers(1, workers - 1))
        return data, {"vector.batch_size", "ray.num_workers"}
    if case == "digits_test_size":
        data["data"]["test_size"] = draw(st.integers(DIGITS_SIZE, 10**6))
        return data, {"data.test_size"}
    if case == "unet_levels":  # digits are 8×8: at most 4 U-Net levels
        data["image"]["network"]["mults"] = draw(st.lists(st.integers(1, 4), min_size=5, max_size=7))
        return data, {"image.network.mults"}
    if case == "vector_floor":  # evaluate floors n samples with train subsets of n
        data["data"].update(source="toy:gmm8", toy_train_size=draw(st.integers(1, 999)), toy_test_size=1000)
        data["vector"]["num_samples"] = draw(st.integers(1000, 10**6))
        return data, {"vector.num_samples", "data.toy_train_size"}
    if case == "pr_k":  # digits hold out 500 images
        data["evaluate"]["pr_k"] = draw(st.integers(REPO["data"]["test_size"], 10**6))
        return data, {"evaluate.pr_k"}
    if case == "sweep_recipe":
        entry = draw(st.integers(0, len(data["evaluate"]["nfe_sweep"]) - 1))
        data["evaluate"]["nfe_sweep"][entry]["frameworks"] = ["ddpm-nosuch"]
        return data, {f"evaluate.nfe_sweep[{entry}].frameworks"}
    data["sde"].update(process="ve", sampler={"name": draw(st.sampled_from(["ddim", "heun", "ancestral"]))})
    return data, {"sde.sampler.name", "sde.process"}


@settings(max_examples=20, deadline=None)
@given(contradictions())
def test_a_cross_field_contradiction_names_a_field_involved(case):
    data, involved = case
    for field in _refused(data):
        assert field in involved, f"expected one of {involved}, message names {field}"


# ---------------------------------------------------------------- params: the data source

@pytest.mark.parametrize("source, says", [
    ("toy:nope", "unknown toy 'nope'"),
    ("toy:", "unknown data source"),
    ("cifar10", "unknown data source"),
    ("digits:8x8", "unknown data source"),
    ("folder:", "unknown data source"),
    ("folder:no/such/folder", "image folder not found: no/such/folder"),
    ("npz:no/such.npz", "npz file not found: no/such.npz"),
    ("npz:.", "npz file is not a file"),
])
def test_check_params_refuses_a_bad_data_source(source, says):
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        Path("params.yaml").write_text(yaml.safe_dump({**REPO, "data": {**REPO["data"], "source": source}}))
        for command in ("check-params", "prepare"):
            code, err = _run_cli([command, "--params", "params.yaml"])
            assert code == 2 and _field(err) == "data.source" and says in err, err
            assert "digits, folder:<path>, npz:<path>" in err or "not found" in err or "not a file" in err
        assert sorted(p.name for p in Path(".").iterdir()) == ["params.yaml"]


def test_the_digits_the_edge_assumes_are_the_digits_loaded():
    """check-params sizes digits without loading it: the constants must be what loads."""
    x, y = load_source("digits", 0, seed=0)
    assert x.shape == (DIGITS_SIZE, *DIGITS_SHAPE) and len(y) == DIGITS_SIZE


def test_the_source_path_is_checked_where_the_stages_run_not_on_every_parse():
    """A registered model re-parses its params on machines without its training data."""
    params = parse_params({**REPO, "data": {**REPO["data"], "source": "folder:/no/such/folder"}})
    assert params.data.source == "folder:/no/such/folder"


def test_a_folder_that_is_not_a_shard_folder_is_refused_as_data_out_dir(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with contextlib.chdir(tmp_path):
        Path("params.yaml").write_text(yaml.safe_dump({**REPO, "data": {**REPO["data"], "out_dir": "mine"}}))
        code, err = _run_cli(["check-params", "--params", "params.yaml"])
    assert code == 2 and _field(err) == "data.out_dir" and "holds no manifest.parquet" in err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_a_missing_inception_weights_file_is_refused_at_the_edge(tmp_path):
    with contextlib.chdir(tmp_path):
        Path("params.yaml").write_text(yaml.safe_dump(
            {**REPO, "evaluate": {**REPO["evaluate"], "inception_weights": "pt_inception.pth"}}))
        code, err = _run_cli(["check-params", "--params", "params.yaml"])
    assert code == 2 and _field(err) == "evaluate.inception_weights" and "pt_inception.pth" in err


@pytest.mark.parametrize("path, value, field", [
    (("ddpm", "sampler"), {"name": "ddim", "steps": 50, "spacing": "cosine"}, "ddpm.sampler.spacing"),
    (("ddpm", "sampler"), {"name": "ddim", "steps": 50, "eta": 1.5}, "ddpm.sampler.eta"),
    (("ddpm", "sampler"), {"name": "heun", "steps": 35, "rho": 0.0}, "ddpm.sampler.rho"),
    (("ddpm", "sampler"), {"name": {"a": 1}}, "ddpm.sampler.name"),
    (("ncsn", "sampler"), {"name": "langevin", "step_size": math.inf}, "ncsn.sampler.step_size"),
    (("image", "lr"), math.inf, "image.lr"),
    (("vector", "p_mean"), math.nan, "vector.p_mean"),
    (("sample", "seed"), 2**40, "sample.seed"),
    (("data", "seed"), -1, "data.seed"),
    (("sde", "recipes", "edm", "sigma_max"), math.inf, "sde.recipes.edm.sigma_max"),
])
def test_values_the_stages_refused_late_are_refused_at_the_edge(path, value, field):
    """Each of these passed check-params before and stopped a stage (or spoiled its numbers) later."""
    data = _with(path, value)
    data["train"]["frameworks"] = ["ddpm", "ncsn", "sde-edm"]
    assert _refused(data, ("check-params",)) == [field]


# ---------------------------------------------------------------- params: malformed YAML

@pytest.mark.parametrize("text, says", [
    ("", "params file is empty"),
    ("- data\n- train\n", "is a list, not a mapping"),
    ("just words\n", "is a str, not a mapping"),
    ("data: {source: digits\n", "not valid YAML (line"),
    ("data:\n  seed: 0\n    test_size: 5\n", "not valid YAML (line"),
    ("data:\n\tseed: 0\n", "not valid YAML (line"),
    ("data: {seed: 1}\ndata: {seed: 2}\n", "key 'data' is written twice (first on line 1)"),
    ("train: {frameworks: [ddpm]\n", "not valid YAML (line"),
])
def test_malformed_yaml_names_the_file(text, says):
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        Path("params.yaml").write_text(text)
        for command in ("check-params", "prepare"):
            code, err = _run_cli([command, "--params", "params.yaml"])
            line = _one_line(err)
            assert code == 2 and line.startswith(f"{PREFIX}params.yaml: ") and says in line, line
        assert sorted(p.name for p in Path(".").iterdir()) == ["params.yaml"]


def test_unreadable_params_name_the_file(tmp_path):
    (tmp_path / "params.yaml").write_bytes(b"data: {source: \xff\xfe}\n")
    code, err = _run_cli(["check-params", "--params", str(tmp_path / "params.yaml")])
    assert code == 2 and "params.yaml: not UTF-8 text" in _one_line(err)
    code, err = _run_cli(["check-params", "--params", str(tmp_path)])
    assert code == 2 and "params file not found (it is a folder)" in _one_line(err)


@pytest.mark.parametrize("text, field", [
    ("1: {}\n", "1"),
    ("data: {1: x, seed: 0}\n", "data.1"),
    ("ddpm: {sampler: {name: ddim, null: 3}}\n", "ddpm.sampler.None"),
])
def test_non_string_keys_are_named(text, field):
    assert _refused(text) == [field, field]


# ---------------------------------------------------------------- malformed command lines

@pytest.mark.parametrize("argv, says", [
    (["nosuch"], "invalid choice: 'nosuch'"),
    (["train"], "the following arguments are required: --framework"),
    (["sample", "--params", "params.yaml"], "the following arguments are required: --framework"),
    (["prepare", "--wait", "abc"], "argument --wait: invalid seconds value: 'abc'"),
    (["check-params", "--bogus"], "unrecognized arguments: --bogus"),
    ([], "the following arguments are required: command"),
])
def test_malformed_options_exit_2_with_argparse_s_message(argv, says, tmp_path):
    with contextlib.chdir(tmp_path):
        code, err = _run_cli(argv)
    assert code == 2 and says in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command, framework", [("train", "gan"), ("sample", "ddpm-nosuch"),
                                                ("evaluate", "ddpm"), ("register", "ncsn")])
def test_a_framework_not_in_train_frameworks_exits_2_naming_it(command, framework, tmp_path, monkeypatch):
    for variable in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "PREFECT_API_URL"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump(REPO))
    code, err = _run_cli([command, "--framework", framework, "--params", "params.yaml"])
    assert code == 2 and _field(err) == "train.frameworks" and repr(framework) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # the lock is gone


# ---------------------------------------------------------------- bad shards

@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    """3 train shards and 1 test shard of labelled 1×4×4 images."""
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-1, 1, (40, 1, 4, 4)).astype(np.float32), rng.integers(0, 10, 40)
    out = tmp_path_factory.mktemp("bad_shards") / "shards"
    write_shards(out, {"train": (x[:30], y[:30]), "test": (x[30:], y[30:])}, 10, {"source": "unit"})
    return out


@contextlib.contextmanager
def _copy(folder: Path):
    with tempfile.TemporaryDirectory() as tmp:
        copy_dir = Path(tmp) / folder.name
        shutil.copytree(folder, copy_dir)
        yield copy_dir


def _readers(folder: Path, shard: str):
    """Every way a stage reads a shard: verify, a whole split, one shard."""
    split = shard.split("-")[0]
    return [lambda: verify_shards(folder), lambda: load_split(folder, split), lambda: read_shard(folder, shard)]


@FAST
@given(shard=st.sampled_from(["train-000000.tar", "train-000002.tar", "test-000000.tar"]),
       where=st.floats(0, 1, exclude_max=True), flip=st.integers(1, 255))
def test_a_changed_byte_in_a_shard_is_named(shard_dir, shard, where, flip):
    with _copy(shard_dir) as folder:
        data = bytearray((folder / shard).read_bytes())
        data[int(where * len(data))] ^= flip
        (folder / shard).write_bytes(bytes(data))
        for read in _readers(folder, shard):
            with pytest.raises(ShardChecksumError, match=rf"{shard} fails its sha256 check.*bytes changed"):
                read()


@FAST
@given(shard=st.sampled_from(["train-000001.tar", "test-000000.tar"]), keep=st.floats(0, 1, exclude_max=True))
def test_a_truncated_shard_is_named(shard_dir, shard, keep):
    with _copy(shard_dir) as folder:
        data = (folder / shard).read_bytes()
        (folder / shard).write_bytes(data[:int(keep * len(data))])
        for read in _readers(folder, shard):
            with pytest.raises(ShardChecksumError, match=rf"{shard} fails its check.*bytes.*\(truncated\)"):
                read()


def test_a_missing_shard_or_manifest_is_named(shard_dir):
    with _copy(shard_dir) as folder:
        (folder / "train-000001.tar").unlink()
        with pytest.raises(ShardChecksumError, match="train-000001.tar is missing"):
            load_split(folder, "train")
        load_split(folder, "test")  # the other split is whole
        (folder / MANIFEST_NAME).unlink()
        with pytest.raises(FileNotFoundError, match=f"shard manifest not found: .*{MANIFEST_NAME}"):
            load_split(folder, "test")


@pytest.mark.parametrize("damage, says", [
    (lambda b: b[: len(b) // 2], "is not a readable parquet file"),
    (lambda b: b[:-9], "is not a readable parquet file"),
    (lambda b: b"PAR1" + b"\0" * 40 + b"PAR1", "is not a readable parquet file"),
    (lambda b: b"", "is not a readable parquet file"),
])
def test_a_damaged_manifest_is_named(shard_dir, damage, says):
    with _copy(shard_dir) as folder:
        manifest = folder / MANIFEST_NAME
        manifest.write_bytes(damage(manifest.read_bytes()))
        for read in (lambda: read_manifest(folder), lambda: load_split(folder, "train")):
            with pytest.raises(ValueError, match=f"manifest .*{MANIFEST_NAME} {says}"):
                read()


@pytest.mark.parametrize("rows, meta, says", [
    (lambda r: [{**r[0], "shard": "../../etc/passwd"}], None, "is not a shard file name"),
    (lambda r: [{**r[0], "sha256": "abc"}], None, "has no sha256 of 64 hex digits"),
    (lambda r: [{**r[0], "num_samples": 0}], None, "has no positive num_samples"),
    (None, b"{not json", "metadata is not JSON"),
    (None, b'{"schema_version": 2}', "metadata lacks"),
    (None, b'{"schema_version": 1}', "written before the val split.*run `diffusion prepare` again"),
])
def test_a_manifest_with_bad_rows_or_metadata_is_named(shard_dir, rows, meta, says):
    import pyarrow as pa
    import pyarrow.parquet as pq

    with _copy(shard_dir) as folder:
        table = pq.read_table(folder / MANIFEST_NAME)
        if rows is not None:
            table = pa.Table.from_pylist(rows(table.to_pylist()), schema=table.schema)
        if meta is not None:
            table = table.replace_schema_metadata({b"dataset": meta})
        pq.write_table(table, folder / MANIFEST_NAME)
        with pytest.raises(ValueError, match=f"manifest .*{MANIFEST_NAME}.*{says}"):
            load_split(folder, "train")


# ---------------------------------------------------------------- bad sources: nothing written

def _prepared(tmp: Path, source: str, **data) -> Params:
    """params for a small prepare in `tmp` (one Ray worker, batches of 8)."""
    values = copy.deepcopy(REPO)
    values["data"].update(source=source, out_dir=str(tmp / "shards"), test_size=4, val_size=4, classifier_size=4,
                          toy_train_size=60, toy_val_size=20, toy_test_size=20, samples_per_shard=16, **data)
    values["ray"]["num_workers"] = 1
    values["vector"]["batch_size"] = values["image"]["batch_size"] = 8
    values["train"]["frameworks"], values["evaluate"]["nfe_sweep"] = ["ddpm"], []
    return parse_params(values)


@pytest.fixture(scope="module")
def previous(tmp_path_factory):
    """A working folder whose data/shards holds a finished earlier prepare."""
    tmp = tmp_path_factory.mktemp("previous")
    with contextlib.redirect_stdout(io.StringIO()):
        prepare(_prepared(tmp, "toy:moons"))
    return tmp


def _assert_untouched(previous: Path, before: dict) -> None:
    assert _listing(previous / "shards") == before
    assert sorted(p.name for p in previous.iterdir() if p.name.startswith(".")) == []  # no staging left
    verify_shards(previous / "shards")


def _refuse_source(previous: Path, source: str, says: str, error=ValueError) -> None:
    """prepare refuses `source` with a message naming `says`, leaving the previous shards whole."""
    before = _listing(previous / "shards")
    with pytest.raises(error, match=says), contextlib.redirect_stdout(io.StringIO()):
        prepare(_prepared(previous, source))
    _assert_untouched(previous, before)


def _save_npz(folder: Path, name: str = "data.npz", **arrays) -> str:
    path = folder / name
    np.savez(path, **arrays)
    return str(path)


@settings(max_examples=20, deadline=None)
@given(shape=st.sampled_from([(12, 2), (12, 5), (12, 4, 4), (12, 1, 4, 4), (12, 4, 4, 3)]),
       spots=st.lists(st.integers(0, 10**6), min_size=1, max_size=4),
       bad=st.sampled_from([math.nan, math.inf, -math.inf, 1e39]))
def test_non_finite_values_in_an_npz_are_named_with_their_place(previous, shape, spots, bad):
    x = np.random.default_rng(0).uniform(-1, 1, shape)
    for spot in spots:
        x.flat[spot % x.size] = bad
    with np.errstate(over="ignore"):
        first = tuple(int(i) for i in np.argwhere(~np.isfinite(x.astype(np.float32)))[0])
    with tempfile.TemporaryDirectory() as tmp:
        path = _save_npz(Path(tmp), x=x)
        _refuse_source(previous, f"npz:{path}",
                       rf"npz file {re.escape(path)}: key 'x' holds \d+ non-finite .* first x\[{', '.join(map(str, first))}\]")


@settings(max_examples=20, deadline=None)
@given(shape=st.sampled_from([(12, 4, 4), (12, 1, 4, 4), (12, 4, 4, 3)]),
       spot=st.integers(0, 10**6), value=st.one_of(st.floats(1.01, 1e30), st.floats(-1e30, -1.01)))
def test_out_of_range_float_images_in_an_npz_are_named_with_their_place(previous, shape, spot, value):
    x = np.random.default_rng(1).uniform(-1, 1, shape).astype(np.float32)
    x.flat[spot % x.size] = value
    place = ", ".join(map(str, np.unravel_index(spot % x.size, shape)))
    with tempfile.TemporaryDirectory() as tmp:
        path = _save_npz(Path(tmp), x=x)
        _refuse_source(previous, f"npz:{path}",
                       rf"npz file {re.escape(path)}: float images must lie in \[-1, 1\].*first x\[{place}\]")


def _crc_damaged(folder: Path) -> str:
    """A valid zip whose member 'x.npy' fails its CRC."""
    path = Path(_save_npz(folder, "crc.npz", x=np.arange(64, dtype=np.float32).reshape(32, 2)))
    data = bytearray(path.read_bytes())
    data[data.index(b"x.npy") + 5 + 128 + 20] ^= 0xFF  # a byte of the array's data
    path.write_bytes(bytes(data))
    return str(path)


NPZ_CASES = {  # name -> (the arrays written, what the message says)
    "wrong key": ({"images": np.zeros((12, 2), np.float32)}, "has no key 'x'"),
    "1-D": ({"x": np.zeros(12, np.float32)}, r"must hold vectors N×D or images .* got shape \(12,\)"),
    "5-D": ({"x": np.zeros((12, 1, 2, 2, 2), np.float32)}, r"got shape \(12, 1, 2, 2, 2\)"),
    "no channel axis": ({"x": np.zeros((12, 5, 6, 7), np.float32)}, "cannot tell the channel axis"),
    "empty": ({"x": np.zeros((0, 2), np.float32)}, r"key 'x' is empty \(shape \(0, 2\)\)"),
    "empty rows": ({"x": np.zeros((12, 0), np.float32)}, r"key 'x' is empty \(shape \(12, 0\)\)"),
    "scalar": ({"x": np.float32(3.0)}, r"key 'x' is empty \(shape \(\)\)"),
    "int64": ({"x": np.zeros((12, 2), np.int64)}, "must be uint8 or float, got int64"),
    "object": ({"x": np.array([{"a": 1}] * 12, dtype=object)}, "cannot read key 'x'"),
    "short labels": ({"x": np.zeros((12, 2), np.float32), "y": np.arange(11)}, "key 'y' must be 12 integer labels"),
    "float labels": ({"x": np.zeros((12, 2), np.float32), "y": np.zeros(12)}, "key 'y' must be 12 integer labels"),
    "negative labels": ({"x": np.zeros((12, 2), np.float32), "y": np.arange(12) - 3}, r"negative labels, first y\[0\] = -3"),
}


@pytest.mark.parametrize("case", sorted(NPZ_CASES))
def test_a_malformed_npz_is_named(previous, case, tmp_path):
    arrays, says = NPZ_CASES[case]
    path = _save_npz(tmp_path, **arrays)
    _refuse_source(previous, f"npz:{path}", rf"{re.escape(path)}.*{says}")


def test_a_damaged_or_foreign_npz_is_named(previous, tmp_path):
    _refuse_source(previous, f"npz:{_crc_damaged(tmp_path)}", r"crc.npz: cannot read key 'x'")
    np.save(tmp_path / "plain.npy", np.zeros((12, 2), np.float32))
    _refuse_source(previous, f"npz:{tmp_path / 'plain.npy'}", r"plain.npy is not an .npz archive")
    with zipfile.ZipFile(tmp_path / "foreign.npz", "w") as archive:
        archive.writestr("x.npy", b"not an array")
    _refuse_source(previous, f"npz:{tmp_path / 'foreign.npz'}", r"foreign.npz: cannot read key 'x'")


def _png(path: Path, height: int, width: int, channels: int = 3) -> None:
    from PIL import Image

    pixels = np.random.default_rng(height * width).integers(0, 256, (height, width, channels), dtype=np.uint8)
    Image.fromarray(pixels if channels > 1 else pixels[..., 0]).save(path)


@pytest.mark.parametrize("case", ["mixed sizes", "mixed sizes in classes", "not an image",
                                  "truncated", "empty class"])
def test_a_bad_image_folder_is_named(previous, case, tmp_path):
    folder = tmp_path / "images"
    if case == "mixed sizes in classes":
        for label, size in (("cat", 6), ("dog", 7)):
            (folder / label).mkdir(parents=True)
            for i in range(3):
                _png(folder / label / f"{i}.png", size, 6, channels=1)
        says = r"dog/0.png is 7×6 pixels .* but .*cat/0.png is 6×6: all images in folder .* must have the same size"
    elif case == "empty class":
        (folder / "cat").mkdir(parents=True)
        (folder / "dog").mkdir()
        _png(folder / "cat" / "0.png", 6, 6)
        says = r"class folder .*dog holds no PNG/JPEG images"
    else:
        folder.mkdir()
        for i in range(4):
            _png(folder / f"{i}.png", 6, 6)
        odd = folder / "odd.png"
        if case == "mixed sizes":
            _png(odd, 6, 5)
            says = r"image .*odd.png is 6×5 pixels \(height×width\), but .*0.png is 6×6"
        elif case == "not an image":
            odd.write_bytes(b"\x89PNG\r\n\x1a\n but not really")
            says = r"cannot read image .*odd.png"
        else:
            _png(odd, 6, 6)
            odd.write_bytes(odd.read_bytes()[:60])
            says = r"cannot read image .*odd.png"
    _refuse_source(previous, f"folder:{folder}", says)


def test_too_few_shards_for_the_workers_are_refused_before_writing(previous, tmp_path):
    """Sizes only the data fixes: checked by prepare, before it writes, naming the field."""
    path = _save_npz(tmp_path, x=np.zeros((30, 2), np.float32))
    before = _listing(previous / "shards")
    values = copy.deepcopy(REPO)
    values["data"].update(source=f"npz:{path}", out_dir=str(previous / "shards"), test_size=3, val_size=1,
                          samples_per_shard=16)
    values["ray"]["num_workers"], values["train"]["loader_workers"] = 2, 2
    with contextlib.chdir(tmp_path):
        Path("params.yaml").write_text(yaml.safe_dump(values))
        assert _run_cli(["check-params", "--params", "params.yaml"])[0] == 0  # the data's size is unknown there
        code, err = _run_cli(["prepare", "--params", "params.yaml"])
        assert code == 2 and _field(err) == "data.samples_per_shard" and "2 shards" in err
        values["data"]["samples_per_shard"] = 8
        values["vector"]["batch_size"] = 40
        Path("params.yaml").write_text(yaml.safe_dump(values))
        code, err = _run_cli(["prepare", "--params", "params.yaml"])
        assert code == 2 and _field(err) == "vector.batch_size" and "less than one batch of 20" in err
    _assert_untouched(previous, before)


@pytest.mark.parametrize("x, change, field, says", [
    (np.zeros((30, 1, 6, 6), np.uint8), {"image": {"network": {"base": 8, "mults": [1, 2, 2], "blocks": 1,
                                                              "emb_dim": 8}}},
     "image.network.mults", "divisible by 4; these images are 6×6"),
    (np.zeros((30, 2), np.float32), {"data": {"test_size": 20}, "vector": {"num_samples": 26}},
     "vector.num_samples", "the train split holds 8 examples"),
])
def test_what_only_the_data_fixes_is_refused_by_prepare_before_writing(previous, tmp_path, x, change, field, says):
    """Checks that need the data's shape or size: the train and evaluate stages would refuse
    these late; prepare, knowing the data, refuses them before it writes (exit 2)."""
    path = _save_npz(tmp_path, x=x)
    before = _listing(previous / "shards")
    values = copy.deepcopy(REPO)
    values["data"].update(source=f"npz:{path}", out_dir=str(previous / "shards"), test_size=6, val_size=2,
                          classifier_size=4, samples_per_shard=8)  # images: the extractor's split too
    values["train"]["frameworks"], values["evaluate"]["nfe_sweep"] = ["ddpm", "ncsn"], []
    for section, settings_ in change.items():
        values[section].update(settings_)
    with contextlib.chdir(tmp_path):
        Path("params.yaml").write_text(yaml.safe_dump(values))
        code, err = _run_cli(["prepare", "--params", "params.yaml"])
    assert code == 2 and _field(err) == field and says in err, err
    _assert_untouched(previous, before)


def test_a_bad_source_through_the_cli_exits_1_naming_the_file(previous, tmp_path):
    x = np.zeros((12, 2), np.float32)
    x[3, 1] = np.nan
    path = _save_npz(tmp_path, x=x)
    before = _listing(previous / "shards")
    values = copy.deepcopy(REPO)
    values["data"].update(source=f"npz:{path}", out_dir=str(previous / "shards"), test_size=4)
    with contextlib.chdir(tmp_path):
        Path("params.yaml").write_text(yaml.safe_dump(values))
        code, err = _run_cli(["prepare", "--params", "params.yaml"])
    line = _one_line(err)
    assert code == 1 and line.startswith(f"error: npz file {path}: key 'x' holds 1 non-finite") and "x[3, 1]" in line
    _assert_untouched(previous, before)

