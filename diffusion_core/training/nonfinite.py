"""What a run does with a step whose loss or gradient is not finite (train.nonfinite)."""
from __future__ import annotations

from typing import Callable

from diffusion_core.training.step import NONFINITE, TAKEN

POLICIES = ("stop", "skip")


def _alone(flag: bool) -> bool:
    """One process agrees with itself."""
    return flag


class NonFinitePolicy:
    """train.nonfinite: a step whose loss or gradient is not finite is not taken (training_step
    skips it); "stop" ends the run there, "skip" goes on past at most `limit` such batches.
    An fp16 loss-scale overflow is not a fault: the scaler lowered the scale, the batch is
    counted in `overflows` and the step taken again on the next one."""

    def __init__(self, policy: str, limit: int, on_every_rank: Callable[[bool], bool] = _alone):
        """`on_every_rank(flag)`: whether `flag` holds on every rank of a distributed run (a
        collective), so all ranks take, skip or stop at the same step."""
        self.policy, self.limit, self.on_every_rank = policy, limit, on_every_rank
        self.skipped, self.overflows, self.stopped_at = 0, 0, 0

    def counts(self, status: str, step: int) -> bool:
        """Whether the step was taken (on every rank); records the step where the run must stop."""
        if self.on_every_rank(status == TAKEN):
            return True
        if self.on_every_rank(status != NONFINITE):
            self.overflows += 1
            return False
        self.skipped += 1
        if self.policy == "stop" or self.skipped > self.limit:
            self.stopped_at = step + 1
        return False
