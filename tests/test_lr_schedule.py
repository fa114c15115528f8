"""The learning-rate schedule: warm-up, cosine decay to zero where the run ends, and where a
time budget makes it end."""
import math

import pytest

from diffusion_core.training.lr_schedule import (
    StepBudget,
    lr_factor,
    out_of_time,
    planned_steps,
    warmup_steps,
)


def test_warmup_then_constant():
    assert lr_factor(0, 1000, 10, "constant") == pytest.approx(0.1)
    assert lr_factor(9, 1000, 10, "constant") == 1.0
    assert lr_factor(5000, 1000, 10, "constant") == 1.0


def test_cosine_is_a_half_period_from_one_to_zero():
    factors = [lr_factor(step, 1000, 10, "cosine") for step in range(10, 1001)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))  # never rises after warm-up
    assert lr_factor(250, 1000, 10, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(500, 1000, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(1000, 1000, 10, "cosine") == pytest.approx(0.0)
    assert lr_factor(1200, 1000, 10, "cosine") == pytest.approx(0.0)  # a run past its plan


def test_planned_steps_follow_the_time_budget():
    assert planned_steps(0, 0, 0.0, 5000) == 5000  # nothing measured yet: the step cap
    assert planned_steps(100, 0, 0.25, 5000) == 400  # 100 steps took a quarter of the budget
    assert planned_steps(100, 0, 0.01, 5000) == 5000  # the cap comes first
    assert planned_steps(1100, 1000, 0.25, 5000) == 1400  # resumed at step 1000


def test_unknown_schedule_is_named():
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_factor(0, 10, 1, "linear")


def test_a_run_stops_when_the_next_interval_would_cross_its_budget():
    assert not out_of_time(0.30, 0.0) and not out_of_time(0.60, 0.30)
    assert out_of_time(0.91, 0.61)  # the next check would come at 1.21
    assert out_of_time(1.02, 0.99)  # past the budget: stop whatever the interval
    assert not out_of_time(0.5, 0.5) and not out_of_time(0.9, 0.95)  # a restart resets the clock


def test_a_step_budget_replans_at_each_check_and_stops_inside_the_time():
    budget = StepBudget(5000)
    assert budget.planned == 5000 and warmup_steps(5000) == 100 and warmup_steps(10) == 1
    assert not budget.check(100, 0.25) and budget.planned == 400  # 100 steps took a quarter
    assert not budget.check(200, 0.45) and budget.planned == 445  # a slower pace: a later end
    assert not budget.check(300, 0.70) and budget.planned == 429  # the next check comes at 0.95
    assert budget.check(400, 0.93)  # the next would come at 1.16: stop now, inside the budget
    resumed = StepBudget(5000, start_step=1000)  # a restored run paces only its own steps
    assert not resumed.check(1100, 0.25) and resumed.planned == 1400
