"""params.yaml, validated once at the edge.

Every section is a dataclass; `load_params` walks the YAML against the type hints, so an unknown
key, a wrong type or an impossible value stops with one `ConfigError` naming the field
(`train.lr`, say) before any stage does work.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from diffusion_core.frameworks import FRAMEWORKS
from diffusion_core.training.lr_schedule import LR_SCHEDULES
from flows.config.ddpm import DDPMParams
from flows.config.ncsn import NCSNParams
from flows.config.recipes import check_recipes, split_run, with_recipe
from flows.config.schema import build
from flows.config.sde import SDEParams
from flows.config.sweep import sweep_points
from flows.config.validation import (
    ConfigError,
    check_sampler,
    require,
    require_positive,
)

NONFINITE_POLICIES = ("stop", "skip")

__all__ = ["ConfigError", "Params", "load_params", "parse_params", "as_dict"]


@dataclass(frozen=True)
class DataParams:
    source: str = "digits"  # digits | toy:<name> | folder:<path> | npz:<path>
    seed: int = 0
    test_size: int = 500  # held-out examples of a data set read from disk
    toy_train_size: int = 20000
    toy_test_size: int = 5000
    samples_per_shard: int = 256
    out_dir: str = "data/shards"

    def check(self, name: str) -> None:
        require_positive(self, name, "test_size", "toy_train_size", "toy_test_size", "samples_per_shard")


@dataclass(frozen=True)
class RayParams:
    num_workers: int = 2
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    resources_timeout_s: float = 60.0  # how long to wait for the cluster to offer the workers
    max_failures: int = 2
    storage_path: str = "ray_results"

    def check(self, name: str) -> None:
        require(self.num_workers >= 1, f"{name}.num_workers", "must be >= 1")
        require(self.cpus_per_worker > 0, f"{name}.cpus_per_worker", "must be positive")
        require(self.resources_timeout_s > 0, f"{name}.resources_timeout_s", "must be positive")
        require(self.max_failures >= 0, f"{name}.max_failures", "must be >= 0")


@dataclass(frozen=True)
class NetworkParams:
    """The network of a profile: the residual MLP for vectors, the U-Net for images."""

    width: int = 256  # mlp
    depth: int = 4  # mlp
    base: int = 64  # unet
    mults: list[int] = field(default_factory=lambda: [1, 2])  # unet
    blocks: int = 2  # unet
    emb_dim: int = 128

    def check(self, name: str) -> None:
        require_positive(self, name, "width", "depth", "base", "blocks", "emb_dim")
        require(bool(self.mults) and min(self.mults) > 0, f"{name}.mults", "must be positive integers")


@dataclass(frozen=True)
class ProfileParams:
    """Model, training and sampling settings for one kind of data (vectors or images)."""

    network: NetworkParams = field(default_factory=NetworkParams)
    sigma_data: float = 0.5
    steps: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    num_samples: int = 500
    clip: float | None = 1.0  # images: bound on x0 predictions and samples
    nll_points: int = 500  # held-out examples whose NLL evaluate computes; 0: none
    p_mean: float = -1.2  # the lognormal losses' training noise levels, ln s ~ N(p_mean, p_std^2):
    p_std: float = 1.2  # where the data's detail lives, so set per kind of data (EDM, table 1)

    def check(self, name: str) -> None:
        require_positive(self, name, "sigma_data", "steps", "batch_size", "lr", "num_samples")
        require(self.clip is None or self.clip > 0, f"{name}.clip", "must be positive or null")
        require(self.nll_points >= 0, f"{name}.nll_points", "must be >= 0")
        require(self.p_std > 0, f"{name}.p_std", "must be positive")


@dataclass(frozen=True)
class TrainParams:
    frameworks: list[str] = field(default_factory=lambda: ["ddpm"])
    seed: int = 0
    time_limit_s: float | None = None  # optional safety cap on the loop; a run it stops says so
    nonfinite: str = "stop"  # a non-finite loss or gradient: stop the run there | skip the batch
    nonfinite_limit: int = 10  # skip: at most this many batches, then stop
    grad_clip: float = 1.0
    ema_gamma: float = 7.0
    lr_schedule: str = "cosine"  # constant | cosine: warm-up, then down to zero at the last step
    checkpoint_every: int = 500
    log_every: int = 100
    loader_workers: int = 0
    cache_in_memory: bool = True  # after the first streamed epoch, reshuffle in memory
    out_dir: str = "models"

    def check(self, name: str) -> None:
        for key in self.frameworks:
            require(split_run(key)[0] in FRAMEWORKS, f"{name}.frameworks",
                    f"unknown framework {key!r}; known: {sorted(FRAMEWORKS)}, each optionally "
                    f"with a recipe (ddpm-paper)")
        require(len(set(self.frameworks)) == len(self.frameworks), f"{name}.frameworks",
                f"names a run twice: {self.frameworks}")
        require_positive(self, name, "grad_clip", "ema_gamma", "checkpoint_every", "log_every")
        require(self.time_limit_s is None or self.time_limit_s > 0, f"{name}.time_limit_s",
                "must be positive or null (no cap)")
        require(self.nonfinite in NONFINITE_POLICIES, f"{name}.nonfinite",
                f"must be one of {NONFINITE_POLICIES}, got {self.nonfinite!r}")
        require(self.nonfinite_limit >= 0, f"{name}.nonfinite_limit", "must be >= 0")
        require(self.loader_workers >= 0, f"{name}.loader_workers", "must be >= 0")
        require(self.lr_schedule in LR_SCHEDULES, f"{name}.lr_schedule", f"must be one of {LR_SCHEDULES}")


@dataclass(frozen=True)
class ClassifierParams:
    epochs: int = 30
    seed: int = 0
    out_dir: str = "models/classifier"

    def check(self, name: str) -> None:
        require(self.epochs > 0, f"{name}.epochs", "must be positive")


@dataclass(frozen=True)
class SampleParams:
    seed: int = 1
    batch_size: int = 1000
    samples_per_shard: int = 1000  # also the part one Ray worker draws (the unit of resumption)
    num_workers: int = 2  # Ray actors drawing parts (RAY_ADDRESS points at a cluster)
    cpus_per_worker: float = 1.0  # CPUs per actor, and its torch threads
    out_dir: str = "samples"

    def check(self, name: str) -> None:
        require_positive(self, name, "batch_size", "samples_per_shard", "num_workers", "cpus_per_worker")


@dataclass(frozen=True)
class EvaluateParams:
    swd_projections: int = 256
    seed: int = 0
    num_workers: int = 2  # Ray actors computing per-shard feature statistics
    cpus_per_worker: float = 1.0
    max_pairwise: int = 10000  # samples per split used by KID, precision/recall, memorization
    pr_k: int = 3  # k of the k-NN manifolds (Kynkaanniemi et al. 2019)
    inception_weights: str | None = None  # local FID Inception-v3 file; else $DIFFUSION_INCEPTION_WEIGHTS
    nfe_sweep: list[dict] = field(default_factory=lambda: [{"name": "ddim", "steps": [5, 10, 25, 50]}])
    nfe_sweep_samples: int = 500
    out_dir: str = "metrics"

    def check(self, name: str) -> None:
        require_positive(self, name, "swd_projections", "num_workers", "cpus_per_worker", "max_pairwise",
                         "pr_k", "nfe_sweep_samples")
        for i, entry in enumerate(self.nfe_sweep):
            self._check_sweep_entry(entry, f"{name}.nfe_sweep[{i}]")

    @staticmethod
    def _check_sweep_entry(entry, name: str) -> None:
        """A sampler mapping with at most one list-valued setting (the swept one) and an
        optional `frameworks` list; every point it makes is a valid sampler."""
        require(isinstance(entry, dict), name, "must be a sampler mapping")
        only = entry.get("frameworks", [])
        require(isinstance(only, list) and all(isinstance(k, str) and split_run(k)[0] in FRAMEWORKS
                                               for k in only), f"{name}.frameworks",
                f"must be a list of frameworks {sorted(FRAMEWORKS)} or runs (ddpm-paper), got {only!r}")
        swept = [k for k, v in entry.items() if isinstance(v, list) and k != "frameworks"]
        require(len(swept) <= 1, name, f"sweeps one setting at a time, got lists for {swept}")
        for point in sweep_points([entry]):
            check_sampler(point, name)


@dataclass(frozen=True)
class CompareParams:
    out_dir: str = "reports"  # compare.md, compare.json and the plots

    def check(self, name: str) -> None:
        require(bool(self.out_dir), f"{name}.out_dir", "must name a folder")


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
        """Checks across sections: each framework's recipes, and the runs train.frameworks names."""
        for framework in FRAMEWORKS:
            check_recipes(getattr(self, framework), framework)
        for key in self.train.frameworks:
            framework, recipe = split_run(key)
            known = sorted(getattr(self, framework).recipes)
            require(recipe is None or recipe in known, "train.frameworks",
                    f"{key!r}: {framework} has no recipe {recipe!r}; known: {known}")

    def profile(self, kind: str) -> ProfileParams:
        return self.vector if kind == "vector" else self.image

    def framework(self, key: str):
        """The params section a run trains and samples with: its framework's section, with the
        run's recipe laid over it (recipes.py); it gives model_parts(profile) and the sampler."""
        framework, recipe = split_run(key)
        section = getattr(self, framework)
        return section if recipe is None else with_recipe(section, recipe, framework)


def parse_params(data: dict) -> Params:
    return build(Params, data or {}, "")


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    return parse_params(data)


def as_dict(params) -> dict:
    return dataclasses.asdict(params)
