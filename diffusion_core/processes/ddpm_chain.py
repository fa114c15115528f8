"""DDPM's discrete Markov chain (Ho et al., 2020) in closed form.

Index i = 0 .. N-1 stands for the paper's t = i + 1. The chain is built from a process's
discrete betas (`VPSDE.discrete_betas`), so the math is not kept twice.
"""
from __future__ import annotations

import torch

from diffusion_core.tensors import append_dims


class DDPMChain:
    """Closed forms of q(x_t | x_0) and the posterior q(x_{t-1} | x_t, x_0)."""

    def __init__(self, betas: torch.Tensor):
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a 1-D schedule with every value in (0, 1)")
        self.betas = betas
        self.N = betas.numel()
        self.alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64),
                                              self.alphas_cumprod[:-1]])
        # Posterior variance beta_tilde (eq. 7); zero at i = 0, where the chain ends at x_0.
        self.posterior_variance = betas * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)
        # Every coefficient is formed here in float64 and only cast when used: 1 - alpha_bar is
        # ~1e-4 near t = 1 and loses most of float32's digits if formed after the cast.
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1 - self.alphas_cumprod).sqrt()
        self.posterior_coef_x0 = self.alphas_cumprod_prev.sqrt() * betas / (1 - self.alphas_cumprod)
        self.posterior_coef_xt = ((1 - betas).sqrt() * (1 - self.alphas_cumprod_prev)
                                  / (1 - self.alphas_cumprod))
        self.eps_coef = betas / self.sqrt_one_minus_alphas_cumprod
        self.recip_sqrt_alphas = (1 - betas).rsqrt()

    @classmethod
    def from_process(cls, process) -> "DDPMChain":
        return cls(process.discrete_betas)

    def _take(self, table: torch.Tensor, index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return append_dims(table.to(like.device)[index].to(like.dtype), like.ndim)

    def alpha_sigma(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sqrt(alpha_bar_i) and sqrt(1 - alpha_bar_i), per example."""
        index = index.cpu()
        return (self.sqrt_alphas_cumprod[index].float(),
                self.sqrt_one_minus_alphas_cumprod[index].float())

    def noise_level(self, index) -> torch.Tensor:
        """EDM noise level s_i = sigma_i / alpha_i of the rescaled chain x_i / alpha_i."""
        alpha_bar = self.alphas_cumprod[torch.as_tensor(index)]
        return ((1 - alpha_bar) / alpha_bar).sqrt()

    def q_mean_std(self, x0: torch.Tensor, index: torch.Tensor):
        """q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I) (eq. 4)."""
        return (self._take(self.sqrt_alphas_cumprod, index, x0) * x0,
                self._take(self.sqrt_one_minus_alphas_cumprod, index, x0))

    def q_sample(self, x0: torch.Tensor, index: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        mean, std = self.q_mean_std(x0, index)
        return mean + std * noise

    def posterior_mean_variance(self, x0: torch.Tensor, xt: torch.Tensor, index: torch.Tensor):
        """q(x_{t-1} | x_t, x_0) = N(mu_tilde, beta_tilde I) (eqs. 6-7)."""
        coef_x0 = self._take(self.posterior_coef_x0, index, xt)
        coef_xt = self._take(self.posterior_coef_xt, index, xt)
        return coef_x0 * x0 + coef_xt * xt, self._take(self.posterior_variance, index, xt)

    def mean_from_eps(self, xt: torch.Tensor, eps: torch.Tensor, index: torch.Tensor):
        """mu_theta = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t) (eq. 11)."""
        return self._take(self.recip_sqrt_alphas, index, xt) * (
            xt - self._take(self.eps_coef, index, xt) * eps)
