"""Learning-rate schedules for runs whose length is set by a step cap or a time budget,
whichever ends first, so the decay can end where the run does."""
from __future__ import annotations

import math

LR_SCHEDULES = ("constant", "cosine")


def lr_factor(step: int, planned_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate at `step` (0-based): a linear warm-up over
    `warmup_steps`, then constant, or a half cosine from 1 down to 0 at `planned_steps`
    (Loshchilov & Hutter, 2017, SGDR without restarts)."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
    warm = min(1.0, (step + 1) / max(1, warmup_steps))
    if schedule == "constant":
        return warm
    progress = min(1.0, step / max(1, planned_steps))
    return warm * 0.5 * (1 + math.cos(math.pi * progress))


def planned_steps(step: int, start_step: int, time_fraction: float, max_steps: int) -> int:
    """The step a run will end at: `max_steps`, or sooner where the time budget runs out at the
    pace of the steps taken since `start_step` (this process's first) in `time_fraction` of it."""
    if time_fraction <= 0 or step <= start_step:
        return max_steps
    return min(max_steps, start_step + math.ceil((step - start_step) / time_fraction))


def out_of_time(fraction: float, previous_fraction: float) -> bool:
    """Whether a run that has spent `fraction` of its time budget, and `previous_fraction` at
    the check before, should stop now: when the next interval between checks, as long as the
    last, would end past the budget. So a run ends inside its budget rather than up to one
    interval after it."""
    return fraction + max(0.0, fraction - previous_fraction) >= 1


def warmup_steps(max_steps: int) -> int:
    """The linear warm-up's length: 2% of the step cap, so it is short whatever ends the run."""
    return max(1, max_steps // 50)


class StepBudget:
    """Where a run of at most `max_steps`, also bounded by a time budget, will end. At each
    check the caller passes the fraction of the budget spent; `check` says whether to stop now
    (`out_of_time`) and otherwise re-plans `planned`, the step the learning rate decays to."""

    def __init__(self, max_steps: int, start_step: int = 0):
        self.max_steps, self.start_step = max_steps, start_step
        self.planned, self.fraction = max_steps, 0.0

    def check(self, step: int, fraction: float) -> bool:
        previous, self.fraction = self.fraction, fraction
        if out_of_time(fraction, previous):
            return True
        self.planned = planned_steps(step, self.start_step, fraction, self.max_steps)
        return False
