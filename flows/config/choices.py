"""The training choices a recipe owns besides its framework's section: the network, what it sees
and is conditioned on, the weight average, the optimiser and the batch size.

Every framework section carries them (`RecipeChoices`), empty by default: a run that sets none
trains with the shared defaults (the data kind's `image:`/`vector:` profile, `train:`), exactly
as before the choices existed. A recipe lays its own over them (recipes.py), and `resolve` turns
a section into every resolved choice, validated, with errors naming the field
(`ddpm.recipes.paper.ema.rate: ...`). The train stage writes the resolved choices into the
model's config, the loop's config, train_summary.json and the MLflow run's params.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from diffusion_core.models.conditioning import CONDITIONINGS, EMBEDDING_OF
from diffusion_core.training.ema import EMA_KINDS
from diffusion_core.training.lr_schedule import LR_SCHEDULES, warmup_steps
from flows.config.schema import build
from flows.config.validation import ConfigError, require

CHOICE_KEYS = ("network", "conditioning", "ema", "optimizer", "batch_size")
UNET_OPTIONS = ("groups", "heads", "upsample_conv", "emb_in", "emb_silu")  # recorded only where set
NETWORK_KEYS_OF = {"image": ("base", "mults", "blocks", "emb_dim", "dropout", "attention", *UNET_OPTIONS),
                   "vector": ("width", "depth", "emb_dim", "dropout")}  # the U-Net's; the residual MLP's
OPTIMIZER_KEYS = ("lr", "warmup_steps", "lr_schedule", "grad_clip")


@dataclass(frozen=True)
class RecipeChoices:
    """The choices as a section or recipe writes them; empty or null: the shared default."""

    network: dict = field(default_factory=dict)  # laid key by key over the profile's network
    conditioning: str | None = None  # edm | ddpm | ncsnv2 (models/conditioning.py); null: edm
    ema: dict = field(default_factory=dict)  # {kind: power, gamma} | {kind: exponential, rate}; {}: train.ema_gamma
    optimizer: dict = field(default_factory=dict)  # lr, warmup_steps, lr_schedule, grad_clip (null: none)
    batch_size: int | None = None  # null: the profile's


@dataclass(frozen=True)
class EMAParams:
    kind: str = "power"
    gamma: float | None = None  # power: the profile of Karras et al. (2024)
    rate: float | None = None  # exponential: the decay per step

    def check(self, name: str) -> None:
        require(self.kind in EMA_KINDS, f"{name}.kind", f"must be one of {EMA_KINDS}, got {self.kind!r}")
        if self.kind == "power":
            require(self.gamma is not None and self.gamma > 0, f"{name}.gamma",
                    f"a power EMA needs a positive gamma, got {self.gamma!r}")
        else:
            require(self.rate is not None and 0 <= self.rate < 1, f"{name}.rate",
                    f"an exponential EMA needs a rate in [0, 1), got {self.rate!r}")

    def record(self) -> dict:
        """The settings that apply to its kind only."""
        if self.kind == "power":
            return {"kind": "power", "gamma": self.gamma}
        return {"kind": "exponential", "rate": self.rate}


@dataclass(frozen=True)
class OptimizerParams:
    """Adam's learning rate, its linear warm-up, the schedule after it, the gradient clip."""

    lr: float = 1e-3
    warmup_steps: int | None = None  # null: 2% of the run's steps
    lr_schedule: str = "cosine"
    grad_clip: float | None = 1.0  # null: no clipping

    def check(self, name: str) -> None:
        require(self.lr > 0, f"{name}.lr", f"must be positive, got {self.lr}")
        require(self.warmup_steps is None or self.warmup_steps >= 0, f"{name}.warmup_steps",
                f"must be >= 0 or null (2% of the steps), got {self.warmup_steps}")
        require(self.lr_schedule in LR_SCHEDULES, f"{name}.lr_schedule",
                f"must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        require(self.grad_clip is None or self.grad_clip > 0, f"{name}.grad_clip",
                f"must be positive or null (no clipping), got {self.grad_clip}")


@dataclass(frozen=True)
class TrainingChoices:
    """Every training choice of one run, resolved: what the train stage records and uses."""

    kind: str  # of the data: image | vector
    network: object  # sections.NetworkParams, with the recipe's keys laid over the profile's
    conditioning: str
    ema: EMAParams
    optimizer: OptimizerParams
    batch_size: int

    def network_settings(self) -> dict:
        """The network's settings that apply to the data's kind (its constructor's arguments).
        A U-Net option left at its default is left out: the constructor's default is the same,
        and the model configs (so the fingerprints) of runs made before the options stay as they were."""
        default = type(self.network)()
        return {key: getattr(self.network, key) for key in NETWORK_KEYS_OF[self.kind]
                if key not in UNET_OPTIONS or getattr(self.network, key) != getattr(default, key)}

    def record(self) -> dict:
        """JSON values of every choice (warm-up resolved to a step count)."""
        return {"network": self.network_settings(), "conditioning": self.conditioning,
                "embedding": EMBEDDING_OF[self.conditioning], "ema": self.ema.record(),
                "optimizer": dataclasses.asdict(self.optimizer), "batch_size": self.batch_size}


def resolve(section, params, kind: str, where: str) -> TrainingChoices:
    """The choices of a run whose (recipe-laid) section is `section`, on data of `kind`
    ("image" | "vector"), over the shared defaults of `params`; errors name `where`.<field>."""
    profile = params.profile(kind)
    network = build(type(profile.network), {**dataclasses.asdict(profile.network), **section.network},
                    f"{where}.network")
    require(kind == "image" or not network.attention, f"{where}.network.attention",
            "the residual MLP of vector data has no attention; for images only")
    conditioning = section.conditioning or "edm"
    _check_conditioning(section, profile, conditioning, f"{where}.conditioning")
    ema = build(EMAParams, {"gamma": params.train.ema_gamma, **section.ema}, f"{where}.ema")
    optimizer = _optimizer(section, params, profile, where)
    batch_size = profile.batch_size if section.batch_size is None else section.batch_size
    named = f"{kind}.batch_size" if section.batch_size is None else f"{where}.batch_size"  # who set it
    require(batch_size >= params.ray.num_workers, named,
            f"{batch_size} is split over ray.num_workers={params.ray.num_workers} Ray Train workers")
    return TrainingChoices(kind, network, conditioning, ema, optimizer, batch_size)


def _check_conditioning(section, profile, conditioning: str, name: str) -> None:
    require(conditioning in CONDITIONINGS, name, f"must be one of {CONDITIONINGS}, got {conditioning!r}")
    process = section.model_parts(profile)["process"]["kind"]
    require(conditioning != "ddpm" or process == "vp", name,
            f"ddpm conditions on DDPM's timestep, which a vp process's chain defines; this run's "
            f"process is {process}")


def _optimizer(section, params, profile, where: str) -> OptimizerParams:
    """The profile's lr, train's clip and the section's (else train's) schedule, under the
    section's optimizer keys; the warm-up resolved to steps (2% of the run by default)."""
    if "lr_schedule" in section.optimizer and section.lr_schedule is not None:
        raise ConfigError(f"{where}.optimizer.lr_schedule: also set as {where}.lr_schedule; set one")
    defaults = {"lr": profile.lr, "warmup_steps": None, "grad_clip": params.train.grad_clip,
                "lr_schedule": section.lr_schedule or params.train.lr_schedule}
    optimizer = build(OptimizerParams, {**defaults, **section.optimizer}, f"{where}.optimizer")
    if optimizer.warmup_steps is None:
        optimizer = dataclasses.replace(optimizer, warmup_steps=warmup_steps(profile.steps))
    return optimizer
