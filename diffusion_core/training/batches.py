"""The training data of one rank as endless batches that know their position, so a resumed
run draws the batches an uninterrupted one would have (the distributed loop checkpoints the
position: flows/distributed/train_ray.py)."""
from __future__ import annotations

import numpy as np
import torch

from diffusion_core.data.shards import ShardStream


class Batches:
    """Endless per-rank batches that know their position: the epoch and the index of the next
    batch in it. Epoch e streams this rank's webdataset shards in the order ShardStream draws
    for e. With `cache_in_memory`, epochs after the first reshuffle what the first streamed,
    in an order drawn from (seed, rank, epoch), instead of decoding the tar files again
    (per-sample decoding dominates the step time of small models on 2-D data). A position
    fixes every batch after it, so a worker that seeks to a checkpoint's position draws what
    an uninterrupted one would have."""

    def __init__(self, data_dir, rank: int, world: int, batch_size: int, seed: int,
                 cache_in_memory: bool = True, loader_workers: int = 0):
        """`batch_size`: the global batch, split evenly over the `world` ranks."""
        self.data_dir, self.rank, self.world, self.seed = data_dir, rank, world, seed
        self.cache_in_memory, self.loader_workers = cache_in_memory, loader_workers
        self.per_rank, self.epoch, self.index = batch_size // world, 0, 0

    def position(self) -> list[int]:
        return [self.epoch, self.index]

    def seek(self, epoch: int, index: int) -> None:
        self.epoch, self.index = int(epoch), int(index)

    def __iter__(self):
        first, data = [], None  # the first epoch's batches, then all of them as one tensor
        while True:
            if self.cache_in_memory and self.epoch > 0:
                if data is None:  # a run resumed past the first epoch streams it once more
                    data = torch.cat(first or list(self._streamed(0)))
                    first.clear()
                batches = self._reshuffled(data)
            else:
                batches = self._streamed(self.epoch, first if self.cache_in_memory else None)
            yield from self._from_index(batches)
            self.epoch, self.index = self.epoch + 1, 0

    def _streamed(self, epoch: int, keep: list | None = None):
        stream = ShardStream(self.data_dir, "train", self.rank, self.world, seed=self.seed, epoch=epoch)
        loader = torch.utils.data.DataLoader(stream, batch_size=self.per_rank, drop_last=True,
                                             num_workers=self.loader_workers)
        for x, _ in loader:
            if keep is not None:
                keep.append(x)
            yield x

    def _reshuffled(self, data: torch.Tensor):
        entropy = [self.seed, self.rank, self.epoch]
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence(entropy).generate_state(1)[0]))
        order, n = torch.randperm(len(data), generator=generator), self.per_rank
        return (data[order[i:i + n]] for i in range(0, len(data) - n + 1, n))

    def _from_index(self, batches):
        """The epoch's batches from self.index on, moving the position past each one given."""
        for i, x in enumerate(batches):
            if i >= self.index:
                self.index = i + 1
                yield x
