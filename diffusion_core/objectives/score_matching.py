"""Score-matching objectives of the noise-conditioned score network approach.

Every objective returns one value per example; the caller reduces. A score model is called as
score_fn(x, sigma) with sigma a (B,) tensor (its noise condition); for an unconditional model
pass a constant (the default sigma=0.0 stands for clean data). An energy model enters through
`diffusion_core.models.energy.EnergyScore`, whose score is -grad_x E.

Objectives that differentiate the score in x (exact and sliced score matching) keep the graph
(create_graph=True), so the returned values back-propagate into the model's parameters.
"""
from __future__ import annotations

import math

import torch

from diffusion_core.tensors import batch_of, sum_except_batch

PROJECTIONS = ("gaussian", "rademacher")
EXACT_MAX_DIM = 64


def validate_sigmas(sigmas) -> torch.Tensor:
    """The noise ladder as a float64 1-D tensor; ValueError (naming `sigmas`) unless it is
    non-empty, finite, positive and strictly decreasing (sigma_1 > ... > sigma_L > 0)."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    if sigmas.ndim != 1 or sigmas.numel() == 0:
        raise ValueError(f"sigmas must be a non-empty 1-D ladder, got shape {tuple(sigmas.shape)}")
    if not torch.isfinite(sigmas).all() or (sigmas <= 0).any():
        raise ValueError(f"sigmas must be finite and positive, got {sigmas.tolist()}")
    if (sigmas[1:] >= sigmas[:-1]).any():
        raise ValueError(f"sigmas must be strictly decreasing (sigma_1 > ... > sigma_L), "
                         f"got {sigmas.tolist()}")
    return sigmas


def geometric_sigmas(sigma_max: float, sigma_min: float, L: int) -> torch.Tensor:
    """L noise levels in geometric progression from sigma_max down to sigma_min
    (Song & Ermon, 2019, section 4.2), float64."""
    if not isinstance(L, int) or L < 1:
        raise ValueError(f"L (number of noise levels) must be a positive integer, got {L!r}")
    if not (sigma_max > 0 and sigma_min > 0):
        raise ValueError(f"sigmas must be positive: sigma_max={sigma_max}, sigma_min={sigma_min}")
    if L == 1:
        return validate_sigmas([float(sigma_max)])
    if not sigma_max > sigma_min:
        raise ValueError(f"sigmas must be strictly decreasing: need sigma_max > sigma_min, "
                         f"got sigma_max={sigma_max}, sigma_min={sigma_min}")
    ladder = torch.logspace(math.log10(sigma_max), math.log10(sigma_min), L, dtype=torch.float64)
    return validate_sigmas(ladder)


def _leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().requires_grad_(True)


def exact_score_matching(score_fn, x: torch.Tensor, sigma=0.0,
                         max_dim: int = EXACT_MAX_DIM) -> torch.Tensor:
    """Hyvarinen (2005), eq. 4: 1/2 ||s(x)||^2 + tr(grad_x s(x)), the Fisher divergence after
    integration by parts. The Hessian trace takes one backward pass per data dimension, so
    this is for low dimension only: data with more than `max_dim` dims is refused."""
    dim = x[0].numel()
    if dim > max_dim:
        raise ValueError(f"exact score matching is for low dimension: x has {dim} dims per "
                         f"example, more than max_dim={max_dim}; use sliced or denoising "
                         f"score matching")
    x = _leaf(x)
    score = score_fn(x, batch_of(sigma, x)).flatten(1)
    trace = torch.zeros_like(score[:, 0])
    for i in range(dim):
        (grad,) = torch.autograd.grad(score[:, i].sum(), x, create_graph=True)
        trace = trace + grad.flatten(1)[:, i]
    return 0.5 * (score**2).sum(1) + trace


def random_projections(shape, kind: str = "gaussian", generator=None, dtype=torch.float32):
    """Projection vectors v with E[v v^T] = I: standard Gaussian or Rademacher (+-1)."""
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, dtype=dtype)
    if kind == "rademacher":
        return torch.randint(0, 2, shape, generator=generator).to(dtype) * 2 - 1
    raise ValueError(f"projection must be one of {PROJECTIONS}, got {kind!r}")


def sliced_score_matching(score_fn, x: torch.Tensor, sigma=0.0, n_projections: int = 1,
                          projection: str = "gaussian", variance_reduction: bool = True,
                          generator=None, v: torch.Tensor | None = None) -> torch.Tensor:
    """Sliced score matching (Song et al., 2019, eq. 7): v^T grad_x(v^T s) + 1/2 (v^T s)^2,
    or with variance reduction (SSM-VR, eq. 8) v^T grad_x(v^T s) + 1/2 ||s||^2, which uses
    E[(v^T s)^2] = ||s||^2 (valid since E[v v^T] = I). Averaged over `n_projections` draws
    per example; `v` (n_projections, *x.shape) makes the projections explicit."""
    if n_projections < 1:
        raise ValueError(f"n_projections must be >= 1, got {n_projections}")
    if v is None:
        v = random_projections((n_projections,) + tuple(x.shape), projection, generator, x.dtype)
    n = v.shape[0]
    xs = _leaf(x.repeat((n,) + (1,) * (x.ndim - 1)))
    vs = v.reshape(xs.shape).to(xs)
    score = score_fn(xs, batch_of(sigma, x).repeat(n))
    projected = sum_except_batch(vs * score)
    (grad,) = torch.autograd.grad(projected.sum(), xs, create_graph=True)
    second = sum_except_batch(vs * grad)
    first = 0.5 * sum_except_batch(score**2) if variance_reduction else 0.5 * projected**2
    return (second + first).reshape(n, x.shape[0]).mean(0)


def denoising_score_matching(score_fn, x: torch.Tensor, sigma, noise: torch.Tensor | None = None,
                             generator=None) -> torch.Tensor:
    """Vincent (2011), eq. 11 with a Gaussian kernel: 1/2 || s(x~, sigma) + (x~ - x)/sigma^2 ||^2
    with x~ = x + sigma z. Its minimiser is the score of the data convolved with N(0, sigma^2 I),
    which differs from the data score by O(sigma^2)."""
    sigma = batch_of(sigma, x)
    if (sigma <= 0).any():
        raise ValueError(f"sigma must be positive for denoising score matching, got {sigma}")
    if noise is None:
        noise = torch.randn(x.shape, generator=generator).to(x)
    s = sigma.reshape((-1,) + (1,) * (x.ndim - 1))
    score = score_fn(x + s * noise, sigma)
    return 0.5 * sum_except_batch((score + noise / s) ** 2)


def ncsn_loss(score_fn, x: torch.Tensor, sigmas, generator=None, labels=None,
              noise: torch.Tensor | None = None) -> torch.Tensor:
    """The NCSN objective (Song & Ermon, 2019, eq. 5-6): one noise level sigma_i per example,
    drawn uniformly from the ladder (or given as `labels`), weighted by lambda(sigma) =
    sigma^2, which makes every level's term O(1): 1/2 || sigma s(x~, sigma) + z ||^2."""
    sigmas = validate_sigmas(sigmas).to(x.device)
    if labels is None:
        labels = torch.randint(0, len(sigmas), (x.shape[0],), generator=generator)
    sigma = sigmas[labels.to(sigmas.device)].to(x.dtype)
    return sigma**2 * denoising_score_matching(score_fn, x, sigma, noise, generator)
