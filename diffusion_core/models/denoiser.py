"""The one wrapper at the network boundary: raw network output -> x0, eps or score.

Any Gaussian diffusion state is x = alpha x0 + sigma eps. Writing x_tilde = x / alpha and the
noise level s = sigma / alpha (EDM's sigma; Karras et al., 2022, section 4) makes VP and VE
processes the same problem: x_tilde = x0 + s eps. What the network sees is the conditioning's
choice (`conditioning.py`): by default EDM's unit-variance input c_in(s) x_tilde and the
condition c_noise(s) = log(s) / 4; DDPM's x_t and timestep t; NCSNv2's x_tilde alone. How its
output F is read is the parameterization's:

  "eps": eps_hat = F                               (Ho et al., 2020)
  "x0":  x0_hat  = F
  "edm": x0_hat  = c_skip(s) x_tilde + c_out(s) F  (Karras et al., 2022, eq. 7, table 1)

Losses and samplers only call `Denoiser`; they never branch on the process, the
conditioning or the parameterization.

`Denoiser(x, alpha, sigma)` is the one model convention of the core's API: every sampler
registered in `samplers.registry` and every loss takes a denoiser. Where a paper's own form reads
more clearly, an adapter below turns the denoiser into it, and the inner functions use that
form: the score-SDE paper's s(x, t) (`score_of_time`), NCSN's s(x, sigma) (`score_of_noise_level`).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from diffusion_core.models.conditioning import EDMConditioning, edm_input_scale
from diffusion_core.tensors import append_dims, batch_of
from diffusion_core.types import ScoreFn

PARAMETERIZATIONS = ("eps", "x0", "edm")


class Prediction(NamedTuple):
    x0: torch.Tensor
    eps: torch.Tensor


class Denoiser(nn.Module):
    """Wraps a network F(x_in, c) into a denoiser D(x; alpha, sigma). `conditioning` decides
    x_in and c (conditioning.py; EDM's by default, as every model saved before the choice)."""

    def __init__(self, net: nn.Module, parameterization: str = "edm", sigma_data: float = 0.5,
                 conditioning=None):
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, "
                             f"got {parameterization!r}")
        if sigma_data <= 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.net, self.parameterization, self.sigma_data = net, parameterization, sigma_data
        self.conditioning = conditioning or EDMConditioning(sigma_data)

    def coefficients(self, s: torch.Tensor):
        """EDM preconditioning c_skip, c_out, c_in (table 1), each shaped like s."""
        total = s**2 + self.sigma_data**2
        return self.sigma_data**2 / total, s * self.sigma_data / total.sqrt(), edm_input_scale(s, self.sigma_data)

    def raw(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor):
        """Network output F, with the rescaled input x_tilde and noise level s it was given.
        The network may live on another device than x (a sampler on the CPU driving a network
        on a GPU): its input goes there and its output comes back to x's device."""
        s = sigma / alpha
        x_tilde = x / append_dims(alpha, x.ndim)
        x_in, condition = self.conditioning(x, alpha, s, x_tilde)
        device = _device_of(self.net, x.device)
        out = self.net(x_in.to(device), condition.to(device))
        return out.to(x.device), x_tilde, s

    def forward(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> Prediction:
        out, x_tilde, s = self.raw(x, alpha, sigma)
        s_ = append_dims(s, x.ndim)
        if self.parameterization == "eps":
            return Prediction(x_tilde - s_ * out, out)
        if self.parameterization == "x0":
            x0 = out
        else:
            c_skip, c_out, _ = self.coefficients(s)
            x0 = append_dims(c_skip, x.ndim) * x_tilde + append_dims(c_out, x.ndim) * out
        return Prediction(x0, (x_tilde - x0) / s_)

    def score(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """grad_x log p_t(x) = -eps / sigma (Tweedie's formula)."""
        return -self(x, alpha, sigma).eps / append_dims(sigma, x.ndim)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, alpha, sigma) -> torch.Tensor:
        """What F should output for the state alpha x0 + sigma noise (unit loss weight)."""
        if self.parameterization == "eps":
            return noise
        if self.parameterization == "x0":
            return x0
        s = sigma / alpha
        c_skip, c_out, _ = self.coefficients(s)
        x_tilde = x0 + append_dims(s, x0.ndim) * noise
        return (x0 - append_dims(c_skip, x0.ndim) * x_tilde) / append_dims(c_out, x0.ndim)


def _device_of(net: nn.Module, default: torch.device) -> torch.device:
    """Where the network's weights are (`default` for a network without any)."""
    parameter = next(net.parameters(), None)
    return parameter.device if parameter is not None else default


def predict_x0(denoiser: Denoiser, x: torch.Tensor, alpha, sigma, clip: float | None):
    """The denoiser's x0 estimate at scalar or per-example alpha, sigma, clipped to +-clip."""
    x0 = denoiser(x, batch_of(alpha, x), batch_of(sigma, x)).x0
    return x0.clamp(-clip, clip) if clip is not None else x0


def score_of_time(denoiser: Denoiser, process) -> ScoreFn:
    """The score-SDE paper's s(x, t) = grad_x log p_t(x) = -eps_hat / sigma(t) (Tweedie), with
    alpha(t), sigma(t) of `process` and t a scalar or a (B,) tensor."""
    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = process.alpha_sigma(batch_of(t, x))
        return denoiser.score(x, alpha.to(x), sigma.to(x))
    return score


def score_of_noise_level(denoiser: Denoiser) -> ScoreFn:
    """NCSN's s(x, sigma) on the VE path (alpha = 1), sigma a (B,) tensor."""
    return lambda x, sigma: denoiser.score(x, torch.ones_like(sigma), sigma)
