"""Maximum-likelihood training of an energy-based model p(x) = exp(-E(x)) / Z by MCMC.

The log-likelihood gradient is grad_theta log p(x) = -grad_theta E(x) + E_{x'~p}[grad_theta E(x')]
(Hinton, 2002; Song & Kingma, 2021, "How to Train Your Energy-Based Models", eq. 3). The model
expectation is estimated with short-run Langevin chains (Nijkamp et al., 2019), optionally
started from a replay buffer of persistent chains (persistent contrastive divergence, Tieleman
2008; with a small re-initialised fraction as in Du & Mordatch, 2019, section 3.1).

An energy function here is a callable x -> (B,) energies, e.g.
`lambda x: energy_score.energy(x, c)` for an `EnergyScore`.
"""
from __future__ import annotations

from typing import Callable

import torch

from diffusion_core.samplers.langevin import check_count, check_positive

InitFn = Callable[[int, torch.Generator | None], torch.Tensor]


def mcmc_ml_loss(energy_fn, x_data: torch.Tensor, x_model: torch.Tensor,
                 l2_weight: float = 0.0) -> torch.Tensor:
    """E(x_data).mean() - E(x_model).mean(), a scalar: with x_model ~ p_theta (held fixed,
    detached), its parameter gradient is an unbiased estimate of minus the log-likelihood
    gradient, so descending it is maximum likelihood. `l2_weight` adds Du & Mordatch's (2019)
    regulariser l2_weight (E(x_data)^2 + E(x_model)^2).mean(), which keeps energies bounded."""
    e_data, e_model = energy_fn(x_data), energy_fn(x_model.detach())
    loss = e_data.mean() - e_model.mean()
    if l2_weight:
        loss = loss + l2_weight * (e_data**2 + e_model**2).mean()
    return loss


def short_run_langevin(energy_fn, x_init: torch.Tensor, step_size: float, n_steps: int,
                       noise_scale: float | None = None, generator=None) -> torch.Tensor:
    """n_steps of x <- x - (step_size/2) grad_x E(x) + noise_scale z from x_init (Nijkamp et
    al., 2019). noise_scale defaults to sqrt(step_size), exact Langevin dynamics; a smaller
    one is the common 'cold' short-run variant. Only x is differentiated: the parameters
    receive no gradient. Returns detached samples."""
    step_size = check_positive("step_size", step_size)
    check_count("n_steps", n_steps)
    noise_scale = step_size**0.5 if noise_scale is None else float(noise_scale)
    if noise_scale < 0:
        raise ValueError(f"noise_scale must be non-negative, got {noise_scale}")
    x = x_init.detach()
    with torch.enable_grad():
        for _ in range(n_steps):
            x.requires_grad_(True)
            (grad,) = torch.autograd.grad(energy_fn(x).sum(), x)
            z = torch.randn(x.shape, generator=generator).to(x)
            x = (x - 0.5 * step_size * grad + noise_scale * z).detach()
    return x


def uniform_init(low: float, high: float, event_shape) -> InitFn:
    """An initialiser drawing n points uniformly from [low, high]^event_shape."""
    def init(n: int, generator=None) -> torch.Tensor:
        return low + (high - low) * torch.rand((n,) + tuple(event_shape), generator=generator)
    return init


class ReplayBuffer:
    """Persistent Langevin chains: `sample` hands out stored states (a `reinit_fraction` of
    them replaced by fresh draws from `init_fn`), `push` writes the advanced states back."""

    def __init__(self, init_fn: InitFn, capacity: int = 10000, reinit_fraction: float = 0.05,
                 generator=None):
        check_count("capacity", capacity)
        if not 0 <= reinit_fraction <= 1:
            raise ValueError(f"reinit_fraction must lie in [0, 1], got {reinit_fraction}")
        self.init_fn, self.reinit_fraction, self.generator = init_fn, reinit_fraction, generator
        self.data = init_fn(capacity, generator)

    def __len__(self) -> int:
        return self.data.shape[0]

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n chain states and their buffer indices."""
        index = torch.randint(0, len(self), (n,), generator=self.generator)
        x = self.data[index].clone()
        fresh = torch.rand(n, generator=self.generator) < self.reinit_fraction
        if fresh.any():
            x[fresh] = self.init_fn(int(fresh.sum()), self.generator).to(x)
        return x, index

    def push(self, x: torch.Tensor, index: torch.Tensor) -> None:
        self.data[index] = x.detach().to(self.data)


def persistent_samples(energy_fn, buffer: ReplayBuffer, n: int, step_size: float, n_steps: int,
                       noise_scale: float | None = None, generator=None) -> torch.Tensor:
    """Model samples for one training step of persistent contrastive divergence: draw chain
    states from the buffer, run short-run Langevin, write them back, return them."""
    x, index = buffer.sample(n)
    x = short_run_langevin(energy_fn, x, step_size, n_steps, noise_scale, generator)
    buffer.push(x, index)
    return x
