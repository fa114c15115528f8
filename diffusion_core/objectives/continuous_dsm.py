"""Continuous-time denoising score matching (Song et al., 2021, eq. 7) for any process:

    J = E_{t ~ U(eps, T)} E_{x0, z} [ lambda(t) || s_theta(x_t, t) + z / sigma_t ||^2 ],
    x_t = alpha_t x0 + sigma_t z.

With s_theta = -eps_hat / sigma_t the score error is || eps_hat - z ||^2 / sigma_t^2, so a
weighting is w(t) = lambda(t) / sigma_t^2 on the eps error (`dsm_weight`). Every weighting is a
distribution over the log noise level ln s, s = sigma / alpha, since d ln s / dt = g^2 / (2
sigma^2) for every process; `importance` draws t from that distribution instead of uniformly and
divides by its density (the same objective, less variance; Song et al., 2021b, section 5.1).
"""
from __future__ import annotations

import math

import torch

from diffusion_core.models.denoiser import Denoiser
from diffusion_core.tensors import append_dims, mean_except_batch

DSM_WEIGHTINGS = ("sigma2", "likelihood", "lognormal")


def _g2(process, t: torch.Tensor) -> torch.Tensor:
    return process.sde(torch.zeros(len(t), 1, dtype=t.dtype), t)[1] ** 2


def dsm_weight(process, t: torch.Tensor, weighting: str, eps: float = 1e-5, p_mean: float = -1.2,
               p_std: float = 1.2, sigma_data: float = 0.5) -> torch.Tensor:
    """w(t) = lambda(t) / sigma_t^2, the weight of || eps_hat - z ||^2 (float64).

    "sigma2":     lambda = sigma_t^2 (Song et al., 2021, section 3.3): w = 1.
    "likelihood": lambda = g(t)^2, the objective a bound on the negative log-likelihood (Song et
                  al., 2021b, theorem 1): w = g^2 / sigma^2 = d ln s^2 / dt, every log noise
                  level weighted alike.
    "lognormal":  EDM's objective (Karras et al., 2022, table 1) as a lambda over t ~ U(eps, T):
                  ln s ~ N(p_mean, p_std^2) with unit weight on the preconditioned output,
                  w = (T - eps) p(s) ds/dt (1 + s^2 / sigma_data^2), ds/dt = g^2 / (2 s alpha^2).
    """
    if weighting not in DSM_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {DSM_WEIGHTINGS}, got {weighting!r}")
    if weighting == "sigma2":
        return torch.ones_like(t)
    alpha, sigma = process.alpha_sigma(t)
    if weighting == "likelihood":
        return _g2(process, t) / sigma**2
    s = sigma / alpha
    density = torch.exp(-0.5 * ((s.log() - p_mean) / p_std) ** 2) / (s * p_std * math.sqrt(2 * math.pi))
    return (process.T - eps) * density * _g2(process, t) / (2 * s * alpha**2) * (1 + s**2 / sigma_data**2)


def _log_level_proposal(weighting: str, u: torch.Tensor, lo: float, hi: float, p_mean, p_std):
    """ln s on [lo, hi] by inverse CDF from u ~ U(0, 1), and its density there: the weighting's
    own distribution of log noise levels (uniform for "likelihood", normal for "lognormal")."""
    if weighting == "likelihood":
        return lo + (hi - lo) * u, torch.full_like(u, 1 / (hi - lo))
    normal = torch.distributions.Normal(torch.tensor(p_mean, dtype=u.dtype), p_std)
    a, b = normal.cdf(torch.tensor(lo, dtype=u.dtype)), normal.cdf(torch.tensor(hi, dtype=u.dtype))
    level = normal.icdf(a + (b - a) * u).clamp(lo, hi)
    return level, normal.log_prob(level).exp() / (b - a)


def draw_times(process, n: int, eps: float, weighting: str, importance: bool = False,
               p_mean: float = -1.2, p_std: float = 1.2, generator=None):
    """n times and their importance ratios r(t) = 1 / ((T - eps) q(t)) (float64): t ~ U(eps, T)
    with r = 1, or with `importance` (likelihood, lognormal) t from the weighting's ln s
    distribution q(ln s) mapped through s(t), so q(t) = q(ln s) g^2 / (2 sigma^2)."""
    if not 0 < eps < process.T:
        raise ValueError(f"eps must lie in (0, T={process.T}), got {eps}")
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    if not importance or weighting == "sigma2":
        return eps + (process.T - eps) * u, torch.ones_like(u)
    lo, hi = (math.log(float(process.noise_level(v))) for v in (eps, process.T))
    level, density = _log_level_proposal(weighting, u, lo, hi, p_mean, p_std)
    t = process.time_of_noise_level(level.exp(), eps).clamp(eps, process.T)
    _, sigma = process.alpha_sigma(t)
    return t, 2 * sigma**2 / (_g2(process, t) * density * (process.T - eps))


def continuous_dsm_loss(denoiser: Denoiser, process, x0: torch.Tensor, eps: float = 1e-5,
                        weighting: str = "sigma2", generator: torch.Generator | None = None,
                        p_mean: float = -1.2, p_std: float = 1.2,
                        importance: bool = False) -> torch.Tensor:
    """Per-example continuous DSM, w(t) || eps_hat(x_t, t) - z ||^2 averaged over each example's
    dims, times the importance ratio of t (see `draw_times`, `dsm_weight`)."""
    t, ratio = draw_times(process, x0.shape[0], eps, weighting, importance, p_mean, p_std, generator)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    alpha, sigma = (v.to(x0) for v in process.alpha_sigma(t))
    x = append_dims(alpha, x0.ndim) * x0 + append_dims(sigma, x0.ndim) * noise
    error = mean_except_batch((denoiser(x, alpha, sigma).eps - noise) ** 2)
    weight = dsm_weight(process, t, weighting, eps, p_mean, p_std, getattr(denoiser, "sigma_data", 0.5))
    return error * (weight * ratio).to(x0)
