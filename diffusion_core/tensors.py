"""Small shape helpers shared by the math modules."""
from __future__ import annotations

import torch


def append_dims(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dims so a per-example tensor (B,) broadcasts against (B, ...)."""
    missing = ndim - values.ndim
    if missing < 0:
        raise ValueError(f"append_dims: tensor has {values.ndim} dims, more than target {ndim}")
    return values.reshape(values.shape + (1,) * missing)


def batch_of(value, x: torch.Tensor) -> torch.Tensor:
    """A per-example tensor (B,) on x's device and dtype from a scalar or a (B,) tensor."""
    value = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    return value.expand(x.shape[0]) if value.ndim == 0 else value


def sum_except_batch(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(dim=1)


def mean_except_batch(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(dim=1)
