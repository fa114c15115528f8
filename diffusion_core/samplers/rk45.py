"""The Dormand-Prince RK5(4)7M method (Dormand & Prince, 1980; scipy's RK45): an adaptive
explicit Runge-Kutta solver of dy/dt = f(t, y) on a batch, with each sample's own step size,
error norm and acceptance, so that sample i's path does not depend on the batch it is in.

The probability-flow ODE sampler (`samplers/sde.py:probability_flow_ode`) and the likelihood
(`likelihood/pf_ode.py`) solve their ODEs with `rk45_solve`.
"""
from __future__ import annotations

import torch

# Dormand & Prince (1980) RK5(4)7M, the tableau of scipy's RK45: stage times C, stage weights
# A, 5th-order weights B, and E = 5th minus 4th order weights over the 6 stages and f(y_new).
_DP_C = (1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_DP_A = ((1 / 5,), (3 / 40, 9 / 40), (44 / 45, -56 / 15, 32 / 9),
         (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
         (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656))
_DP_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
_DP_E = (-71 / 57600, 0.0, 71 / 16695, -71 / 1920, 17253 / 339200, -22 / 525, 1 / 40)
_SAFETY, _MIN_FACTOR, _MAX_FACTOR = 0.9, 0.2, 10.0  # scipy's step-size controller


def _rms(v: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Each sample's RMS norm of v / scale, (B, n) -> (B,)."""
    return (v / scale).pow(2).mean(dim=1).sqrt()


def _combine(weights, stages) -> torch.Tensor:
    return sum(w * k for w, k in zip(weights, stages) if w != 0)


def _step_factor(norm, accept, rejected) -> torch.Tensor:
    """scipy's controller: 0.9 norm^(-1/5) within [0.2, 10], at most 1 right after a rejection."""
    factor = torch.where(norm == 0, torch.full_like(norm, _MAX_FACTOR),
                         (_SAFETY * norm ** -0.2).clamp(max=_MAX_FACTOR))
    return torch.where(accept, torch.where(rejected, factor.clamp(max=1), factor),
                       factor.clamp(min=_MIN_FACTOR))


def _on_grid(h: torch.Tensor) -> torch.Tensor:
    """h rounded down onto the grid 2^(k/8). The error norm that sets h carries rounding-level
    differences between batch compositions (elementwise kernels treat a row differently by
    its SIMD lane); a continuous h would carry them into the path at the tolerance's level, a
    grid step moves only when one crosses a grid line."""
    return torch.exp2(torch.floor(8 * torch.log2(h)) / 8)


def _initial_step(fun, t, y, f0, direction, span, rtol, atol):
    """Per-sample first step (Hairer, Norsett & Wanner, 1993, II.4; scipy's
    select_initial_step): one evaluation of fun."""
    scale = atol + y.abs() * rtol
    d0, d1 = _rms(y, scale), _rms(f0, scale)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
    h0 = torch.minimum(h0, span)
    f1 = fun(t + direction * h0, y + direction * h0[:, None] * f0)
    d2 = _rms(f1 - f0, scale) / h0
    small = torch.maximum(d1, d2) <= 1e-15
    h1 = torch.where(small, (h0 * 1e-3).clamp(min=1e-6), (0.01 / torch.maximum(d1, d2)) ** 0.2)
    return _on_grid(torch.minimum(torch.minimum(100 * h0, h1), span))


def _dopri_step(fun, t, y, f, dh):
    """One Dormand-Prince step of per-sample size dh (B,): y_new, f(y_new) and the error
    estimate; six evaluations of fun on the whole batch (f is f(y), FSAL)."""
    stages = [f]
    for c, a in zip(_DP_C, _DP_A):
        stages.append(fun(t + c * dh, y + dh[:, None] * _combine(a, stages)))
    y_new = y + dh[:, None] * _combine(_DP_B, stages)
    f_new = fun(t + dh, y_new)
    return y_new, f_new, dh[:, None] * _combine(_DP_E, stages + [f_new])


def rk45_solve(fun, y, t_start: float, t_end: float, rtol: float, atol: float,
               max_iterations: int = 100_000):
    """Adaptive Dormand-Prince RK45 with per-sample step size, error norm and acceptance, so
    sample i's path does not depend on its batch; scipy's controller, with step sizes on a
    grid (`_on_grid`). fun(t (B,), y (B, n)) -> dy/dt (B, n) is evaluated once per stage on
    the whole batch at per-sample times; samples that reached t_end take steps of 0.
    Returns (y at t_end, float64, and the NFE: batched evaluations)."""
    y = y.double()
    t = torch.full((y.shape[0],), float(t_start), dtype=torch.float64, device=y.device)
    direction = 1.0 if t_end > t_start else -1.0
    f = fun(t, y)
    h = _initial_step(fun, t, y, f, direction, (t_end - t) * direction, rtol, atol)
    nfe, rejected = 2, torch.zeros_like(t, dtype=torch.bool)
    for _ in range(max_iterations):
        left = (t_end - t) * direction
        active = left > 0
        if not bool(active.any()):
            return y, nfe
        spacing = (torch.nextafter(t, t + direction) - t).abs()
        if bool((active & (h < 10 * spacing)).any()):
            raise RuntimeError("RK45 failed: a sample's step size fell below the spacing of "
                               "float64 times (the drift is not finite or not smooth there)")
        step = torch.where(active, torch.minimum(h, left), torch.zeros_like(h))
        y_new, f_new, error = _dopri_step(fun, t, y, f, direction * step)
        nfe += 6
        norm = _rms(error, atol + torch.maximum(y.abs(), y_new.abs()) * rtol)
        norm = torch.nan_to_num(norm, nan=float("inf"))  # a non-finite step is rejected
        accept = active & (norm < 1)
        factor = _step_factor(norm, accept, rejected)
        t = torch.where(accept, torch.where(step >= left, t_end, t + direction * step), t)
        y, f = torch.where(accept[:, None], y_new, y), torch.where(accept[:, None], f_new, f)
        h = torch.where(active, _on_grid(step * factor), h)
        rejected = active & ~accept
    raise RuntimeError(f"RK45 failed: not at t_end after {max_iterations} steps")
