"""The `ncsn` section of params.yaml: noise-conditioned score networks (Song & Ermon, 2019).

The noise ladder sigma_1 = sigma_max > ... > sigma_L = sigma_min is geometric, the
discretization of VESDE(sigma_min, sigma_max, N=L); the model is a score network or an energy
network (score = -grad_x E), trained by denoising (dsm), sliced (ssm) or exact score matching
over the ladder, and sampled by annealed Langevin dynamics by default.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from diffusion_core.models.denoiser import PARAMETERIZATIONS
from diffusion_core.objectives.score_matching import EXACT_MAX_DIM, PROJECTIONS
from diffusion_core.training.lr_schedule import LR_SCHEDULES
from flows.config.choices import RecipeChoices
from flows.config.validation import ConfigError, check_sampler, require

MODELS = ("score", "energy")
OBJECTIVES = {"dsm": "ncsn", "ssm": "ncsn_ssm", "exact": "ncsn_exact"}  # -> frameworks.LOSSES


@dataclass(frozen=True)
class NCSNParams(RecipeChoices):  # + network, conditioning, ema, optimizer, batch_size
    sigma_min: float = 0.01  # sigma_L
    sigma_max: float = 10.0  # sigma_1: about the largest distance between data points
    num_scales: int = 100  # L
    model: str = "score"  # score | energy
    objective: str = "dsm"  # dsm | ssm | exact (exact: data of at most 64 dims)
    parameterization: str = "eps"  # eps: NCSNv2's s = -F / sigma | x0 | edm
    projection: str = "rademacher"  # ssm: gaussian | rademacher
    n_projections: int = 1  # ssm: projections per example
    sampler: dict = field(default_factory=lambda: {"name": "annealed_langevin", "steps_per_sigma": 5,
                                                   "eps": 2e-5, "denoise": True})
    lr_schedule: str | None = None  # overrides train.lr_schedule (a paper's constant rate, say)
    recipes: dict = field(default_factory=dict)  # name -> settings laid over this section (recipes.py)

    def process_config(self) -> dict:
        """The model config's process: the VE process whose N-step discretization is the ladder."""
        return dict(kind="ve", sigma_min=self.sigma_min, sigma_max=self.sigma_max, N=self.num_scales)

    def model_parts(self, profile=None) -> dict:
        """The process, parameterization, loss and model kind entries of the model's config
        (NCSN's loss draws from its ladder; it takes nothing from the data's profile)."""
        loss = {"kind": OBJECTIVES[self.objective]}
        if self.objective == "ssm":
            loss.update(n_projections=self.n_projections, projection=self.projection)
        return {"process": self.process_config(), "parameterization": self.parameterization,
                "loss": loss, "model_kind": self.model}

    def check(self, name: str) -> None:
        require(math.isfinite(self.sigma_min) and self.sigma_min > 0, f"{name}.sigma_min",
                f"the noise ladder must be positive: got sigma_min={self.sigma_min}")
        require(math.isfinite(self.sigma_max) and self.sigma_max > self.sigma_min, f"{name}.sigma_max",
                f"the noise ladder sigma_max = sigma_1 > ... > sigma_L = sigma_min must decrease: "
                f"got sigma_max={self.sigma_max}, sigma_min={self.sigma_min}")
        require(self.num_scales >= 2, f"{name}.num_scales", "the ladder needs L >= 2 levels")
        require(self.model in MODELS, f"{name}.model", f"must be one of {MODELS}, got {self.model!r}")
        require(self.objective in OBJECTIVES, f"{name}.objective",
                f"must be one of {tuple(OBJECTIVES)}, got {self.objective!r}")
        require(self.parameterization in PARAMETERIZATIONS, f"{name}.parameterization",
                f"must be one of {PARAMETERIZATIONS}")
        require(self.projection in PROJECTIONS, f"{name}.projection", f"must be one of {PROJECTIONS}")
        require(self.n_projections >= 1, f"{name}.n_projections", "must be >= 1")
        check_sampler(self.sampler, f"{name}.sampler", self.process_config())
        require(self.lr_schedule in (None,) + LR_SCHEDULES, f"{name}.lr_schedule",
                f"must be one of {LR_SCHEDULES} or null (train.lr_schedule), got {self.lr_schedule!r}")

    def check_data(self, name: str, shape) -> None:
        """Checks that need the data's shape (called where the model config is built)."""
        dim = math.prod(shape)
        if self.objective == "exact" and dim > EXACT_MAX_DIM:
            raise ConfigError(f"{name}.objective: exact score matching takes one backward pass per "
                              f"data dimension, so it is for data of at most {EXACT_MAX_DIM} dims; "
                              f"this data has {dim} {tuple(shape)}: use dsm or ssm")
