"""params.yaml, validated once at the edge.

Every section is a dataclass; `load_params` walks the YAML against the type hints, so an unknown
key, a wrong type or an impossible value stops with one `ConfigError` naming the field
(`train.lr`, say) before any stage does work. It also checks what the params name on this
machine (`check_local_paths`: the data source's folder or file, say), which a plain
`parse_params` leaves alone: a registered model re-parses its params elsewhere.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from diffusion_core.data.shards import check_replaceable
from diffusion_core.data.sources import (
    DIGITS_SHAPE,
    DIGITS_SIZE,
    TOY_SHAPE,
    check_source,
    source_kind,
)
from diffusion_core.frameworks import FRAMEWORKS
from diffusion_core.training.lr_schedule import LR_SCHEDULES
from diffusion_core.training.precision import PRECISIONS
from flows.config.ddpm import DDPMParams
from flows.config.ncsn import NCSNParams
from flows.config.choices import TrainingChoices
from flows.config.choices import resolve as resolve_choices
from flows.config.recipes import (
    check_recipes,
    check_run_key,
    run_section_name,
    run_seed,
    split_run,
    with_recipe,
)
from flows.config.ladder import parse_ladder, rungs
from flows.config.schema import build
from flows.config.sde import SDEParams
from flows.config.sweep import sweep_points
from flows.config.validation import (
    ConfigError,
    check_numbers,
    check_sampler,
    require,
    require_positive,
)

NONFINITE_POLICIES = ("stop", "skip")
REFERENCE_SPLITS = ("test", "val")  # what evaluate may score samples against

__all__ = ["ConfigError", "Params", "load_params", "parse_params", "as_dict", "check_local_paths"]


@dataclass(frozen=True)
class DataParams:
    source: str = "digits"  # digits | toy:<name> | folder:<path> | npz:<path>
    seed: int = 0
    test_size: int = 500  # held-out examples of a data set read from disk: the final report's
    val_size: int = 300  # ... the tuning reference (evaluate --split val, the benchmarks)
    classifier_size: int = 300  # ... the FD feature extractor's training set (labelled images only)
    toy_train_size: int = 20000
    toy_val_size: int = 5000
    toy_test_size: int = 5000
    samples_per_shard: int = 256
    out_dir: str = "data/shards"

    def check(self, name: str) -> None:
        """The source's form (its files are checked where the stages run: check_local_paths),
        the sizes, and held-out parts that leave digits something to train on."""
        require_positive(self, name, "test_size", "val_size", "classifier_size", "toy_train_size",
                         "toy_val_size", "toy_test_size", "samples_per_shard")
        try:
            source_kind(self.source)
        except ValueError as err:
            raise ConfigError(f"{name}.source: {err}") from err
        if self.source == "digits":  # labelled images: the classifier split applies
            self.check_held_out(self.held_out_sizes(labelled_images=True), DIGITS_SIZE, name)
        require(bool(self.out_dir), f"{name}.out_dir", "must name a folder")

    def held_out_sizes(self, labelled_images: bool) -> dict:
        """{split: size} held out of a data set read from disk (val, classifier where the FD
        classifier applies, test); toys are drawn with their own sizes (toy_*)."""
        kind = source_kind(self.source)[0]
        if kind == "toy":
            return {"val": self.toy_val_size, "test": self.toy_test_size}
        classifier = {"classifier": self.classifier_size} if labelled_images else {}
        return {"val": self.val_size, **classifier, "test": self.test_size}

    def check_held_out(self, sizes: dict, n: int, name: str = "data") -> None:
        """The held-out splits leave training data; the error names the largest held-out size
        (the likeliest mistake)."""
        largest = max(sizes, key=sizes.get)
        field_of = {"val": "val_size", "classifier": "classifier_size", "test": "test_size"}
        require(sum(sizes.values()) < n, f"{name}.{field_of[largest]}",
                f"holds out {' + '.join(f'{v} {k}' for k, v in sizes.items())} = {sum(sizes.values())} "
                f"of the {n} examples of {self.source}, leaving none to train on")

    def known_data(self) -> tuple[tuple, int, tuple[int, ...]] | None:
        """(per-example shape, train size, the reference splits' sizes (val, test)) where the
        source fixes them without reading data (toys, digits); None for folders and npz files."""
        kind = source_kind(self.source)[0]
        if kind == "toy":
            return TOY_SHAPE, self.toy_train_size, (self.toy_val_size, self.toy_test_size)
        if kind == "digits":
            held = self.held_out_sizes(labelled_images=True)
            return DIGITS_SHAPE, DIGITS_SIZE - sum(held.values()), (self.val_size, self.test_size)
        return None


@dataclass(frozen=True)
class RayParams:
    num_workers: int = 2
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    resources_timeout_s: float = 60.0  # how long to wait for the cluster to offer the workers
    max_failures: int = 2
    storage_path: str = "ray_results"

    @property
    def gpus_per_actor(self) -> float:
        """GPUs each sampling and feature actor asks for: one with use_gpu, else none."""
        return 1.0 if self.use_gpu else 0.0

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
    dropout: float = 0.0  # before each residual block's second layer (DDPM's place)
    attention: list[int] = field(default_factory=list)  # unet: levels with self-attention besides the middle

    def check(self, name: str) -> None:
        require_positive(self, name, "width", "depth", "base", "blocks", "emb_dim")
        require(bool(self.mults) and min(self.mults) > 0, f"{name}.mults", "must be positive integers")
        require(0 <= self.dropout < 1, f"{name}.dropout", f"must lie in [0, 1), got {self.dropout}")
        require(all(0 <= level < len(self.mults) for level in self.attention)
                and len(set(self.attention)) == len(self.attention), f"{name}.attention",
                f"levels are distinct indices of mults (0 .. {len(self.mults) - 1}), got {self.attention}")


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
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 with a dynamic loss scale)
    channels_last: bool = True  # images: channels-last weights and batches (oneDNN and GPU convolutions)
    compile: bool = False  # torch.compile the network (needs a C compiler on every worker)
    out_dir: str = "models"

    def check(self, name: str) -> None:
        for key in self.frameworks:
            check_run_key(key, f"{name}.frameworks")
            require(split_run(key)[0] in FRAMEWORKS, f"{name}.frameworks",
                    f"unknown framework {key!r}; known: {sorted(FRAMEWORKS)}, each optionally "
                    f"with a recipe and a training seed (ddpm-paper, ddpm-paper.s1)")
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
        require(self.precision in PRECISIONS, f"{name}.precision",
                f"must be one of {sorted(PRECISIONS)}, got {self.precision!r}")


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
    split: str = "test"  # the reference: test (the report's, metrics/<run>.json) | val (tuning, metrics/val/)
    bootstrap: int = 200  # replicates behind each headline's interval (samples redrawn; reference and floor fixed)

    def check(self, name: str) -> None:
        require(self.bootstrap >= 20, f"{name}.bootstrap", f"needs at least 20 replicates, got {self.bootstrap}")
        require_positive(self, name, "swd_projections", "num_workers", "cpus_per_worker", "max_pairwise",
                         "pr_k", "nfe_sweep_samples")
        require(self.split in REFERENCE_SPLITS, f"{name}.split",
                f"must be one of {list(REFERENCE_SPLITS)}, got {self.split!r}")
        for i, entry in enumerate(self.nfe_sweep):
            self._check_sweep_entry(entry, f"{name}.nfe_sweep[{i}]")

    @staticmethod
    def _check_sweep_entry(entry, name: str) -> None:
        """A sampler mapping with at most one list-valued setting (the swept one) and an
        optional `frameworks` list; every point it makes is a valid sampler."""
        require(isinstance(entry, dict), name, "must be a sampler mapping")
        only = entry.get("frameworks", [])
        require(isinstance(only, list), f"{name}.frameworks", f"must be a list, got {only!r}")
        for key in only:
            check_run_key(key, f"{name}.frameworks")
        require(all(split_run(k)[0] in FRAMEWORKS for k in only), f"{name}.frameworks",
                f"must be a list of frameworks {sorted(FRAMEWORKS)} or runs (ddpm-paper, "
                f"ddpm-paper.s1), got {only!r}")
        swept = [k for k, v in entry.items() if isinstance(v, list) and k != "frameworks"]
        require(len(swept) <= 1, name, f"sweeps one setting at a time, got lists for {swept}")
        for point in sweep_points([entry]):
            check_sampler(point, name)


@dataclass(frozen=True)
class CompareParams:
    out_dir: str = "reports"  # compare.md, compare.json and the plots
    ladders: list[str] = field(default_factory=list)  # ablation ladders to report, 'ddpm:paper:edm' (ladder.py)

    def check(self, name: str) -> None:
        require(bool(self.out_dir), f"{name}.out_dir", "must name a folder")
        for i, spec in enumerate(self.ladders):
            parse_ladder(spec, f"{name}.ladders[{i}]")


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
        """Checks across sections: each framework's recipes, the runs train.frameworks and the
        NFE sweep name, finite numbers and seeds, and what the stages would refuse late (DDIM
        steps against the chain, the batch split over the Ray workers)."""
        check_numbers(self, name)
        for framework in FRAMEWORKS:
            section = getattr(self, framework)
            check_recipes(section, framework)
            for recipe in section.recipes:
                check_numbers(with_recipe(section, recipe, framework), f"{framework}.recipes.{recipe}")
            for key in [framework, *(f"{framework}-{recipe}" for recipe in section.recipes)]:
                self._check_choices(key)
        for key in self.train.frameworks:
            self._check_run_exists(key, "train.frameworks")
        for i, spec in enumerate(self.compare.ladders):
            rungs(self, parse_ladder(spec, f"compare.ladders[{i}]"))  # its recipes exist and resolve
        for i, entry in enumerate(self.evaluate.nfe_sweep):
            for key in entry.get("frameworks", []):
                self._check_run_exists(key, f"evaluate.nfe_sweep[{i}].frameworks")
        for key in self.train.frameworks:
            self._check_chain_samplers(key)
        known = self.data.known_data()
        if known is not None:
            self.check_data(*known)

    def _check_choices(self, key: str) -> None:
        """The run's training choices resolve over the shared defaults, on the data's kind where
        the source fixes it (else on images: a vector run's are checked by its train stage)."""
        known = self.data.known_data()
        kind = "vector" if known is not None and len(known[0]) == 1 else "image"
        choices = self.training(key, kind)
        for part in ("network", "ema", "optimizer"):
            check_numbers(getattr(choices, part), f"{run_section_name(key)}.{part}")

    def _check_run_exists(self, key: str, where: str) -> None:
        """A run key names a framework and, optionally, one of its section's recipes."""
        framework, recipe = split_run(key)
        known = sorted(getattr(self, framework).recipes)
        require(recipe is None or recipe in known, where,
                f"{key!r}: {framework} has no recipe {recipe!r}; known: {known}")

    def _check_chain_samplers(self, key: str) -> None:
        """Each NFE-sweep point that draws from the run fits the run's process as the core checks
        it before drawing (`check_fits`: DDIM's steps on the chain, a ladder's rungs); the sample
        stage would refuse it only after training. (The run's own sampler is checked so by its
        section.)"""
        process = self.framework(key).process_config()
        for i, entry in enumerate(self.evaluate.nfe_sweep):
            for point in sweep_points([entry], key, process["kind"]):
                try:
                    check_sampler(point, f"evaluate.nfe_sweep[{i}]", process)
                except ConfigError as err:
                    raise ConfigError(f"{err} (run {key!r}, a {process['kind']} process of "
                                      f"N = {process['N']} steps)") from err

    def check_data(self, shape, n_train: int, n_references: tuple[int, ...]) -> None:
        """Checks that need the data's per-example shape and split sizes, as the stages meet
        them: the batch split over the Ray workers and the U-Net's down-sampling (train),
        precision/recall's k and the floors' train subsets (evaluate). Params.check runs them
        where the source fixes the data (toys, digits); prepare runs them on the data it read,
        before writing shards. `n_references`: the sizes of the splits evaluate may score
        against (val, test). (Exact score matching's dimension limit stays with the train
        stage's model config, which refuses it before any run.)"""
        kind = "vector" if len(shape) == 1 else "image"
        profile, workers = self.profile(kind), self.ray.num_workers
        require(profile.batch_size >= workers, f"{kind}.batch_size",
                f"{profile.batch_size} is split over ray.num_workers={workers} Ray Train workers; "
                f"need batch_size >= ray.num_workers")
        if kind == "image":
            self._check_image_data(shape, min(n_references))
        else:
            n = min(profile.num_samples, max(n_references))
            require(n_train >= n, "vector.num_samples",
                    f"evaluate sets {n} samples against a held-out split and floors them with "
                    f"train subsets of {n}, but the train split holds {n_train} examples")

    def _check_image_data(self, shape, n_reference: int) -> None:
        """The U-Net halves the sides once per level after the first; precision/recall's k-NN
        needs more points than k in every set it compares."""
        mults, (height, width) = self.image.network.mults, shape[1:]
        step = 2 ** (len(mults) - 1)
        require(height % step == 0 and width % step == 0, "image.network.mults",
                f"{len(mults)} levels halve the images {len(mults) - 1} times, so their sides must be "
                f"divisible by {step}; these images are {height}×{width}")
        smallest = min(self.image.num_samples, self.evaluate.max_pairwise, n_reference)
        require(self.evaluate.pr_k < smallest, "evaluate.pr_k",
                f"the k-NN of precision/recall needs k below the smallest set it compares: "
                f"min(image.num_samples, evaluate.max_pairwise, the val and test sizes) = {smallest}")

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


def _check_keys(tree, name: str = "") -> None:
    """Every mapping key of the YAML tree is a string (a YAML `1:` or `null:` key would fail
    later comparisons with a TypeError instead of a message naming it)."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            where = f"{name}.{key}" if name else str(key)
            require(isinstance(key, str), where, f"keys must be strings, got {key!r}")
            _check_keys(value, where)
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            _check_keys(value, f"{name}[{i}]")


def parse_params(data: dict) -> Params:
    _check_keys(data)
    return build(Params, data or {}, "")


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


def check_local_paths(params: Params) -> None:
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


def load_params(path: str | Path = "params.yaml") -> Params:
    """params.yaml read, validated and checked against this machine's files; a ConfigError
    names the file (unreadable, not YAML, not a mapping) or the dotted field."""
    path = Path(path)
    data = _read_yaml(path)
    if not isinstance(data, dict):
        what = "empty" if data is None else f"a {type(data).__name__}, not a mapping"
        raise ConfigError(f"{path}: the params file is {what}; it must map sections "
                          f"(data:, train:, ...) to their settings")
    params = parse_params(data)
    check_local_paths(params)
    return params


def as_dict(params) -> dict:
    return dataclasses.asdict(params)
