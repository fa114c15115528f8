"""The sections of params.yaml that hold no framework: each a frozen dataclass whose `check(name)`
refuses an impossible value of its own fields, naming the dotted field (`train.lr`, say).
`schema.build` calls it as it builds the section; checks that read several sections are in
cross.py, the framework sections in ddpm.py, ncsn.py and sde.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from diffusion_core.data.sources import (DIGITS_SHAPE, DIGITS_SIZE, TOY_SHAPE, check_dataset_name,
                                         default_dataset_name, source_kind)
from diffusion_core.frameworks import FRAMEWORKS
from diffusion_core.training.lr_schedule import LR_SCHEDULES
from diffusion_core.training.nonfinite import POLICIES as NONFINITE_POLICIES
from diffusion_core.training.precision import PRECISIONS
from flows.config.ladder import parse_ladder
from flows.config.recipes import check_run_key, split_run
from flows.config.sweep import sweep_points
from flows.config.validation import ConfigError, check_sampler, require, require_positive

REFERENCE_SPLITS = ("test", "val")  # what evaluate may score samples against


@dataclass(frozen=True)
class DataParams:
    source: str = "digits"  # digits | toy:<name> | folder:<path> | npz:<path>
    name: str = ""  # names experiments, registered models, runs, reports; "" = from the source
    seed: int = 0
    test_size: int = 500  # held-out examples of a data set read from disk: the final report's
    val_size: int = 300  # ... the tuning reference (evaluate --split val, the benchmarks)
    classifier_size: int = 300  # ... the FD feature extractor's training set (images only)
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
        if self.name:
            try:
                check_dataset_name(self.name)
            except ValueError as err:
                raise ConfigError(f"{name}.name: {err}") from err
        if self.source == "digits":  # labelled images: the classifier split applies
            self.check_held_out(self.held_out_sizes(labelled_images=True), DIGITS_SIZE, name)
        require(bool(self.out_dir), f"{name}.out_dir", "must name a folder")

    @property
    def dataset(self) -> str:
        """The data set's name: `name`, or one made from the source ('shapes' for npz:…/shapes.npz)."""
        return self.name or default_dataset_name(self.source)

    def held_out_sizes(self, labelled_images: bool) -> dict:
        """{split: size} held out of a data set read from disk (val, classifier where
        `labelled_images`, which prepare passes for every image set: the FD feature extractor's
        split, whether it trains a classifier or, without labels, a contrastive network; test);
        toys are drawn with their own sizes (toy_*)."""
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
    runs_at_once: int = 0  # independent runs trained side by side; 0: as many as the cluster holds

    @property
    def gpus_per_actor(self) -> float:
        """GPUs each sampling and feature actor asks for: one with use_gpu, else none."""
        return 1.0 if self.use_gpu else 0.0

    def check(self, name: str) -> None:
        require(self.num_workers >= 1, f"{name}.num_workers", "must be >= 1")
        require(self.cpus_per_worker > 0, f"{name}.cpus_per_worker", "must be positive")
        require(self.resources_timeout_s > 0, f"{name}.resources_timeout_s", "must be positive")
        require(self.max_failures >= 0, f"{name}.max_failures", "must be >= 0")
        require(self.runs_at_once >= 0, f"{name}.runs_at_once",
                "must be >= 0 (0: as many runs at once as the cluster has room for)")


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
    # unet, DDPM's network exactly (Ho et al. 2020, app. B: 32, 1, true, base, true); the
    # defaults are the earlier U-Net's, so its saved models and run fingerprints stay valid
    groups: int = 8  # of every GroupNorm
    heads: int = 4  # of every self-attention
    upsample_conv: bool = False  # a 3x3 convolution after each nearest-neighbour upsampling
    emb_in: int | None = None  # sinusoids into the embedding MLP (emb_in -> emb_dim); null: emb_dim
    emb_silu: bool = False  # SiLU on the embedding before each residual block's projection

    def check(self, name: str) -> None:
        require_positive(self, name, "width", "depth", "base", "blocks", "emb_dim", "groups", "heads")
        require(bool(self.mults) and min(self.mults) > 0, f"{name}.mults", "must be positive integers")
        require(self.emb_in is None or self.emb_in >= 2, f"{name}.emb_in",
                f"must be >= 2 (sin and cos pairs) or null, got {self.emb_in}")
        bad = sorted({self.base * m for m in [1, *self.mults] if (self.base * m) % self.groups})
        require(not bad, f"{name}.groups", f"GroupNorm needs every width (base x mults) divisible by "
                f"{self.groups}; {bad} are not")
        bad = sorted({self.base * m for m in [1, *self.mults] if (self.base * m) % self.heads})
        require(not bad, f"{name}.heads", f"attention needs every width divisible by {self.heads}; "
                f"{bad} are not")
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
    """FD's feature extractor: a classifier (labelled images), else a contrastive network."""

    epochs: int = 30
    contrastive_epochs: int = 150  # unlabelled images: SimCLR epochs over the extractor split
    contrastive_temperature: float = 0.5  # NT-Xent's temperature (SimCLR's CIFAR-10 value)
    seed: int = 0
    out_dir: str = "models/classifier"

    def check(self, name: str) -> None:
        require_positive(self, name, "epochs", "contrastive_epochs", "contrastive_temperature")


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
