"""Samplers of score SDEs (Song et al., 2021, "Score-Based Generative Modeling through
Stochastic Differential Equations"): predictor-corrector sampling of the reverse-time SDE and the
probability-flow ODE with fixed-step solvers (Euler, Heun) and the adaptive Dormand-Prince RK45
of `rk45.py`.

A score model is any function score_fn(x, t) -> grad_x log p_t(x) with t a (B,) tensor;
`models.denoiser.score_of_time` builds one from a `Denoiser`. Samplers run under torch.no_grad(): a score that
needs autograd (an energy model, score = -grad E) must enable it inside score_fn. Every
stochastic step takes its noise as an explicit tensor, drawn by the loops from a generator.
"""
from __future__ import annotations

import torch

from diffusion_core.noise import normal
from diffusion_core.processes.sde import SDE, VESDE, VPSDE
from diffusion_core.samplers.rk45 import rk45_solve
from diffusion_core.tensors import append_dims, batch_of
from diffusion_core.types import Progress, ScoreFn


class _Counted:
    """A score function that counts its evaluations (the NFE)."""

    def __init__(self, fn: ScoreFn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.fn(x, t)


def _randn_like(x: torch.Tensor, generator) -> torch.Tensor:
    return normal(x.shape, generator, like=x)


def check_choice(name: str, choices, parameter: str) -> None:
    """ValueError naming `parameter` unless `name` is one of `choices`."""
    if name not in choices:
        raise ValueError(f"{parameter} must be one of {sorted(choices)}, got {name!r}")


# --------------------------------------------------------------------------- time grids


def check_time_grid(grid, T: float = 1.0) -> torch.Tensor:
    """A float64 copy of `grid` after checking it strictly decreases from at most T to above 0."""
    grid = torch.as_tensor(grid, dtype=torch.float64)
    if grid.ndim != 1 or grid.numel() < 1:
        raise ValueError(f"time_grid must be a non-empty 1-D sequence, "
                         f"got shape {tuple(grid.shape)}")
    if not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError("time_grid must strictly decrease (from T towards eps)")
    if float(grid[0]) > T + 1e-12 or float(grid[-1]) <= 0:
        raise ValueError(f"time_grid must lie in (0, T={T}], "
                         f"got [{float(grid[-1])}, {float(grid[0])}]")
    return grid


def check_grid_steps(steps: int) -> None:
    """A time grid has both its ends, T and eps: at least 2 points. The registry's PC check
    asks this too; the ValueError starts with the setting."""
    if int(steps) < 2:
        raise ValueError(f"steps: must be >= 2, got {steps}")


def time_grid(T: float = 1.0, eps: float = 1e-3, steps: int = 1000) -> torch.Tensor:
    """Uniform grid t_0 = T > t_1 > ... > t_{steps-1} = eps (Song et al., algorithms 2-3)."""
    check_grid_steps(steps)
    if not 0 < eps < T:
        raise ValueError(f"need 0 < eps < T, got eps={eps}, T={T}")
    return check_time_grid(torch.linspace(T, eps, int(steps), dtype=torch.float64), T)


def _check_ladder(sde: SDE, grid: torch.Tensor, predictor: str) -> None:
    """The discrete predictors step one rung of the process's own N-step ladder per grid point."""
    if len(grid) != sde.N:
        raise ValueError(f"time_grid must have sde.N = {sde.N} points for predictor {predictor!r} "
                         f"(it steps the process's own ladder), got {len(grid)}")
    if hasattr(sde, "timestep_index"):
        expected = torch.arange(sde.N - 1, -1, -1)
        if not torch.equal(sde.timestep_index(grid), expected):
            raise ValueError(f"time_grid must visit each of the {sde.N} rungs of the ladder once "
                             f"for predictor {predictor!r} "
                             f"(eps = 1 / N for VP, eps < 0.5 / N for VE)")


# --------------------------------------------------------------------------- predictors
# Each: (score_fn, sde, x, t, t_next, noise) -> (x', mean of x'), t and t_next (B,) tensors.


def euler_maruyama(score_fn, sde, x, t, t_next, noise):
    """Euler-Maruyama step of the reverse SDE (eq. 6): x + [f - g^2 s] dt + g sqrt(-dt) z."""
    dt = append_dims(t_next - t, x.ndim)
    drift, diffusion = sde.reverse(score_fn).sde(x, t)
    x_mean = x + drift * dt
    return x_mean + append_dims(diffusion, x.ndim) * (-dt).sqrt() * noise, x_mean


def reverse_diffusion(score_fn, sde, x, t, t_next, noise):
    """Reverse diffusion (appendix E, eq. 46): x_i = x_{i+1} - f_{i+1} + G_{i+1}^2 s + G_{i+1} z."""
    f, g = sde.discretize(x, t)
    g = append_dims(g, x.ndim)
    x_mean = x - f + g**2 * score_fn(x, t)
    return x_mean + g * noise, x_mean


def _vp_ancestral(score_fn, sde: VPSDE, x, t, noise):
    """DDPM ancestral step x_{i-1} = (x_i + beta_i s) / sqrt(1 - beta_i) + sqrt(beta_i) z."""
    beta = sde.discrete_betas.to(x.device)[sde.timestep_index(t)].to(x.dtype)
    beta = append_dims(beta, x.ndim)
    x_mean = (x + beta * score_fn(x, t)) / torch.sqrt(1 - beta)
    return x_mean + beta.sqrt() * noise, x_mean


def _ve_ancestral(score_fn, sde: VESDE, x, t, noise):
    """NCSN ancestral step x_{i-1} = x_i + (s_i^2 - s_{i-1}^2) s + sqrt(s_{i-1}^2 (s_i^2 -
    s_{i-1}^2) / s_i^2) z, with s_{-1} = 0 (appendix F, eq. 47)."""
    sigma, prev = sde.rung_sigmas(t)
    gap = append_dims((sigma**2 - prev**2).to(x.dtype), x.ndim)
    std = append_dims((prev * (sigma**2 - prev**2).sqrt() / sigma).to(x.dtype), x.ndim)
    x_mean = x + gap * score_fn(x, t)
    return x_mean + std * noise, x_mean


_ANCESTRAL = {VPSDE: _vp_ancestral, VESDE: _ve_ancestral}
ANCESTRAL_KINDS = tuple(process.kind for process in _ANCESTRAL)


def ancestral(score_fn, sde, x, t, t_next, noise):
    """Ancestral sampling of the discrete chain (appendix F): DDPM's for VP, NCSN's for VE."""
    step = _ANCESTRAL.get(type(sde))
    if step is None:
        raise ValueError(f"predictor 'ancestral' is defined for VPSDE and VESDE, not "
                         f"{type(sde).__name__}")
    return step(score_fn, sde, x, t, noise)


PREDICTORS = {"euler_maruyama": euler_maruyama, "reverse_diffusion": reverse_diffusion,
              "ancestral": ancestral}
LADDER_PREDICTORS = ("reverse_diffusion", "ancestral")


# --------------------------------------------------------------------------- correctors
# Each: (score_fn, sde, x, t, snr, noise) -> (x', mean of x').


def langevin(score_fn, sde, x, t, snr, noise):
    """Langevin MCMC step x + e s + sqrt(2e) z (Song et al., 2021, algorithms 4-5), whose step
    e = 2 a (snr |z| / |s|)^2 (a = 1 - beta_i on a process with discrete betas, else 1) is
    taken with |z|^2 -> d and |s|^2 -> its bound d / sigma_t^2 (the Fisher information of p_t
    is at most that of its N(0, sigma_t^2 I) noise; Stam, 1959): e = 2 a (snr sigma_t)^2, so
    |e s| / |sqrt(2e) z| ~ snr where the data is narrow next to sigma_t, and less elsewhere.
    Song et al.'s code averages the measured norms over the batch, making sample i depend on
    its batch; each sample's own norms would make e depend on the state (e ~ 1/|s(x)|^2 blows
    up where the score vanishes, at the modes: in 2-D it leaves the data distribution)."""
    score = score_fn(x, t)
    alpha = torch.ones_like(t)
    if hasattr(sde, "discrete_betas"):
        alpha = 1 - sde.discrete_betas.to(x.device)[sde.timestep_index(t)].to(x.dtype)
    sigma = sde.alpha_sigma(t)[1].to(x)
    step = append_dims(2 * alpha * (snr * sigma) ** 2, x.ndim)
    x_mean = x + step * score
    return x_mean + (2 * step).sqrt() * noise, x_mean


def no_corrector(score_fn, sde, x, t, snr, noise):
    """The identity: predictor-only sampling."""
    return x, x


CORRECTORS = {"langevin": langevin, "none": no_corrector}


# --------------------------------------------------------------------------- PC sampler


def check_pc(predictor: str, corrector: str, snr: float, corrector_steps: int) -> None:
    """The rules of predictor-corrector sampling's settings, for the sampler and the registry
    alike: a known predictor and corrector, snr > 0, corrector_steps >= 0. The ValueError
    starts with the setting's name."""
    check_choice(predictor, PREDICTORS, "predictor")
    check_choice(corrector, CORRECTORS, "corrector")
    if not snr > 0:
        raise ValueError(f"snr: must be positive, got {snr}")
    if int(corrector_steps) < 0:
        raise ValueError(f"corrector_steps: must be >= 0, got {corrector_steps}")


@torch.no_grad()
def pc_sampler(score_fn: ScoreFn, sde: SDE, x_T: torch.Tensor, time_grid,
               predictor: str = "reverse_diffusion", corrector: str = "langevin",
               snr: float = 0.16, n_corrector_steps: int = 1,
               generator: torch.Generator | None = None, progress: Progress = None,
               denoise: bool = True) -> tuple[torch.Tensor, int]:
    """Predictor-corrector sampling (Song et al., 2021, algorithm 1); returns (samples, NFE).

    At each grid time t_i: `n_corrector_steps` corrector steps (the registry's `corrector_steps`
    setting), then one predictor step towards t_{i+1} (0 after the last). `denoise` returns the
    last predictor step's mean, without noise.
    The "reverse_diffusion" and "ancestral" predictors step the process's own discretization, so
    their grid must hold sde.N points, one per rung.
    """
    check_pc(predictor, corrector, snr, n_corrector_steps)
    predict, correct = PREDICTORS[predictor], CORRECTORS[corrector]
    grid = check_time_grid(time_grid, sde.T)
    if predictor in LADDER_PREDICTORS:
        _check_ladder(sde, grid, predictor)
    counted, x = _Counted(score_fn), x_T
    x_mean = x
    for i in range(len(grid)):
        t = batch_of(grid[i], x)
        for _ in range(int(n_corrector_steps)):
            x, x_mean = correct(counted, sde, x, t, snr, _randn_like(x, generator))
        t_next = batch_of(grid[i + 1] if i + 1 < len(grid) else 0.0, x)
        x, x_mean = predict(counted, sde, x, t, t_next, _randn_like(x, generator))
        if progress:
            progress(i + 1, len(grid))
    return (x_mean if denoise else x), counted.calls


# --------------------------------------------------------------------------- probability-flow ODE


def euler_solve(drift, x, grid, progress: Progress = None):
    """Explicit Euler on a fixed grid, x' = x + h v(x, t); one evaluation per step."""
    for i in range(len(grid) - 1):
        t, t_next = batch_of(grid[i], x), batch_of(grid[i + 1], x)
        x = x + append_dims(t_next - t, x.ndim) * drift(x, t)
        if progress:
            progress(i + 1, len(grid) - 1)
    return x, len(grid) - 1


def heun_solve(drift, x, grid, progress: Progress = None):
    """Heun's method (explicit trapezoidal rule, 2nd order) on a fixed grid; 2 NFE per step."""
    for i in range(len(grid) - 1):
        t, t_next = batch_of(grid[i], x), batch_of(grid[i + 1], x)
        h = append_dims(t_next - t, x.ndim)
        slope = drift(x, t)
        slope_next = drift(x + h * slope, t_next)
        x = x + 0.5 * h * (slope + slope_next)
        if progress:
            progress(i + 1, len(grid) - 1)
    return x, 2 * (len(grid) - 1)


ODE_METHODS = ("euler", "heun", "rk45")
DIRECTIONS = ("decode", "encode")


def check_tolerances(rtol: float, atol: float) -> None:
    """The adaptive solver's relative and absolute tolerances are positive, for the ODE sampler,
    the likelihood and the registry alike; the ValueError starts with the one that is not."""
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not value > 0:
            raise ValueError(f"{name}: must be positive, got {value}")


@torch.no_grad()
def probability_flow_ode(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, method: str = "rk45",
                         steps: int = 100, rtol: float = 1e-5, atol: float = 1e-5,
                         t_eps: float = 1e-3, direction: str = "decode", denoise: bool = False,
                         progress: Progress = None) -> tuple[torch.Tensor, int]:
    """Solve the probability-flow ODE dx = [f - 1/2 g^2 s] dt (eq. 13); returns (x, NFE).

    "decode" maps latents at T to data at t_eps, "encode" data at t_eps to latents at T.
    Fixed-step methods use `steps` uniform steps in t; "rk45" uses the tolerances. `denoise`
    (decode only) ends with Tweedie's E[x_0 | x_eps] = (x + sigma^2 s) / alpha, one more NFE.
    """
    check_choice(method, ODE_METHODS, "method")
    check_choice(direction, DIRECTIONS, "direction")
    check_tolerances(rtol, atol)
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 < t_eps < sde.T:
        raise ValueError(f"t_eps must lie in (0, T={sde.T}), got {t_eps}")
    counted = _Counted(score_fn)
    reverse = sde.reverse(counted, probability_flow=True)
    drift = lambda state, t: reverse.sde(state, t)[0]  # noqa: E731
    t_start, t_end = (sde.T, t_eps) if direction == "decode" else (t_eps, sde.T)
    if method == "rk45":
        shape, dtype = x.shape, x.dtype

        def rows(t, y):  # the drift on the batch's flattened rows, in float64
            return drift(y.to(dtype).reshape(shape), t).flatten(1).double()

        y, _ = rk45_solve(rows, x.flatten(1), t_start, t_end, rtol, atol)
        x = y.to(dtype).reshape(shape)
    else:
        grid = torch.linspace(t_start, t_end, int(steps) + 1, dtype=torch.float64)
        solver = euler_solve if method == "euler" else heun_solve
        x, _ = solver(drift, x, grid, progress)
    if denoise and direction == "decode":
        t = batch_of(t_eps, x)
        alpha, sigma = (append_dims(v.to(x), x.ndim) for v in sde.alpha_sigma(t))
        x = (x + sigma**2 * counted(x, t)) / alpha
    return x, counted.calls
