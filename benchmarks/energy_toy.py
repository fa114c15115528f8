"""Training an energy model on gmm8 convolved with N(0, S0^2), whose score is known exactly:
the steps of sliced score matching and of MCMC maximum likelihood, the training loop and the
score error. Shared by `ncsn_training_cost.py` and the test that bounds the error."""
from __future__ import annotations

import time

import torch

from diffusion_core.models.analytic import gmm8_mixture
from diffusion_core.models.energy import EnergyMLP, EnergyScore
from diffusion_core.objectives.ebm_mcmc import (
    ReplayBuffer,
    mcmc_ml_loss,
    persistent_samples,
    uniform_init,
)
from diffusion_core.objectives.score_matching import sliced_score_matching

S0 = 0.3  # gmm8 (std 0.15) convolved with N(0, 0.3^2): the target the energies are trained on
TRAIN_STEPS = 2000


def noisy_gmm8(mix, n, g):
    x, _ = mix.sample(n, g)
    return x + S0 * torch.randn(n, 2, generator=g)


def train_energy(step_fn, steps: int = TRAIN_STEPS, seed: int = 0) -> tuple[EnergyScore, float]:
    torch.manual_seed(seed)
    model = EnergyScore(EnergyMLP(2, width=64, depth=3))
    opt = torch.optim.Adam(model.parameters(), **step_fn.adam)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        step_fn(model).backward()
        opt.step()
        sched.step()
    return model, time.perf_counter() - start


def score_mse(model: EnergyScore, mix) -> tuple[float, float]:
    """Mean |s_model - s_true|^2 on 4000 held-out noisy points, and mean |s_true|^2."""
    x = noisy_gmm8(mix, 4000, torch.Generator().manual_seed(99))
    true = mix.score(x, 1.0, S0)
    with torch.no_grad():
        err = ((model(x, S0) - true) ** 2).sum(1).mean().item()
    return err, (true**2).sum(1).mean().item()


def energy_training_steps(seed: int = 0):
    """One training step each of an energy model on gmm8 at noise S0 (batch 256): sliced score
    matching, and MCMC maximum likelihood by persistent contrastive divergence with 10
    Langevin steps per update; each carries its Adam settings."""
    mix, g = gmm8_mixture(), torch.Generator().manual_seed(seed)

    def ssm_step(model):
        return sliced_score_matching(model, noisy_gmm8(mix, 256, g), S0, generator=g).mean()

    buffer = ReplayBuffer(uniform_init(-3.0, 3.0, (2,)), 10000, 0.05, g)

    def mcmc_step(model):
        energy = lambda y: model.energy(y, S0)
        x_model = persistent_samples(energy, buffer, 256, 0.01, 10, generator=g)
        return mcmc_ml_loss(energy, noisy_gmm8(mix, 256, g), x_model)

    ssm_step.adam, mcmc_step.adam = dict(lr=5e-3), dict(lr=1e-2, betas=(0.0, 0.999))
    return ssm_step, mcmc_step
