"""NCSN inside `DiffusionModel`: the noise ladder, the score of a denoiser, and the per-example
score-matching objectives over the ladder (Song & Ermon, 2019) that `frameworks.LOSSES` names.

The ladder sigma_1 > ... > sigma_L is the VE process's discretization read from the top
(`VESDE(sigma_min, sigma_max, N=L).discrete_sigmas`, geometric), and the score model is the
model's `Denoiser` read as a score: s(x, sigma) = -eps(x; 1, sigma) / sigma. With the "eps"
parameterization that is NCSNv2's output scaling s = F / sigma (Song & Ermon, 2020,
technique 3, up to the sign of F). Energy models enter through `energy.EnergyDenoiser`, whose
eps is read off -grad_x E, so every objective and sampler here serves both kinds of model.

Each objective picks one ladder level per example (uniformly), weights by lambda(sigma) =
sigma^2 (Song & Ermon, 2019, eq. 6) and, like the pipeline's other losses, divides by the
data dimension so that `train.grad_clip` acts on the same scale for every data set.
"""
from __future__ import annotations

import torch

from diffusion_core.models.denoiser import score_of_noise_level
from diffusion_core.objectives import score_matching as sm
from diffusion_core.processes.sde import noise_ladder
from diffusion_core.tensors import append_dims


def _dims(x: torch.Tensor) -> int:
    return x[0].numel()


def dsm_objective(model, denoiser, x0, generator=None):
    """NCSN's denoising score matching over the ladder (Song & Ermon, 2019, eq. 5-6),
    lambda(sigma) = sigma^2, per data dimension."""
    return sm.ncsn_loss(score_of_noise_level(denoiser), x0, noise_ladder(model.process), generator) / _dims(x0)


def _perturbed(model, x0, generator):
    """x~ = x0 + sigma z at one ladder level sigma per example, and those levels."""
    sigmas = noise_ladder(model.process)
    labels = torch.randint(0, len(sigmas), (x0.shape[0],), generator=generator)
    sigma = sigmas[labels].to(x0)
    z = torch.randn(x0.shape, generator=generator).to(x0)
    return x0 + append_dims(sigma, x0.ndim) * z, sigma


def ssm_objective(model, denoiser, x0, generator=None, n_projections=1, projection="rademacher",
                  variance_reduction=True):
    """Sliced score matching (Song et al., 2019, eq. 7-8) of each perturbed distribution
    p_sigma at one ladder level per example (NCSN with SSM: Song & Ermon, 2019, section 4.2),
    lambda(sigma) = sigma^2, per data dimension."""
    x, sigma = _perturbed(model, x0, generator)
    loss = sm.sliced_score_matching(score_of_noise_level(denoiser), x, sigma, n_projections, projection,
                                    variance_reduction, generator)
    return sigma**2 * loss / _dims(x0)


def exact_objective(model, denoiser, x0, generator=None):
    """Exact score matching (Hyvarinen, 2005, eq. 4: 1/2 |s|^2 + tr grad_x s) of each perturbed
    distribution at one ladder level per example, lambda(sigma) = sigma^2, per data dimension;
    data of more than `score_matching.EXACT_MAX_DIM` dims is refused."""
    x, sigma = _perturbed(model, x0, generator)
    return sigma**2 * sm.exact_score_matching(score_of_noise_level(denoiser), x, sigma) / _dims(x0)
