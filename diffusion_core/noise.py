"""Where a sampler's Gaussian noise comes from.

A sampler draws every random tensor through `normal(shape, source)`. The source is either a
`torch.Generator` (one stream for the whole batch) or `PerSampleNoise`, which keeps one stream
per sample, seeded by the sample's own seed. With per-sample streams, sample i is the same
whichever batch or worker drew it: a run split over many Ray workers reproduces the samples of
a single worker exactly.
"""
from __future__ import annotations

from typing import Sequence

import torch


class PerSampleNoise:
    """One generator per sample; `seeds[i]` fixes every random draw of sample i."""

    def __init__(self, seeds: Sequence[int]):
        if len(seeds) == 0:
            raise ValueError("PerSampleNoise needs at least one seed")
        self.seeds = [int(s) for s in seeds]
        self.generators = [torch.Generator().manual_seed(s) for s in self.seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def normal(self, shape) -> torch.Tensor:
        if shape[0] != len(self):
            raise ValueError(f"asked for {shape[0]} samples' noise, have {len(self)} seeds")
        return torch.stack([torch.randn(tuple(shape[1:]), generator=g) for g in self.generators])


NoiseSource = torch.Generator | PerSampleNoise | None


def normal(shape, source: NoiseSource = None, like: torch.Tensor | None = None) -> torch.Tensor:
    """Standard normal noise of `shape` from `source`, with `like`'s dtype and device if given."""
    if isinstance(source, PerSampleNoise):
        z = source.normal(tuple(shape))
    else:
        device = source.device if source is not None else "cpu"
        z = torch.randn(tuple(shape), generator=source, device=device)
    return z.to(like) if like is not None else z
