"""Type aliases the core's modules share, each defined once."""
from __future__ import annotations

from typing import Callable

import torch

# A score model s(x, t) -> grad_x log p_t(x), with t (time or noise level) a (B,) tensor.
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# A sampler's progress callback progress(done, total), called after each step; None: silent.
Progress = Callable[[int, int], None] | None
