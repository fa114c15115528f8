"""The `ddpm` section of params.yaml: denoising diffusion probabilistic models (Ho et al., 2020)
on the VP chain, beta = linspace(beta_min / N, beta_max / N, N) (DDPM's 1e-4 .. 0.02 at N = 1000),
read through any parameterization and trained with L_simple's uniform t or EDM's lognormal
noise levels."""
from __future__ import annotations

from dataclasses import dataclass, field

from diffusion_core.models.denoiser import PARAMETERIZATIONS
from diffusion_core.objectives.denoising import WEIGHTINGS
from diffusion_core.processes.build import build_process
from diffusion_core.training.lr_schedule import LR_SCHEDULES
from flows.config.choices import RecipeChoices
from flows.config.validation import check_sampler, core_checked, require


@dataclass(frozen=True)
class DDPMParams(RecipeChoices):  # + network, conditioning, ema, optimizer, batch_size
    schedule: str = "linear"
    beta_min: float = 0.1
    beta_max: float = 20.0
    N: int = 1000
    parameterization: str = "x0"
    noise: str = "uniform"  # uniform (DDPM's t ~ U{1..N}) | lognormal (EDM)
    weighting: str = "network"  # network (unit weight on the raw output) | x0
    sampler: dict = field(default_factory=lambda: {"name": "ddim", "steps": 50, "spacing": "karras"})
    lr_schedule: str | None = None  # overrides train.lr_schedule (a paper's constant rate, say)
    recipes: dict = field(default_factory=dict)  # name -> settings laid over this section (recipes.py)

    def process_config(self) -> dict:
        """The model config's process: the VP process whose N-step chain is DDPM's."""
        return dict(kind="vp", beta_min=self.beta_min, beta_max=self.beta_max, N=self.N,
                    schedule=self.schedule)

    def model_parts(self, profile) -> dict:
        """The process, parameterization and loss entries of the model's JSON config; a
        lognormal loss takes its noise levels from the data's profile."""
        loss = (dict(kind="lognormal", p_mean=profile.p_mean, p_std=profile.p_std, weighting=self.weighting)
                if self.noise == "lognormal" else dict(kind="ddpm", weighting=self.weighting))
        return {"process": self.process_config(), "parameterization": self.parameterization, "loss": loss}

    def check(self, name: str) -> None:
        require(self.N >= 2, f"{name}.N", "must be >= 2")
        process = self._process(name)
        require(self.parameterization in PARAMETERIZATIONS, f"{name}.parameterization",
                f"must be one of {PARAMETERIZATIONS}")
        require(self.noise in ("uniform", "lognormal"), f"{name}.noise", "must be uniform or lognormal")
        require(self.weighting in WEIGHTINGS, f"{name}.weighting", f"must be one of {WEIGHTINGS}")
        check_sampler(self.sampler, f"{name}.sampler", process)
        require(self.lr_schedule in (None,) + LR_SCHEDULES, f"{name}.lr_schedule",
                f"must be one of {LR_SCHEDULES} or null (train.lr_schedule), got {self.lr_schedule!r}")

    def _process(self, name: str):
        """The process built by the core, which checks its arguments (VPSDE: the schedule,
        0 < beta_min < beta_max, beta_max / N < 1); a refusal names the field of the first
        argument the core's message mentions."""
        config = self.process_config()
        return core_checked(name, lambda: build_process(config), [key for key in config if key != "kind"])
