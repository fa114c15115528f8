"""Exact denoisers for test data whose every noisy marginal is known in closed form.

For x0 ~ sum_k w_k N(mu_k, std^2 I) and x_t = alpha x0 + sigma z, each component stays Gaussian:
x_t | k ~ N(alpha mu_k, v I) with v = alpha^2 std^2 + sigma^2. So the posterior responsibilities,
the posterior mean E[x0 | x_t] and the score grad log p_t are exact, which lets a test drive any
sampler with a perfect model and compare what comes out against the data distribution.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from diffusion_core.models.denoiser import Prediction


def _per_example(value, x: torch.Tensor) -> torch.Tensor:
    """A float64 (B,) tensor from a scalar or a (B,) tensor."""
    value = torch.as_tensor(value, dtype=torch.float64, device=x.device)
    return value.expand(x.shape[0]) if value.ndim == 0 else value.to(torch.float64)


class GaussianMixtureDenoiser(nn.Module):
    """The exact posterior-mean denoiser D(x; alpha, sigma) = E[x0 | x_t = x] of an isotropic
    Gaussian mixture; a drop-in replacement for `diffusion_core.models.denoiser.Denoiser`.

    Computes in float64 and returns the input's dtype (float32 for float32 input).
    """

    def __init__(self, weights, means, std: float):
        super().__init__()
        weights = torch.as_tensor(np.asarray(weights), dtype=torch.float64)
        means = torch.as_tensor(np.asarray(means), dtype=torch.float64)
        if means.ndim != 2 or weights.shape != (means.shape[0],):
            raise ValueError(f"need weights (K,) and means (K, D), got {tuple(weights.shape)}, "
                             f"{tuple(means.shape)}")
        if not torch.isclose(weights.sum(), torch.tensor(1.0, dtype=torch.float64)):
            raise ValueError(f"weights must sum to 1, got {float(weights.sum())}")
        if std <= 0:
            raise ValueError(f"std must be positive, got {std}")
        self.register_buffer("weights", weights)
        self.register_buffer("means", means)
        self.std = float(std)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _components(self, x: torch.Tensor, alpha, sigma):
        """Flattened float64 x (B, D), per-example alpha and sigma, the component variance
        v = alpha^2 std^2 + sigma^2 and the log-likelihood of each component up to a term
        constant in k (B, K). Written with matmuls: no (B, K, D) intermediate."""
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        if flat.shape[1] != self.dim:
            raise ValueError(f"x has {flat.shape[1]} dims per example, the mixture {self.dim}")
        a, s = _per_example(alpha, x), _per_example(sigma, x)
        var = a**2 * self.std**2 + s**2
        # -|x - a mu_k|^2 / (2v) = (a x.mu_k - a^2 |mu_k|^2 / 2) / v - |x|^2 / (2v)
        cross = a[:, None] * (flat @ self.means.T) - 0.5 * a[:, None] ** 2 * (self.means**2).sum(1)
        logits = torch.log(self.weights)[None] + cross / var[:, None]
        return flat, a, s, var, logits

    def _mean_of_means(self, logits: torch.Tensor) -> torch.Tensor:
        """sum_k r_k(x) mu_k with the posterior responsibilities r = softmax(logits)."""
        return torch.softmax(logits, dim=1) @ self.means

    def posterior_mean(self, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
        """E[x0 | x_t = x] in float64, shaped (B, D): sum_k r_k (mu_k + c (x - a mu_k))
        with c = a std^2 / v."""
        flat, a, _, var, logits = self._components(x, alpha, sigma)
        c = (a * self.std**2 / var)[:, None]
        return c * flat + (1 - c * a[:, None]) * self._mean_of_means(logits)

    def score(self, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
        """grad_x log p_t(x) = -(x - a sum_k r_k mu_k) / v, exact, in x's dtype and shape."""
        flat, a, _, var, logits = self._components(x, alpha, sigma)
        score = -(flat - a[:, None] * self._mean_of_means(logits)) / var[:, None]
        return score.reshape(x.shape).to(x.dtype)

    def forward(self, x: torch.Tensor, alpha, sigma) -> Prediction:
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        a, s = _per_example(alpha, x), _per_example(sigma, x)
        x0 = self.posterior_mean(x, alpha, sigma)
        eps = (flat - a[:, None] * x0) / s[:, None]
        return Prediction(x0.reshape(x.shape).to(x.dtype), eps.reshape(x.shape).to(x.dtype))

    def log_prob(self, x: torch.Tensor, alpha=1.0, sigma=0.0) -> torch.Tensor:
        """log p_t(x) per example (alpha=1, sigma=0: the data density itself), float64."""
        flat, _, _, var, logits = self._components(x, alpha, sigma)
        d = flat.shape[1]
        return (torch.logsumexp(logits, dim=1) - 0.5 * (flat**2).sum(1) / var
                - 0.5 * d * torch.log(2 * math.pi * var))

    def sample(self, n: int, generator: torch.Generator | None = None):
        """n float32 draws from the data distribution and the component each came from."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.means[k] + self.std * z).float(), k

    def nearest_component(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the closest mean per example (the component, for well-separated mixtures)."""
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        return torch.cdist(flat, self.means).argmin(dim=1)

    def component_fractions(self, x: torch.Tensor) -> torch.Tensor:
        counts = torch.bincount(self.nearest_component(x), minlength=len(self.weights))
        return counts.double() / len(x)


def two_mode_mixture() -> GaussianMixtureDenoiser:
    """0.8 N((5, 5), I) + 0.2 N((-5, -5), I): unbalanced, far apart, far from unit scale."""
    return GaussianMixtureDenoiser([0.8, 0.2], [[5.0, 5.0], [-5.0, -5.0]], 1.0)


def gmm8_mixture() -> GaussianMixtureDenoiser:
    """The 'gmm8' toy: eight narrow modes on a circle of radius 2."""
    from diffusion_core.data.toys import gmm8_params

    weights, means, std = gmm8_params()
    return GaussianMixtureDenoiser(weights, means, std)
