"""params.yaml on this machine: the file read into a mapping (a key written twice refused), and
what the built params name on this machine's disk checked. `parse_params` needs neither: a
registered model re-parses its params elsewhere, from a mapping, without its training data.

A profile (`--profile NAME|PATH`, profiles/*.yaml: docs/profiles.md) is a short YAML file laid
over the params file before validation. An overlay, not a complete params file: a profile
states only what its paper changes, and every other setting follows params.yaml as it evolves;
the merged params are what every stage uses and what each run records.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from diffusion_core.data.shards import check_replaceable
from diffusion_core.data.sources import check_source
from flows.config.validation import ConfigError, require

PROFILES = Path(__file__).resolve().parents[2] / "profiles"  # the checkout's (an editable install)
REPLACED_WHOLE = ("sampler", "ema")  # as a recipe lays them: their keys mean something only together


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's safe loader, refusing a key written twice in one mapping (safe_load silently
    keeps the last, so a second `data:` section would replace the first)."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    """The safe loader's mapping, after a check that no key of it is written twice."""
    seen: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: the safe loader names it below
            continue
        if first is not None:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is written twice "
                                                    f"(first on line {first})", key_node.start_mark)
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error as one line: where, then what (PyYAML's own text spans several lines)."""
    mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + (problem or str(err))


def _read_yaml(path: Path):
    """The YAML document of the params file; every problem is a ConfigError naming the file."""
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the params file ({err.strerror})") from err
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(err)})") from err


def read_params_file(path: Path) -> dict:
    """The params file's mapping of sections, not yet validated; a ConfigError names the file
    when it is unreadable, not YAML or not a mapping."""
    data = _read_yaml(path)
    if not isinstance(data, dict):
        what = "empty" if data is None else f"a {type(data).__name__}, not a mapping"
        raise ConfigError(f"{path}: the params file is {what}; it must map sections "
                          f"(data:, train:, ...) to their settings")
    return data


def profile_path(profile: str) -> Path:
    """A profile's file: a path to a .yaml file as given, else profiles/<NAME>.yaml."""
    path = Path(profile)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return path
    known = sorted(p.stem for p in PROFILES.glob("*.yaml"))
    require(profile in known, "--profile", f"no profile named {profile!r}; known: {known}, "
            f"or a path to a .yaml file")
    return PROFILES / f"{profile}.yaml"


def overlay(base: dict, over: dict) -> dict:
    """`over` laid over `base`: mappings key by key, recursively (a section, a recipe, a
    network), except `sampler` and `ema`; lists and every other value replaced whole."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key not in REPLACED_WHOLE:
            merged[key] = overlay(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_params(path: str | Path, profile: str | None = None) -> dict:
    """The params file's mapping with the profile, if any, laid over it; not yet validated."""
    data = read_params_file(Path(path))
    return data if profile is None else overlay(data, read_params_file(profile_path(profile)))


def check_local_paths(params) -> None:
    """What the params name on this machine: the data source's folder or file, the shard folder
    prepare replaces, the FID weights file. Run where the stages run (load_params), not on every
    parse: a registered model re-parses its params on machines without its training data."""
    try:
        check_source(params.data.source)
    except FileNotFoundError as err:
        raise ConfigError(f"data.source: {err}") from err
    try:
        check_replaceable(params.data.out_dir)
    except ValueError as err:
        raise ConfigError(f"data.out_dir: {err}") from err
    weights = params.evaluate.inception_weights
    require(weights is None or Path(weights).is_file(), "evaluate.inception_weights",
            f"no such file: {weights} (a local copy of the FID Inception-v3 weights, or null)")
