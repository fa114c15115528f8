"""What the network sees and is conditioned on, at the one network boundary (`Denoiser`).

The state is x = alpha x0 + sigma eps, or x_tilde = x / alpha = x0 + s eps with s = sigma / alpha.
A conditioning maps (x, alpha, s) to the network's input and its scalar condition; how the
network's output is read (the parameterization) is the Denoiser's other, separate choice.

  "edm":    input c_in(s) x_tilde, condition ln(s) / 4     (Karras et al., 2022, table 1)
  "ddpm":   input x_t itself, condition DDPM's timestep t   (Ho et al., 2020: the network sees
            x_t and the integer t in 0 .. N-1, embedded by the Transformer's sinusoids; a
            noise level between the chain's rungs gets the fractional t interpolated in log s)
  "ncsnv2": input x_tilde, no condition (a constant 0)      (Song & Ermon, 2020, technique 3:
            an unconditional network whose output is divided by sigma, i.e. read as eps)

Samplers and losses never see this choice: they call the Denoiser with (x, alpha, sigma).
"""
from __future__ import annotations

import torch

from diffusion_core.tensors import append_dims

CONDITIONINGS = ("edm", "ddpm", "ncsnv2")
# the embedding of the condition each conditioning's network needs (models.networks.EMBEDDINGS)
EMBEDDING_OF = {"edm": "fourier", "ddpm": "positional", "ncsnv2": "fourier"}


def edm_input_scale(s: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """EDM's c_in(s) = 1 / sqrt(s^2 + sigma_data^2): a unit-variance network input."""
    return (s**2 + sigma_data**2).rsqrt()


class EDMConditioning:
    """Karras et al. (2022), table 1: c_in(s) x_tilde and c_noise = ln(s) / 4."""

    name = "edm"

    def __init__(self, sigma_data: float):
        self.sigma_data = sigma_data

    def __call__(self, x, alpha, s, x_tilde):
        return append_dims(edm_input_scale(s, self.sigma_data), x.ndim) * x_tilde, torch.log(s) / 4


class DDPMConditioning:
    """Ho et al. (2020): the network F(x_t, t) sees the chain's state x_t and its timestep index
    t (0 .. N-1, the paper's t - 1, as its code feeds it). `noise_levels` are the chain's s_i,
    increasing in i; a level between two rungs gets the fractional index linear in log s
    (the probability-flow ODE and the few-step solvers ask there), one outside them the end's."""

    name = "ddpm"

    def __init__(self, noise_levels: torch.Tensor):
        log_s = torch.log(torch.as_tensor(noise_levels, dtype=torch.float64))
        if log_s.ndim != 1 or log_s.numel() < 2 or not bool((log_s[1:] > log_s[:-1]).all()):
            raise ValueError("ddpm conditioning needs the chain's increasing noise levels s_0 < ... < s_{N-1}")
        self.log_s = log_s

    def timestep(self, s: torch.Tensor) -> torch.Tensor:
        """The (fractional) chain index whose noise level is s, as float32 on s's device."""
        log_s, table = torch.log(s.detach().double().cpu()), self.log_s
        upper = torch.searchsorted(table, log_s).clamp(1, table.numel() - 1)
        low, high = table[upper - 1], table[upper]
        fraction = ((log_s - low) / (high - low)).clamp(0, 1)
        return (upper - 1 + fraction).float().to(s.device)

    def __call__(self, x, alpha, s, x_tilde):
        return x, self.timestep(s)


class NCSNv2Conditioning:
    """Song & Ermon (2020), technique 3: an unconditional network on x_tilde; the 1/sigma of its
    score s = -F / sigma is the "eps" parameterization's reading. The network's condition is the
    constant 0, so its embedding is a learned constant."""

    name = "ncsnv2"

    def __call__(self, x, alpha, s, x_tilde):
        return x_tilde, torch.zeros_like(s)


def build_conditioning(kind: str, sigma_data: float, process=None):
    """The conditioning named `kind`; "ddpm" needs the model's vp process (its chain's levels)."""
    if kind == "edm":
        return EDMConditioning(sigma_data)
    if kind == "ncsnv2":
        return NCSNv2Conditioning()
    if kind == "ddpm":
        betas = getattr(process, "discrete_betas", None)
        if betas is None:
            raise ValueError("conditioning 'ddpm' conditions on DDPM's timestep, so it needs a vp "
                             f"process (its chain), not {type(process).__name__}")
        alpha_bar = torch.cumprod(1 - torch.as_tensor(betas, dtype=torch.float64), 0)
        return DDPMConditioning(((1 - alpha_bar) / alpha_bar).sqrt())
    raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {kind!r}")
