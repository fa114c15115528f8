"""Exact log-likelihood through the probability-flow ODE (Song et al., 2021, appendix D.2).

Along the ODE dx/dt = v(x, t) = f(x, t) - 1/2 g(t)^2 score(x, t), the instantaneous change of
variables (Chen et al., 2018) gives d log p_t(x_t) / dt = -div v(x_t, t), so

    log p_eps(x) = log p_T(x_T) + int_eps^T div v(x_t, t) dt,

integrated jointly with x_t from t_eps to T by adaptive RK45 with per-sample step-size and error
control (`samplers.rk45.rk45_solve`), so example i's value does not depend on its batch. The
divergence is exact (one backward pass per dimension; for low dimension) or the
Hutchinson-Skilling estimate E[z^T (dv/dx) z] with Gaussian or Rademacher probes z held fixed
during a solve (Grathwohl et al., 2019, FFJORD). Several probes give several unbiased estimates
along the same trajectory, whose spread is the reported standard error.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from diffusion_core.processes.sde import SDE
from diffusion_core.samplers.rk45 import rk45_solve
from diffusion_core.samplers.sde import check_tolerances
from diffusion_core.tensors import sum_except_batch

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("gaussian", "rademacher")


class Likelihood(NamedTuple):
    logp: torch.Tensor    # (B,) log-density of x under the model, in nats
    latent: torch.Tensor  # x_T, the ODE's image of x
    nfe: int              # evaluations of the ODE's right-hand side (each one score evaluation)
    stderr: torch.Tensor  # (B,) Monte Carlo standard error of logp: 0 when exact, nan for one probe


def _exact_divergence(drift, x: torch.Tensor, t: torch.Tensor, probes=None):
    """v(x, t) and tr(dv/dx) per example, one backward pass per dimension."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = drift(x, t)
        flat, dims = v.flatten(1), v[0].numel()
        div = torch.zeros(x.shape[0], dtype=v.dtype, device=v.device)
        for d in range(dims):
            (grad,) = torch.autograd.grad(flat[:, d].sum(), x, retain_graph=d < dims - 1)
            div = div + grad.flatten(1)[:, d]
    return v.detach(), div[None]


def _hutchinson_divergence(drift, x: torch.Tensor, t: torch.Tensor, probes: torch.Tensor):
    """v(x, t) and z_k^T (dv/dx) z_k for each probe z_k (K, B, ...): shape (K, B)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = drift(x, t)
        divs = []
        for k, z in enumerate(probes):
            (grad,) = torch.autograd.grad((v * z).sum(), x, retain_graph=k < len(probes) - 1)
            divs.append(sum_except_batch(grad * z))
    return v.detach(), torch.stack(divs)


def draw_probes(shape, n: int, kind: str, generator=None, dtype=torch.float64) -> torch.Tensor:
    """n probes shaped like x with E[z z^T] = I: standard normal or Rademacher (+-1)."""
    z = torch.randn((n, *shape), generator=generator, dtype=dtype)
    return z if kind == "gaussian" else torch.sign(z)


def _check_likelihood_args(divergence, probe, n_probes, rtol, atol, t_eps, T):
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if probe not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}, got {probe!r}")
    if int(n_probes) < 1:
        raise ValueError(f"n_probes must be >= 1, got {n_probes}")
    check_tolerances(rtol, atol)
    if not 0 < t_eps < T:
        raise ValueError(f"t_eps must lie in (0, T={T}), got {t_eps}")


def log_likelihood(score_fn, sde: SDE, x: torch.Tensor, divergence: str = "hutchinson",
                   probe: str = "rademacher", n_probes: int = 1, generator=None,
                   rtol: float = 1e-5, atol: float = 1e-5, t_eps: float = 1e-5) -> Likelihood:
    """log p(x) per example through the probability-flow ODE (instantaneous change of variables).

    The returned density is the model's p_{t_eps}; for VE that already carries sigma_min noise.
    With n_probes > 1 the Hutchinson estimate is the mean over probes and `stderr` their
    standard deviation over sqrt(n_probes).
    """
    _check_likelihood_args(divergence, probe, n_probes, rtol, atol, t_eps, sde.T)
    shape, dtype, device, batch = x.shape, x.dtype, x.device, x.shape[0]
    if divergence == "exact":
        estimate, k, probes = _exact_divergence, 1, None
    else:
        estimate, k = _hutchinson_divergence, int(n_probes)
        probes = draw_probes(shape, k, probe, generator, dtype).to(device)
    reverse = sde.reverse(score_fn, probability_flow=True)
    drift = lambda state, t: reverse.sde(state, t)[0]  # noqa: E731
    size = x[0].numel()

    def fun(t, y):  # y = (x_t flattened, the k running divergence integrals) per example
        v, div = estimate(drift, y[:, :size].to(dtype).reshape(shape), t, probes)
        return torch.cat([v.flatten(1), div.T], dim=1).double()

    y0 = torch.cat([x.detach().flatten(1).double(), torch.zeros(batch, k, dtype=torch.float64,
                                                                 device=device)], dim=1)
    end, nfe = rk45_solve(fun, y0, t_eps, sde.T, rtol, atol)
    latent = end[:, :size].to(dtype).reshape(shape)
    delta = end[:, size:].T.cpu()
    logps = sde.prior_logp(latent.double().cpu())[None] + delta
    stderr = torch.zeros(batch, dtype=torch.float64) if divergence == "exact" else (
        logps.std(dim=0) / math.sqrt(k) if k > 1 else torch.full((batch,), float("nan")))
    return Likelihood(logps.mean(dim=0), latent, nfe, stderr)


# --------------------------------------------------------------------------- bits per dimension


def bin_width(levels: int) -> float:
    """Spacing 2 / (levels - 1) of `levels` values y in {0, ..., levels - 1} mapped onto [-1, 1]
    by x = 2 y / (levels - 1) - 1 (8-bit images: levels = 256; sklearn's digits: 17)."""
    if int(levels) < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    return 2.0 / (int(levels) - 1)


def check_quantized(x: torch.Tensor, levels: int = 256) -> None:
    """ValueError unless every value of x lies in [-1, 1] on the grid of `levels` values."""
    lo, hi = float(x.min()), float(x.max())
    if lo < -1 - 1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"x must lie in [-1, 1] for bits/dim of {levels}-level data, "
                         f"got values in [{lo}, {hi}]")
    steps = (x.double() + 1) / bin_width(levels)
    off = float((steps - steps.round()).abs().max())
    if off > 1e-3:
        raise ValueError(f"x must lie on the grid of {levels} levels in [-1, 1] for bits/dim "
                         f"(spacing {bin_width(levels):.6g}); a value is {off:.3g} spacings off it")


def dequantize(x: torch.Tensor, levels: int = 256, generator=None) -> torch.Tensor:
    """Uniform dequantization (Theis et al., 2016) of `levels`-level data in [-1, 1]: each value
    spreads uniformly over its own bin, x + (u - 1/2) delta with u ~ U[0, 1) and delta the
    spacing, so the bins tile [-1 - delta/2, 1 + delta/2) without overlap."""
    check_quantized(x, levels)
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return x + (u - 0.5) * bin_width(levels)


def _check_range(x: torch.Tensor, levels: int) -> None:
    half = bin_width(levels) / 2
    lo, hi = float(x.min()), float(x.max())
    if lo < -1 - half or hi > 1 + half:
        raise ValueError(f"x must lie in [-1 - {half:.4g}, 1 + {half:.4g}] (the dequantized bins "
                         f"of {levels}-level data in [-1, 1]), got values in [{lo}, {hi}]")


def bits_per_dim(logp_nats, dims: int, levels: int | None = 256,
                 x: torch.Tensor | None = None) -> torch.Tensor:
    """Bits per dimension of per-example log-densities logp_nats over `dims` dimensions.

    levels: logp is the model's density of uniformly dequantized `levels`-level data (see
    `dequantize`). The probability of a discrete value is the density integrated over its bin
    of width delta, so by Jensen's inequality
        -log2 P(y) / D <= -logp / (D ln 2) - log2(delta),    delta = 2 / (levels - 1),
    which is what is returned (8-bit: - log2(delta) = log2(127.5) ~ 6.994; the familiar "+ 8"
    is the same rule for data scaled to [0, 1) by y / 256). levels=None: -logp / (D ln 2), in
    the data's own units. `x`, when given, must lie in the dequantized range, so data on
    another scale is an error rather than a wrong number.
    """
    if int(dims) < 1:
        raise ValueError(f"dims must be >= 1, got {dims}")
    logp = torch.as_tensor(logp_nats, dtype=torch.float64)
    if x is not None:
        if x[0].numel() != int(dims):
            raise ValueError(f"dims={dims} but x has {x[0].numel()} values per example")
        if levels is not None:
            _check_range(x, levels)
    bpd = -logp / (int(dims) * math.log(2))
    return bpd - math.log2(bin_width(levels)) if levels is not None else bpd
