"""params.yaml, validated once at the edge: the `Params` tree and the functions that make it.

Every section is a dataclass (sections.py; ddpm.py, ncsn.py, sde.py for the frameworks);
`parse_params` walks a mapping against the type hints (schema.py), so an unknown key, a wrong
type or an impossible value stops with one `ConfigError` naming the field (`train.lr`, say)
before any stage does work; the checks across sections follow (cross.py). `load_params` reads
the file (loader.py) and also checks what the params name on this machine (`check_local_paths`:
the data source's folder or file, say), which a plain `parse_params` leaves alone: a registered
model re-parses its params elsewhere. `params_with_sampler` gives the params of a run drawn with
another sampler (the NFE sweep, a registered version asked for one).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from flows.config.choices import TrainingChoices
from flows.config.choices import resolve as resolve_choices
from flows.config.cross import check_data, check_params
from flows.config.ddpm import DDPMParams
from flows.config.loader import check_local_paths, read_params
from flows.config.ncsn import NCSNParams
from flows.config.recipes import run_section_name, run_seed, split_run, with_recipe
from flows.config.schema import build, check_keys
from flows.config.sde import SDEParams
from flows.config.sections import (
    ClassifierParams,
    CompareParams,
    DataParams,
    EvaluateParams,
    ProfileParams,
    RayParams,
    SampleParams,
    TrainParams,
)
from flows.config.validation import ConfigError

__all__ = ["ConfigError", "Params", "load_params", "parse_params", "as_dict", "check_local_paths"]


@dataclass(frozen=True)
class Params:
    data: DataParams = field(default_factory=DataParams)
    ray: RayParams = field(default_factory=RayParams)
    classifier: ClassifierParams = field(default_factory=ClassifierParams)
    train: TrainParams = field(default_factory=TrainParams)
    ddpm: DDPMParams = field(default_factory=DDPMParams)
    ncsn: NCSNParams = field(default_factory=NCSNParams)
    sde: SDEParams = field(default_factory=SDEParams)
    vector: ProfileParams = field(default_factory=ProfileParams)
    image: ProfileParams = field(default_factory=ProfileParams)
    sample: SampleParams = field(default_factory=SampleParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    compare: CompareParams = field(default_factory=CompareParams)

    def check(self, name: str) -> None:
        """The checks across sections (cross.py), once every section is built and checked."""
        check_params(self, name)

    def check_data(self, shape, n_train: int, n_references: tuple[int, ...]) -> None:
        """The checks that need the data's shape and split sizes (cross.check_data): prepare
        runs them on the data it read, before writing shards."""
        check_data(self, shape, n_train, n_references)

    def profile(self, kind: str) -> ProfileParams:
        return self.vector if kind == "vector" else self.image

    def train_seed(self, key: str) -> int:
        """The seed run `key` trains at: its '.s<seed>' suffix (a replicate), else train.seed."""
        seed = run_seed(key)[1]
        return self.train.seed if seed is None else seed

    def framework(self, key: str):
        """The params section a run trains and samples with: its framework's section, with the
        run's recipe laid over it (recipes.py); it gives model_parts(profile) and the sampler."""
        framework, recipe = split_run(key)
        section = getattr(self, framework)
        return section if recipe is None else with_recipe(section, recipe, framework)

    def training(self, key: str, kind: str) -> TrainingChoices:
        """Every training choice of run `key` on data of `kind` ("image" | "vector"): its
        recipe's network, conditioning, EMA, optimiser and batch size over the shared defaults
        (choices.py); a ConfigError names the recipe's field."""
        return resolve_choices(self.framework(key), self, kind, run_section_name(key))


def parse_params(data: dict) -> Params:
    check_keys(data)
    return build(Params, data or {}, "")


def load_params(path: str | Path = "params.yaml", profile: str | None = None) -> Params:
    """params.yaml (with a profile laid over it: loader.read_params) read, validated and
    checked against this machine's files; a ConfigError names the file (unreadable, not YAML,
    not a mapping, no such profile) or the dotted field."""
    params = parse_params(read_params(path, profile))
    check_local_paths(params)
    return params


def as_dict(params) -> dict:
    return dataclasses.asdict(params)


def params_with_sampler(params: Params, framework: str, settings: dict,
                        seed: int | None = None) -> Params:
    """params with the framework's sampler (and optionally sample.seed) replaced, validated:
    a bad setting is a ConfigError naming it."""
    data = as_dict(params)
    name, recipe = split_run(framework)
    section = data[name]["recipes"][recipe] if recipe else data[name]  # where the run's sampler is set
    section["sampler"] = dict(settings)
    if seed is not None:
        data["sample"]["seed"] = int(seed)
    return parse_params(data)
