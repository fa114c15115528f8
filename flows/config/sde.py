"""The `sde` section of params.yaml: the score-SDE framework (Song et al., 2021) — a VP, sub-VP
or VE process, continuous-time denoising score matching, predictor-corrector or probability-flow
ODE sampling — and the likelihood settings the evaluate stage uses for every framework."""
from __future__ import annotations

from dataclasses import dataclass, field

from diffusion_core.likelihood.pf_ode import DIVERGENCES, PROBES
from diffusion_core.likelihood.vlb import MODEL_VARIANCES
from diffusion_core.models.denoiser import PARAMETERIZATIONS
from diffusion_core.objectives.continuous_dsm import DSM_WEIGHTINGS
from diffusion_core.processes.build import PROCESSES, build_process
from diffusion_core.samplers.sde import check_tolerances
from diffusion_core.training.lr_schedule import LR_SCHEDULES
from flows.config.choices import RecipeChoices
from flows.config.validation import check_sampler, core_checked, require


@dataclass(frozen=True)
class LikelihoodParams:
    """log p(x) of held-out data through the PF-ODE (and DDPM's bound for VP models)."""

    method: str = "auto"  # exact | hutchinson | auto (exact for vectors, hutchinson for images)
    probe: str = "rademacher"  # gaussian | rademacher (Hutchinson-Skilling probes)
    probes: int = 1
    rtol: float = 1e-5  # RK45 tolerances of the ODE solve
    atol: float = 1e-5
    eps: float = 1e-5  # the ODE runs from t = eps (data) to T
    seed: int = 0
    vlb: bool = True  # DDPM's variational bound too, for models with a vp process
    vlb_variance: str = "beta"  # p_theta(x_{t-1} | x_t) variance: beta | posterior

    def check(self, name: str) -> None:
        require(self.method in DIVERGENCES + ("auto",), f"{name}.method",
                f"must be one of {DIVERGENCES + ('auto',)}, got {self.method!r}")
        require(self.probe in PROBES, f"{name}.probe", f"must be one of {PROBES}, got {self.probe!r}")
        require(self.probes >= 1, f"{name}.probes", "must be >= 1")
        core_checked(name, lambda: check_tolerances(self.rtol, self.atol), ("rtol", "atol"))
        require(0 < self.eps < 1, f"{name}.eps", f"must lie in (0, 1), got {self.eps}")
        require(self.vlb_variance in MODEL_VARIANCES, f"{name}.vlb_variance",
                f"must be one of {MODEL_VARIANCES}, got {self.vlb_variance!r}")


@dataclass(frozen=True)
class SDEParams(RecipeChoices):  # + network, conditioning, ema, optimizer, batch_size
    process: str = "vp"  # vp | subvp | ve
    beta_min: float = 0.1  # vp, subvp: beta(t) = beta_min + t (beta_max - beta_min)
    beta_max: float = 20.0
    sigma_min: float = 0.01  # ve: sigma(t) = sigma_min (sigma_max / sigma_min)^t
    sigma_max: float = 50.0
    N: int = 1000  # discretization steps (DDPM's chain for vp, NCSN's ladder for ve)
    eps: float = 1e-5  # training times t ~ U(eps, 1)
    weighting: str = "sigma2"  # sigma2 (lambda = sigma_t^2) | likelihood (g^2) | lognormal (the profile's p_mean, p_std)
    importance: bool = False  # draw t from the weighting's noise-level distribution (same objective)
    parameterization: str = "edm"
    sampler: dict = field(default_factory=lambda: {"name": "pc", "predictor": "reverse_diffusion",
                                                   "corrector": "langevin", "snr": 0.16})
    lr_schedule: str | None = None  # overrides train.lr_schedule (a paper's constant rate, say)
    recipes: dict = field(default_factory=dict)  # name -> settings laid over this section (recipes.py)
    likelihood: LikelihoodParams = field(default_factory=LikelihoodParams)  # evaluate, every framework

    def process_config(self) -> dict:
        """The model config's process: `process` with the arguments of its kind."""
        if self.process == "ve":
            return dict(kind="ve", sigma_min=self.sigma_min, sigma_max=self.sigma_max, N=self.N)
        return dict(kind=self.process, beta_min=self.beta_min, beta_max=self.beta_max, N=self.N)

    def model_parts(self, profile) -> dict:
        """The process, parameterization and loss entries of the model's JSON config; the
        lognormal weighting takes its noise levels from the data's profile."""
        return {"process": self.process_config(), "parameterization": self.parameterization,
                "loss": dict(kind="dsm", eps=self.eps, weighting=self.weighting,
                             p_mean=profile.p_mean, p_std=profile.p_std, importance=self.importance)}

    def check(self, name: str) -> None:
        require(self.process in PROCESSES, f"{name}.process",
                f"must be one of {sorted(PROCESSES)}, got {self.process!r}")
        require(self.N >= 2, f"{name}.N", "must be >= 2")
        process = self._processes(name)
        require(0 < self.eps < 1, f"{name}.eps", f"must lie in (0, 1), got {self.eps}")
        require(self.weighting in DSM_WEIGHTINGS, f"{name}.weighting",
                f"must be one of {DSM_WEIGHTINGS}, got {self.weighting!r}")
        require(self.parameterization in PARAMETERIZATIONS, f"{name}.parameterization",
                f"must be one of {PARAMETERIZATIONS}, got {self.parameterization!r}")
        check_sampler(self.sampler, f"{name}.sampler", process)
        require(self.lr_schedule in (None,) + LR_SCHEDULES, f"{name}.lr_schedule",
                f"must be one of {LR_SCHEDULES} or null (train.lr_schedule), got {self.lr_schedule!r}")

    def _processes(self, name: str):
        """The section's process, built by the core, which checks its arguments (0 < beta_min <
        beta_max and, for vp, beta_max / N < 1; 0 < sigma_min < sigma_max). The pair it does not
        use is checked by a process that does (subvp's betas, ve's sigmas): a recipe may switch
        the process, and a bad pair is named here, not in a later run. A refusal names the field
        of the first argument the core's message mentions."""
        betas = dict(kind="subvp", beta_min=self.beta_min, beta_max=self.beta_max, N=self.N)
        sigmas = dict(kind="ve", sigma_min=self.sigma_min, sigma_max=self.sigma_max, N=self.N)
        fields = ("beta_min", "beta_max", "sigma_min", "sigma_max", "N")
        process = core_checked(name, lambda: build_process(self.process_config()), fields)
        core_checked(name, lambda: build_process(betas if self.process == "ve" else sigmas), fields)
        return process
