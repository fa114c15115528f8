"""2-D toy distributions, scaled to roughly [-2, 2]², with exact densities where they exist."""
from __future__ import annotations

import numpy as np

TOY_NAMES = ("gmm8", "checkerboard", "swissroll", "moons")

_GMM8_RADIUS = 2.0
_GMM8_STD = 0.15
_BOARD_HALF = 2.0  # the board covers [-2, 2]² with unit cells
_BOARD_CELLS = tuple((i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0)
_SWISSROLL_NOISE = 0.05
_MOONS_NOISE = 0.05


def _check_name(name: str) -> None:
    if name not in TOY_NAMES:
        raise ValueError(f"unknown toy {name!r}; valid toys: {', '.join(TOY_NAMES)}")


def _check_points(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"toy points must have shape (n, 2), got {x.shape}")
    return x


def gmm8_params() -> tuple[np.ndarray, np.ndarray, float]:
    """Weights (8,), means (8, 2) on the circle of radius 2, and the shared std."""
    angles = 2.0 * np.pi * np.arange(8) / 8
    means = _GMM8_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    weights = np.full(8, 1.0 / 8)
    return weights, means, _GMM8_STD


def _sample_gmm8(n: int, rng: np.random.Generator) -> np.ndarray:
    _, means, std = gmm8_params()
    component = rng.integers(0, 8, size=n)
    return means[component] + std * rng.standard_normal((n, 2))


def _sample_checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    cells = np.asarray(_BOARD_CELLS, dtype=np.float64)[rng.integers(0, len(_BOARD_CELLS), size=n)]
    return cells + rng.random((n, 2)) - _BOARD_HALF


def _sample_swissroll(n: int, rng: np.random.Generator) -> np.ndarray:
    t = 1.5 * np.pi * (1.0 + 2.0 * rng.random(n))  # as scikit-learn's make_swiss_roll
    roll = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) * (2.0 / (4.5 * np.pi))
    return roll + _SWISSROLL_NOISE * rng.standard_normal((n, 2))


def _sample_moons(n: int, rng: np.random.Generator) -> np.ndarray:
    theta = np.pi * rng.random(n)
    upper = rng.random(n) < 0.5
    outer = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    inner = np.stack([1.0 - np.cos(theta), 0.5 - np.sin(theta)], axis=1)
    moons = np.where(upper[:, None], outer, inner)
    moons = (moons - np.array([0.5, 0.25])) * (4.0 / 3.0)  # x in [-2, 2], y in [-1, 1]
    return moons + _MOONS_NOISE * rng.standard_normal((n, 2))


_SAMPLERS = {
    "gmm8": _sample_gmm8,
    "checkerboard": _sample_checkerboard,
    "swissroll": _sample_swissroll,
    "moons": _sample_moons,
}


def sample_toy(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw n points of the named toy as float32 (n, 2)."""
    _check_name(name)
    if not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"n (number of toy samples) must be a positive integer, got {n!r}")
    return _SAMPLERS[name](int(n), rng).astype(np.float32)


def checkerboard_support(x: np.ndarray) -> np.ndarray:
    """True where a point lies in an occupied cell of the board on [-2, 2)²."""
    x = _check_points(x)
    inside = np.all((x >= -_BOARD_HALF) & (x < _BOARD_HALF), axis=1)
    cells = np.floor(x + _BOARD_HALF).astype(np.int64)
    return inside & ((cells[:, 0] + cells[:, 1]) % 2 == 0)


def _gmm8_log_density(x: np.ndarray) -> np.ndarray:
    weights, means, std = gmm8_params()
    sq_dist = ((x[:, None, :] - means[None, :, :]) ** 2).sum(axis=-1)
    log_comp = np.log(weights) - np.log(2.0 * np.pi * std**2) - sq_dist / (2.0 * std**2)
    peak = log_comp.max(axis=1, keepdims=True)
    return (peak + np.log(np.exp(log_comp - peak).sum(axis=1, keepdims=True)))[:, 0]


def toy_log_density(name: str, x: np.ndarray) -> np.ndarray:
    """Exact log density per point (gmm8, checkerboard); ValueError for toys without one."""
    _check_name(name)
    x = _check_points(x)
    if name == "gmm8":
        return _gmm8_log_density(x)
    if name == "checkerboard":
        return np.where(checkerboard_support(x), np.log(1.0 / len(_BOARD_CELLS)), -np.inf)
    raise ValueError(f"toy {name!r} has no closed-form density; only gmm8 and checkerboard do")


def off_support_fraction(name: str, x: np.ndarray) -> float:
    """Fraction of points off the support (checkerboard) or beyond 4 std of every mean (gmm8)."""
    _check_name(name)
    x = _check_points(x)
    if len(x) == 0:
        raise ValueError("off_support_fraction needs at least one point")
    if name == "checkerboard":
        return float(np.mean(~checkerboard_support(x)))
    if name == "gmm8":
        _, means, std = gmm8_params()
        dist = np.sqrt(((x[:, None, :] - means[None, :, :]) ** 2).sum(axis=-1))
        return float(np.mean(dist.min(axis=1) > 4.0 * std))
    raise ValueError(f"toy {name!r} has no defined support; only gmm8 and checkerboard do")
