"""Forward diffusion processes as SDE objects (Song et al., 2021, "Score-Based Generative
Modeling through Stochastic Differential Equations", section 3 and appendix B).

Every process has a Gaussian marginal x_t = alpha(t) x_0 + sigma(t) z, which is the one fact the
denoiser, the losses and the samplers rely on; `alpha_sigma` exposes it.

The base and the three processes stay in one module (a little over 350 lines) so that each
override reads beside the base method it replaces; the beta schedules are `schedules.py`'s.
"""
from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod

import numpy as np
import torch

from diffusion_core.noise import normal
from diffusion_core.processes.schedules import BETA_CLIP, CosineSchedule, LinearSchedule
from diffusion_core.tensors import append_dims, batch_of, sum_except_batch


class SDE(ABC):
    """dx = f(x, t) dt + g(t) dw on t in [0, T], with N discretization steps."""

    T = 1.0

    def __init__(self, N: int):
        if int(N) < 1:
            raise ValueError(f"N (number of discretization steps) must be >= 1, got {N}")
        self.N = int(N)

    @abstractmethod
    def sde(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift f(x, t) (shaped like x) and diffusion g(t) (shaped (B,))."""

    @abstractmethod
    def alpha_sigma(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale alpha(t) and standard deviation sigma(t) of the marginal q(x_t | x_0)."""

    @abstractmethod
    def prior_sampling(self, shape, generator: torch.Generator | None = None) -> torch.Tensor:
        """A draw from p_T, the prior the reverse process starts from."""

    @abstractmethod
    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log p_T(z) per example."""

    def marginal_prob(self, x0: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of q(x_t | x_0) (eq. 29 for VP, 31 for VE)."""
        alpha, sigma = self.alpha_sigma(batch_of(t, x0))
        return append_dims(alpha, x0.ndim) * x0, sigma

    def discretize(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Euler-Maruyama discretization x_{i+1} = x_i + f_i + G_i z (eq. 42 / appendix E)."""
        dt = self.T / self.N
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * math.sqrt(dt)

    def reverse(self, score_fn, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE (eq. 6) or the probability-flow ODE (eq. 13)."""
        return ReverseSDE(self, score_fn, probability_flow)

    @abstractmethod
    def arguments(self) -> dict:
        """The constructor arguments that rebuild this process."""

    def with_steps(self, N: int) -> "SDE":
        """The process as configured with N steps: for VP, DDPM's own formula at that N."""
        return type(self)(**{**self.arguments(), "N": int(N)})

    def ladder(self, steps: int) -> SDE:
        """This process discretized on `steps` rungs for the ladder predictors (reverse diffusion,
        ancestral): its own discretization at steps == N, else a coarser one whose every rung
        carries the continuous marginal's noise level at its time (`ladder_times`)."""
        if not 2 <= int(steps) <= self.N:
            raise ValueError(f"steps: a ladder predictor walks a coarsening of the process's "
                             f"N = {self.N} rungs, so steps must lie in [2, {self.N}], got {steps}")
        return self if int(steps) == self.N else self._coarser(int(steps))

    def _coarser(self, steps: int) -> SDE:
        return self.with_steps(steps)

    def rung_alpha_sigma(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha and sigma that the discretization assumes at the rung t falls on; the
        continuous marginal's for the generic (Euler-Maruyama) discretization."""
        return self.alpha_sigma(t)

    def ladder_times(self) -> torch.Tensor:
        """The times t_i = (i + 1) T / N of the N rungs of the discretization, from T down."""
        return torch.linspace(self.T, self.T / self.N, self.N, dtype=torch.float64)

    def noise_level(self, t) -> torch.Tensor:
        """s(t) = sigma(t) / alpha(t), the noise level of the rescaled state x / alpha; it
        increases with t for every process here."""
        alpha, sigma = self.alpha_sigma(torch.as_tensor(t, dtype=torch.float64))
        return sigma / alpha

    def time_of_noise_level(self, s: torch.Tensor, lo: float = 0.0, iterations: int = 60):
        """The t in [lo, T] with s(t) = s (clamped to the ends), by bisection, float64."""
        s = torch.as_tensor(s, dtype=torch.float64)
        low, high = torch.full_like(s, lo), torch.full_like(s, self.T)
        for _ in range(iterations):
            mid = 0.5 * (low + high)
            above = self.noise_level(mid) > s
            low, high = torch.where(above, low, mid), torch.where(above, mid, high)
        return 0.5 * (low + high)


class ReverseSDE:
    """dx = [f - c g^2 score] dt + (1 - c) g dw_bar with c = 1 (SDE) or 1/2 (ODE)."""

    def __init__(self, forward: SDE, score_fn, probability_flow: bool):
        self.forward, self.score_fn, self.probability_flow = forward, score_fn, probability_flow

    def sde(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        t = batch_of(t, x)
        drift, diffusion = self.forward.sde(x, t)
        c = 0.5 if self.probability_flow else 1.0
        g2 = append_dims(diffusion**2, x.ndim)
        drift = drift - c * g2 * self.score_fn(x, t)
        return drift, torch.zeros_like(diffusion) if self.probability_flow else diffusion


class StandardNormalPrior(SDE):
    """A process whose prior p_T is the standard normal N(0, I) and whose beta(t) is that of its
    `beta_schedule` (`schedules.py`): VP and sub-VP."""

    beta_schedule: LinearSchedule | CosineSchedule

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_schedule.beta(t)

    def prior_sampling(self, shape, generator=None):
        return normal(shape, generator)

    def prior_logp(self, z):
        d = z[0].numel()
        return -0.5 * d * np.log(2 * np.pi) - 0.5 * sum_except_batch(z**2)


class VPSDE(StandardNormalPrior):
    """Variance-preserving SDE dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw (eq. 11).

    schedule "linear": beta(t) = beta_min + t (beta_max - beta_min); its discretization with
    N = 1000 is DDPM's beta = linspace(1e-4, 0.02) (Ho et al., 2020).
    schedule "cosine": Nichol & Dhariwal's alpha_bar, clipped to stay finite on [0, 1] so that
    the N-step chain is the paper's with every rung on the continuous marginal
    (`schedules.CosineSchedule`, whose clip time is `clip_time`). `beta_schedule` holds the one
    in use.
    """

    kind = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000,
                 schedule: str = "linear"):
        super().__init__(N)
        if schedule not in ("linear", "cosine"):
            raise ValueError(f"schedule must be 'linear' or 'cosine', got {schedule!r}")
        if not 0 < beta_min < beta_max:
            raise ValueError(f"need 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        if beta_max / N >= 1:
            raise ValueError(f"beta_max / N must lie in (0, 1), got {beta_max / N}")
        self.beta_min, self.beta_max, self.schedule = float(beta_min), float(beta_max), schedule
        self.beta_schedule = (LinearSchedule(beta_min, beta_max) if schedule == "linear"
                              else CosineSchedule(self.N, self.T))
        if schedule == "cosine":
            self.clip_time = self.beta_schedule.clip_time
        self.discrete_betas = self._discrete_betas()

    def arguments(self) -> dict:
        return dict(beta_min=self.beta_min, beta_max=self.beta_max, N=self.N, schedule=self.schedule)

    def _discrete_betas(self) -> torch.Tensor:
        if self.schedule == "linear":  # DDPM's own chain, which models trained on it expect
            return torch.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N,
                                  dtype=torch.float64)
        # the paper's clipped chain; the clip only rounds, t_c is solved to hit it exactly
        return self.marginal_betas(self.N).clamp(max=BETA_CLIP)

    def marginal_betas(self, steps: int) -> torch.Tensor:
        """beta_i = 1 - alpha_bar(t_i) / alpha_bar(t_{i-1}) on t_i = i T / steps: the chain whose
        alpha_bar_i is the continuous alpha(t_i)^2 (DDIM's sub-chain, Song et al., 2021a)."""
        log_alpha_bar = 2 * self.log_alpha(torch.arange(steps + 1, dtype=torch.float64) * self.T / steps)
        return -torch.expm1(log_alpha_bar[1:] - log_alpha_bar[:-1])

    def _coarser(self, steps: int) -> VPSDE:
        """The chain of the continuous marginals on `steps` rungs (at steps == N `ladder` keeps
        the process's own chain: the linear schedule's DDPM betas, which its models were trained
        on, sit up to ~5% off the marginals). A copy, not VPSDE(N=steps): the fine chain's
        formula at a coarse N is 2.4x off the marginal at the top of 50 rungs."""
        coarse = copy.copy(self)
        coarse.N, coarse.discrete_betas = steps, self.marginal_betas(steps)
        return coarse

    def rung_alpha_sigma(self, t):
        """The chain's own alpha_bar_i = prod_{j <= i} (1 - beta_j) at the rung t falls on."""
        index = self.timestep_index(torch.as_tensor(t)).cpu()
        log_alpha_bar = torch.cumsum(torch.log1p(-self.discrete_betas), 0)[index]
        return torch.exp(0.5 * log_alpha_bar), torch.sqrt(-torch.expm1(log_alpha_bar))

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """log alpha(t) = -1/2 int_0^t beta(s) ds."""
        return self.beta_schedule.log_alpha(t)

    def sde(self, x, t):
        beta = self.beta(batch_of(t, x))
        return -0.5 * append_dims(beta, x.ndim) * x, torch.sqrt(beta)

    def alpha_sigma(self, t):
        t = torch.as_tensor(t)
        alpha = torch.exp(self.log_alpha(t))
        return alpha, torch.sqrt(-torch.expm1(2 * self.log_alpha(t)))

    def discretize(self, x, t):
        """DDPM's chain: x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z (eq. 2 of Ho et al.)."""
        index = self.timestep_index(batch_of(t, x))
        beta = self.discrete_betas.to(x.device)[index].to(x.dtype)
        f = append_dims(torch.sqrt(1 - beta), x.ndim) * x - x
        return f, torch.sqrt(beta)

    def time_of_noise_level(self, s, lo: float = 0.0, iterations: int = 60):
        """The schedule's closed form from alpha_bar = 1 / (1 + s^2)."""
        s = torch.as_tensor(s, dtype=torch.float64)
        return self.beta_schedule.time_of_noise_level(s).clamp(lo, self.T)

    def timestep_index(self, t: torch.Tensor) -> torch.Tensor:
        """Index i of the discrete step that continuous time t falls on, t_i = (i + 1) / N."""
        return (t * self.N / self.T - 1).round().long().clamp(0, self.N - 1)


class SubVPSDE(StandardNormalPrior):
    """Sub-VP SDE dx = -1/2 beta(t) x dt + sqrt(beta(t) (1 - exp(-2 int_0^t beta))) dw (eq. 34).

    Same mean as VP, alpha(t) = exp(-1/2 int_0^t beta), but a smaller marginal standard
    deviation sigma(t) = 1 - alpha(t)^2 (eq. 35); linear beta(t) = beta_min + t (beta_max -
    beta_min). Its discretization is the generic Euler-Maruyama one, as in Song et al.
    """

    kind = "subvp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
        super().__init__(N)
        if not 0 < beta_min < beta_max:
            raise ValueError(f"need 0 < beta_min < beta_max, got beta_min={beta_min}, "
                             f"beta_max={beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.beta_schedule = LinearSchedule(beta_min, beta_max)

    def arguments(self) -> dict:
        return dict(beta_min=self.beta_min, beta_max=self.beta_max, N=self.N)

    def integrated_beta(self, t: torch.Tensor) -> torch.Tensor:
        """B(t) = int_0^t beta(s) ds."""
        return self.beta_schedule.integrated_beta(t)

    def time_of_noise_level(self, s, lo: float = 0.0, iterations: int = 60):
        """Closed form: s = (1 - a^2) / a with a = alpha = exp(-B/2), so a = (sqrt(s^2 + 4) - s) / 2."""
        s = torch.as_tensor(s, dtype=torch.float64)
        big_b = -2 * torch.log((torch.sqrt(s**2 + 4) - s) / 2)
        return self.beta_schedule.time_of_integrated_beta(big_b).clamp(lo, self.T)

    def sde(self, x, t):
        t = batch_of(t, x)
        beta = self.beta(t)
        diffusion = torch.sqrt(beta * -torch.expm1(-2 * self.integrated_beta(t)))
        return -0.5 * append_dims(beta, x.ndim) * x, diffusion

    def alpha_sigma(self, t):
        t = torch.as_tensor(t)
        big_b = self.integrated_beta(t)
        return torch.exp(-0.5 * big_b), -torch.expm1(-big_b)


class VESDE(SDE):
    """Variance-exploding SDE dx = sigma(t) sqrt(2 log(sigma_max / sigma_min)) dw (eq. 30),
    sigma(t) = sigma_min (sigma_max / sigma_min)^t.

    Following Song et al., the marginal is x_t = x_0 + sigma(t) z (eq. 31): the data at t = 0
    already carries the smallest noise level sigma_min. Its discretization is NCSN's geometric
    ladder sigma_i = exp(linspace(log sigma_min, log sigma_max, N))_i at t_i = i / (N - 1), which
    is sigma(t_i): a coarser ladder (`with_steps`) stays on the continuous marginal.
    """

    kind = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000):
        super().__init__(N)
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, "
                             f"sigma_max={sigma_max}")
        if self.N < 2:
            raise ValueError(f"N must be >= 2 for a VE ladder, got {N}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.discrete_sigmas = torch.exp(torch.linspace(
            math.log(self.sigma_min), math.log(self.sigma_max), self.N, dtype=torch.float64))

    def arguments(self) -> dict:
        return dict(sigma_min=self.sigma_min, sigma_max=self.sigma_max, N=self.N)

    def ladder_times(self) -> torch.Tensor:
        """t_i = i T / (N - 1), from T down; the last rung (t = 0, sigma_min) is nudged to a tiny
        positive time that rounds to it, as time grids must stay above 0 (sigma there is
        sigma_min to 1e-8 relative)."""
        times = torch.linspace(self.T, 0.0, self.N, dtype=torch.float64)
        times[-1] = 1e-9 * self.T / (self.N - 1)
        return times

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def time_of_noise_level(self, s, lo: float = 0.0, iterations: int = 60):
        """Closed form: t = log(s / sigma_min) / log(sigma_max / sigma_min)."""
        s = torch.as_tensor(s, dtype=torch.float64)
        t = torch.log(s / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)
        return t.clamp(lo, self.T)

    def sde(self, x, t):
        t = batch_of(t, x)
        diffusion = self.sigma(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))
        return torch.zeros_like(x), diffusion

    def alpha_sigma(self, t):
        t = torch.as_tensor(t)
        return torch.ones_like(t), self.sigma(t)

    def prior_sampling(self, shape, generator=None):
        return normal(shape, generator) * self.sigma_max

    def prior_logp(self, z):
        d = z[0].numel()
        return (-0.5 * d * np.log(2 * np.pi * self.sigma_max**2)
                - sum_except_batch(z**2) / (2 * self.sigma_max**2))

    def timestep_index(self, t: torch.Tensor) -> torch.Tensor:
        """Index i of the ladder rung that continuous time t falls on, t_i = i / (N - 1)."""
        return (t * (self.N - 1) / self.T).round().long().clamp(0, self.N - 1)

    def rung_alpha_sigma(self, t):
        """1 and the ladder's own sigma_i at the rung t falls on."""
        sigma = self.discrete_sigmas[self.timestep_index(torch.as_tensor(t)).cpu()]
        return torch.ones_like(sigma), sigma

    def rung_sigmas(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sigma_i of the rung each t falls on and sigma_{i-1} below it, sigma_{-1} = 0 (float64,
        on t's device): the step NCSN's chain and its ancestral sampler both take."""
        index = self.timestep_index(t)
        sigmas = self.discrete_sigmas.to(index.device)
        sigma = sigmas[index]
        return sigma, torch.where(index == 0, torch.zeros_like(sigma), sigmas[(index - 1).clamp(min=0)])

    def discretize(self, x, t):
        """NCSN's chain x_i = x_{i-1} + sqrt(sigma_i^2 - sigma_{i-1}^2) z with sigma_{-1} = 0."""
        sigma, below = self.rung_sigmas(batch_of(t, x))
        return torch.zeros_like(x), torch.sqrt(sigma**2 - below**2).to(x.dtype)


def noise_ladder(process) -> torch.Tensor:
    """NCSN's ladder sigma_1 > ... > sigma_L (float64): a VE process's discrete sigmas, largest
    first (Song & Ermon, 2019, section 4.2)."""
    if not isinstance(process, VESDE):
        raise ValueError(f"the NCSN noise ladder needs a ve process, not {type(process).__name__}")
    return process.discrete_sigmas.flip(0)
