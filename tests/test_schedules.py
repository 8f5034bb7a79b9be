"""Tests for the budget learning-rate schedules in budgetsearch.schedules."""

from __future__ import annotations

import copy
import io
import math
import re

import pytest
import torch

from budgetsearch.schedules import (
    SCHEDULES,
    BudgetSchedule,
    ConstantSchedule,
    CosineSchedule,
    ExponentialSchedule,
    LinearSchedule,
    PolynomialSchedule,
    StepSchedule,
    WSDSchedule,
    lr_multiplier,
    make_schedule,
    optimizer_steps_per_epoch,
    schedule_from_description,
    trunk_step,
)

BASE_LR = 0.3


class FakeClock:
    """Clock that moves only when a test advances it, in exact binary fractions."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def new_optimizer(lr: float = BASE_LR) -> torch.optim.SGD:
    parameter = torch.nn.Parameter(torch.ones(2))
    return torch.optim.SGD([parameter], lr=lr, momentum=0.9)


def train_step(optimizer: torch.optim.Optimizer, scheduler: BudgetSchedule, clock: FakeClock | None = None) -> float:
    """Run one optimizer step and one scheduler step, and return the new rate."""
    optimizer.zero_grad()
    parameter = optimizer.param_groups[0]["params"][0]
    (parameter**2).sum().backward()
    optimizer.step()
    if clock is not None:
        clock.advance(0.25)
    scheduler.step()
    return optimizer.param_groups[0]["lr"]


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return optimizer.param_groups[0]["lr"]


def plain_multiplier(t: int, budget: int, schedule: str) -> float:
    """Return m(t / T) with default options, written out independently of the module."""
    progress = t / budget if t < budget else 1.0
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "step":
        return 0.1 ** sum(1 for milestone in (0.5, 0.75) if milestone <= progress)
    if schedule == "exponential":
        return 0.01**progress
    if schedule == "polynomial":
        return (1.0 - progress) ** 2.0
    if schedule == "wsd":
        trunk = budget - math.ceil(budget / 5)
        if t < trunk:
            return 1.0
        fraction = (t - trunk) / (budget - trunk) if t < budget else 1.0
        return 1.0 - fraction
    return 1.0


# --- Linear ends at exactly zero -------------------------------------------------


def test_linear_function_ends_at_zero():
    budget = 100
    multipliers = [lr_multiplier(t, budget) for t in range(budget + 1001)]

    assert multipliers[0] == 1.0
    assert multipliers[budget] == 0.0
    assert all(m == 0.0 for m in multipliers[budget:])
    assert all(m >= 0.0 for m in multipliers)
    assert all(later <= earlier for earlier, later in zip(multipliers, multipliers[1:]))


def test_linear_scheduler_ends_at_zero():
    budget = 100
    optimizer = new_optimizer()
    scheduler = LinearSchedule(optimizer, budget)
    rates = [current_lr(optimizer)]
    for _ in range(budget + 1000):
        rates.append(train_step(optimizer, scheduler))

    assert rates[0] == BASE_LR
    assert rates[budget] == 0.0
    assert all(rate == 0.0 for rate in rates[budget:])
    assert all(rate >= 0.0 for rate in rates)
    assert all(later <= earlier for earlier, later in zip(rates, rates[1:]))
    assert scheduler.get_last_lr() == [0.0]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_all_schedules_never_negative(schedule):
    budget = 64
    multipliers = [lr_multiplier(t, budget, schedule, warmup=8) for t in range(budget + 1001)]

    assert all(m >= 0.0 for m in multipliers)
    assert all(m == multipliers[budget] for m in multipliers[budget:])


def test_linear_matches_torch_polynomial_lr():
    budget = 100
    ours_optimizer = new_optimizer()
    ours = LinearSchedule(ours_optimizer, budget)
    torch_optimizer = new_optimizer()
    reference = torch.optim.lr_scheduler.PolynomialLR(torch_optimizer, total_iters=budget, power=1.0)

    for step in range(budget + 20):
        # PolynomialLR multiplies ratios step by step, so it drifts by rounding.
        assert current_lr(ours_optimizer) == pytest.approx(current_lr(torch_optimizer), rel=1e-12, abs=0.0), step
        train_step(ours_optimizer, ours)
        train_step(torch_optimizer, reference)


# --- Warm-up -------------------------------------------------------------------------


def test_warmup_peaks_at_base_rate():
    budget, warmup = 50, 10
    multipliers = [lr_multiplier(t, budget, warmup=warmup) for t in range(budget + 5)]

    assert multipliers[0] == 0.0
    assert multipliers[warmup] == 1.0
    assert max(multipliers) == 1.0
    assert multipliers[budget] == 0.0
    for t in range(warmup):
        assert multipliers[t + 1] - multipliers[t] <= (1 / warmup) * (1 + 1e-12), t
        assert multipliers[t + 1] > multipliers[t], t
    for t in range(warmup, budget + 4):
        assert multipliers[t] - multipliers[t + 1] <= (1 / (budget - warmup)) * (1 + 1e-12), t
        assert multipliers[t + 1] <= multipliers[t], t


def test_warmup_scheduler_peaks_at_base_rate():
    budget, warmup = 50, 10
    optimizer = new_optimizer()
    scheduler = LinearSchedule(optimizer, budget, warmup=warmup)
    rates = [current_lr(optimizer)]
    for _ in range(budget + 4):
        rates.append(train_step(optimizer, scheduler))

    assert rates[0] == 0.0
    assert rates[warmup] == BASE_LR
    assert max(rates) == BASE_LR
    assert rates[budget] == 0.0
    for t in range(budget + 4):
        limit = 1 / warmup if t < warmup else 1 / (budget - warmup)
        assert abs(rates[t + 1] - rates[t]) <= BASE_LR * limit * (1 + 1e-12), t


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_zero_warmup_is_plain_schedule(schedule):
    budget = 40
    for t in range(budget + 10):
        plain = plain_multiplier(t, budget, schedule)
        assert lr_multiplier(t, budget, schedule, warmup=0) == plain, t
        assert lr_multiplier(t, budget, schedule) == plain, t

    optimizer = new_optimizer()
    scheduler = make_schedule(optimizer, budget, schedule, warmup=0)
    for t in range(budget + 10):
        assert current_lr(optimizer) == BASE_LR * plain_multiplier(t, budget, schedule), t
        train_step(optimizer, scheduler)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_warmup_rises_then_decays_to_budget(schedule):
    budget, warmup = 40, 8
    multipliers = [lr_multiplier(t, budget, schedule, warmup=warmup) for t in range(budget + 1)]

    assert multipliers[:warmup] == [t / warmup for t in range(warmup)]
    assert multipliers[warmup] == 1.0
    assert multipliers[budget] == lr_multiplier(budget, budget, schedule)


def test_wsd_warmup_keeps_decay_phase():
    budget, warmup = 30, 5
    trunk = trunk_step(budget, 0.2)
    with_warmup = [lr_multiplier(t, budget, "wsd", warmup=warmup) for t in range(budget + 1)]
    without_warmup = [lr_multiplier(t, budget, "wsd") for t in range(budget + 1)]

    assert with_warmup[warmup:trunk] == [1.0] * (trunk - warmup)
    assert with_warmup[trunk:] == without_warmup[trunk:]
    assert lr_multiplier(trunk, budget, "wsd", warmup=trunk) == 1.0


# --- Checkpoint and resume -----------------------------------------------------------

RESUME_BUDGET = 20
RESUME_WARMUP = 4
RESUME_STEPS = [0, 1, RESUME_WARMUP, 11, RESUME_BUDGET, RESUME_BUDGET + 3]
RESUME_ORDERS = ["optimizer_first", "scheduler_first", "optimizer_before_scheduler_created"]


def resume_settings(unit: str) -> dict:
    if unit == "seconds":
        # One step advances the fake clock by 0.25 s, so 5 s is 20 steps.
        return {"budget": 5.0, "warmup": 1.0, "unit": "seconds"}
    if unit == "epochs":
        return {"budget": 5, "warmup": 1, "unit": "epochs", "steps_per_epoch": 4}
    return {"budget": RESUME_BUDGET, "warmup": RESUME_WARMUP, "unit": "steps"}


def save_and_reload(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("order", RESUME_ORDERS)
@pytest.mark.parametrize("unit", ["steps", "epochs", "seconds"])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_resume_continues_same_rates(schedule, unit, order):
    settings = resume_settings(unit)
    total_steps = RESUME_BUDGET + 8

    def new_clock(start):
        return FakeClock(start) if unit == "seconds" else None

    clock = new_clock(0.0)
    optimizer = new_optimizer()
    scheduler = make_schedule(optimizer, schedule=schedule, clock=clock, **settings)
    expected = [current_lr(optimizer)]
    for _ in range(total_steps):
        expected.append(train_step(optimizer, scheduler, clock))

    for saved_at in RESUME_STEPS:
        clock = new_clock(0.0)
        optimizer = new_optimizer()
        scheduler = make_schedule(optimizer, schedule=schedule, clock=clock, **settings)
        for _ in range(saved_at):
            train_step(optimizer, scheduler, clock)
        optimizer_state = save_and_reload(optimizer.state_dict())
        scheduler_state = save_and_reload(scheduler.state_dict())

        clock = new_clock(1000.0)
        optimizer = new_optimizer(lr=0.7)
        if order == "optimizer_before_scheduler_created":
            optimizer.load_state_dict(optimizer_state)
            scheduler = make_schedule(optimizer, schedule=schedule, clock=clock, **settings)
            scheduler.load_state_dict(scheduler_state)
        elif order == "optimizer_first":
            scheduler = make_schedule(optimizer, schedule=schedule, clock=clock, **settings)
            optimizer.load_state_dict(optimizer_state)
            scheduler.load_state_dict(scheduler_state)
        else:
            scheduler = make_schedule(optimizer, schedule=schedule, clock=clock, **settings)
            scheduler.load_state_dict(scheduler_state)
            optimizer.load_state_dict(optimizer_state)

        resumed = [current_lr(optimizer)]
        for _ in range(total_steps - saved_at):
            resumed.append(train_step(optimizer, scheduler, clock))
        assert resumed == expected[saved_at:], saved_at


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_state_dict_round_trip_exact(schedule):
    clock = FakeClock()
    optimizer = new_optimizer()
    scheduler = make_schedule(optimizer, 5.0, schedule, warmup=1.0, unit="seconds", clock=clock)
    for _ in range(7):
        train_step(optimizer, scheduler, clock)
    state = scheduler.state_dict()

    restored = make_schedule(new_optimizer(), 5.0, schedule, warmup=1.0, unit="seconds", clock=FakeClock(50.0))
    restored.load_state_dict(save_and_reload(state))

    assert restored.state_dict() == state
    assert state["_seconds_offset"] == 1.75
    assert not any(callable(value) for value in state.values())


def test_tensor_lr_resume():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=torch.tensor(BASE_LR))
    scheduler = LinearSchedule(optimizer, 10, warmup=2)
    for _ in range(5):
        train_step(optimizer, scheduler)
    state = save_and_reload(scheduler.state_dict())

    restored_optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=torch.tensor(0.9))
    restored = LinearSchedule(restored_optimizer, 10, warmup=2)
    restored.load_state_dict(state)

    assert isinstance(restored_optimizer.param_groups[0]["lr"], torch.Tensor)
    assert restored_optimizer.param_groups[0]["lr"].item() == optimizer.param_groups[0]["lr"].item()
    assert train_step(restored_optimizer, restored).item() == train_step(optimizer, scheduler).item()


def test_state_dict_rejects_other_settings():
    optimizer = new_optimizer()
    state = LinearSchedule(optimizer, 20).state_dict()
    other = LinearSchedule(new_optimizer(), 30)

    with pytest.raises(ValueError, match="budget=20"):
        other.load_state_dict(state)

    cosine = CosineSchedule(new_optimizer(), 20)
    with pytest.raises(ValueError, match="schedule='linear'"):
        cosine.load_state_dict(state)


def test_scheduler_matches_lr_multiplier():
    cases = [
        ({"budget": 12, "unit": "steps", "warmup": 3}, lambda i, seconds: (i, 12, 3)),
        ({"budget": 3, "unit": "epochs", "steps_per_epoch": 4, "warmup": 1}, lambda i, seconds: (i, 12, 4)),
        ({"budget": 3, "unit": "seconds", "warmup": 1}, lambda i, seconds: (seconds, 3.0, 1.0)),
    ]
    for schedule in SCHEDULES:
        for settings, position in cases:
            clock = FakeClock(7.0) if settings["unit"] == "seconds" else None
            optimizer = new_optimizer()
            scheduler = make_schedule(optimizer, schedule=schedule, clock=clock, **settings)
            for i in range(16):
                step, budget, warmup = position(i, 0.25 * i)
                expected = BASE_LR * lr_multiplier(step, budget, schedule, warmup=warmup)
                assert current_lr(optimizer) == expected, (schedule, settings["unit"], i)
                train_step(optimizer, scheduler, clock)


# --- Epochs with gradient accumulation ---------------------------------------------


def test_epochs_with_accumulation_end_at_zero():
    num_batches, accumulation_steps, epochs = 10, 3, 3
    steps_per_epoch = optimizer_steps_per_epoch(num_batches, accumulation_steps)
    optimizer = new_optimizer()
    scheduler = LinearSchedule(optimizer, epochs, unit="epochs", steps_per_epoch=steps_per_epoch)
    parameter = optimizer.param_groups[0]["params"][0]

    optimizer_steps = 0
    scheduler_steps = 0
    done_after = []
    rates = [current_lr(optimizer)]
    for _ in range(epochs):
        for batch in range(num_batches):
            (parameter**2).sum().backward()
            last_in_group = (batch + 1) % accumulation_steps == 0 or batch + 1 == num_batches
            if not last_in_group:
                continue
            optimizer.step()
            optimizer.zero_grad()
            optimizer_steps += 1
            scheduler.step()
            scheduler_steps += 1
            done_after.append(scheduler.done)
            rates.append(current_lr(optimizer))

    assert steps_per_epoch == 4
    assert optimizer_steps == epochs * steps_per_epoch
    assert scheduler_steps == optimizer_steps
    assert done_after[-1] is True
    assert not any(done_after[:-1])
    assert rates[-1] == 0.0
    assert len(set(rates)) == len(rates)


def test_epochs_warmup_counts_epochs():
    optimizer = new_optimizer()
    scheduler = LinearSchedule(optimizer, 4, warmup=1, unit="epochs", steps_per_epoch=5)
    rates = [current_lr(optimizer)]
    for _ in range(20):
        rates.append(train_step(optimizer, scheduler))

    assert rates[5] == BASE_LR
    assert rates[2] == BASE_LR * 2 / 5
    assert rates[20] == 0.0
    assert scheduler.done


@pytest.mark.parametrize(
    ("num_batches", "accumulation_steps", "expected"),
    [(10, 3, 4), (9, 3, 3), (10, 1, 10), (1, 8, 1), (16, 4, 4)],
)
def test_optimizer_steps_per_epoch_counts(num_batches, accumulation_steps, expected):
    assert optimizer_steps_per_epoch(num_batches, accumulation_steps) == expected


# --- Individual schedules --------------------------------------------------------------


def test_trunk_step_exact():
    assert trunk_step(30, 0.1) == 27
    assert trunk_step(100, 0.07) == 93
    assert 100 - math.ceil(0.07 * 100) == 92  # the floating-point product is one step off
    assert trunk_step(10, 0.3) == 7
    assert trunk_step(7, 0.2) == 5
    assert trunk_step(1000, 0.2) == 800
    assert trunk_step(1, 0.5) == 0


def test_wsd_sqrt_shape():
    budget = 100
    trunk = trunk_step(budget, 0.2)
    multipliers = [lr_multiplier(t, budget, "wsd", decay_shape="sqrt") for t in range(budget + 3)]

    assert trunk == 80
    assert multipliers[:trunk + 1] == [1.0] * (trunk + 1)
    for t in range(trunk, budget + 1):
        assert multipliers[t] == pytest.approx(1 - math.sqrt((t - trunk) / (budget - trunk)), abs=1e-15), t
    assert multipliers[budget] == 0.0
    assert multipliers[budget + 2] == 0.0


def test_wsd_linear_shape():
    multipliers = [lr_multiplier(t, 30, "wsd", decay_fraction=0.1) for t in range(31)]

    assert multipliers[26] == 1.0
    assert multipliers[27] == 1.0
    assert multipliers[28] == pytest.approx(2 / 3)
    assert multipliers[30] == 0.0


def test_wsd_float_budget_continuous():
    # A float budget is time, so the decay starts at 30 * 0.75 = 22.5 s, not at step 22.
    assert trunk_step(30, 0.25) == 22
    assert lr_multiplier(22.5, 30.0, "wsd", decay_fraction=0.25) == 1.0
    assert lr_multiplier(23, 30.0, "wsd", decay_fraction=0.25) == pytest.approx(1 - 0.5 / 7.5)
    assert lr_multiplier(23, 30, "wsd", decay_fraction=0.25) == pytest.approx(1 - 1 / 8)
    assert lr_multiplier(30.0, 30.0, "wsd", decay_fraction=0.25) == 0.0


def test_step_drops_at_milestones():
    budget = 40
    multipliers = [lr_multiplier(t, budget, "step") for t in range(budget + 2)]

    assert multipliers[19] == 1.0
    assert multipliers[20] == 0.1
    assert multipliers[29] == 0.1
    assert multipliers[30] == 0.1**2
    assert multipliers[budget + 1] == 0.1**2

    custom = [lr_multiplier(t, 30, "step", milestones=(0.1, 0.9), gamma=0.5) for t in range(31)]
    assert custom[2] == 1.0
    assert custom[3] == 0.5
    assert custom[26] == 0.5
    assert custom[27] == 0.25


def test_step_milestones_compared_exactly():
    budget = 10**17
    just_before = budget // 2 - 1

    assert just_before / budget == 0.5  # floating point rounds onto the milestone
    assert lr_multiplier(just_before, budget, "step") == 1.0
    assert lr_multiplier(budget // 2, budget, "step") == 0.1


def test_exponential_reaches_final_factor():
    budget = 50
    assert lr_multiplier(0, budget, "exponential", final_factor=0.05) == 1.0
    assert lr_multiplier(25, budget, "exponential", final_factor=0.05) == pytest.approx(math.sqrt(0.05))
    assert lr_multiplier(budget, budget, "exponential", final_factor=0.05) == 0.05
    assert lr_multiplier(budget + 100, budget, "exponential", final_factor=0.05) == 0.05
    assert lr_multiplier(budget, budget, "exponential") == 0.01


def test_polynomial_power():
    assert lr_multiplier(5, 10, "polynomial") == 0.25
    assert lr_multiplier(5, 10, "polynomial", power=3.0) == 0.125
    assert lr_multiplier(10, 10, "polynomial", power=0.5) == 0.0


def test_cosine_midpoint_and_end():
    assert lr_multiplier(5, 10, "cosine") == pytest.approx(0.5)
    assert lr_multiplier(10, 10, "cosine") == 0.0
    assert lr_multiplier(12, 10, "cosine") == 0.0


def test_constant_keeps_base_rate():
    assert [lr_multiplier(t, 5, "constant") for t in range(8)] == [1.0] * 8


# --- Seconds unit ------------------------------------------------------------------------


def test_seconds_done_with_fake_clock():
    clock = FakeClock(100.0)
    optimizer = new_optimizer()
    scheduler = LinearSchedule(optimizer, 10, unit="seconds", clock=clock)

    assert not scheduler.done
    clock.advance(9.75)
    assert not scheduler.done
    train_step(optimizer, scheduler)
    assert current_lr(optimizer) == BASE_LR * lr_multiplier(9.75, 10.0)
    clock.advance(0.25)
    assert scheduler.done
    train_step(optimizer, scheduler)
    assert current_lr(optimizer) == 0.0


def test_seconds_done_after_resume():
    clock = FakeClock()
    scheduler = LinearSchedule(new_optimizer(), 10.0, unit="seconds", clock=clock)
    clock.advance(6.0)
    state = scheduler.state_dict()

    later_clock = FakeClock(500.0)
    restored = LinearSchedule(new_optimizer(), 10.0, unit="seconds", clock=later_clock)
    later_clock.advance(30.0)  # time before loading is not counted
    restored.load_state_dict(state)
    later_clock.advance(3.75)
    assert not restored.done
    later_clock.advance(0.25)
    assert restored.done


def test_steps_done_at_budget():
    optimizer = new_optimizer()
    scheduler = CosineSchedule(optimizer, 3)
    done = [scheduler.done]
    for _ in range(4):
        train_step(optimizer, scheduler)
        done.append(scheduler.done)

    assert done == [False, False, False, True, True]


# --- Factory -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "expected_class"),
    [
        ("linear", LinearSchedule),
        ("cosine", CosineSchedule),
        ("step", StepSchedule),
        ("exponential", ExponentialSchedule),
        ("polynomial", PolynomialSchedule),
        ("wsd", WSDSchedule),
        ("constant", ConstantSchedule),
    ],
)
def test_make_schedule_class(schedule, expected_class):
    scheduler = make_schedule(new_optimizer(), 10, schedule)

    assert type(scheduler) is expected_class
    assert scheduler.schedule == schedule


def test_make_schedule_passes_options():
    optimizer = new_optimizer()
    scheduler = make_schedule(optimizer, 10, "step", milestones=(0.2,), gamma=0.5)
    rates = [current_lr(optimizer)]
    for _ in range(3):
        rates.append(train_step(optimizer, scheduler))

    assert rates == [BASE_LR, BASE_LR, BASE_LR * 0.5, BASE_LR * 0.5]


# --- Invalid input -----------------------------------------------------------------------

INVALID_FUNCTION_CALLS = [
    ({"step": 0, "budget": 0}, "budget=0"),
    ({"step": 0, "budget": -5}, "budget=-5"),
    ({"step": 0, "budget": True}, "budget=True"),
    ({"step": 0, "budget": float("nan")}, "budget=nan"),
    ({"step": -1, "budget": 10}, "step=-1"),
    ({"step": 0, "budget": 250, "warmup": 300}, "warmup=300 must be below the budget 250"),
    ({"step": 0, "budget": 10, "warmup": -1}, "warmup=-1"),
    ({"step": 0, "budget": 10, "schedule": "cosin"}, "'cosin'"),
    ({"step": 0, "budget": 10, "schedule": "step", "gama": 0.1}, "'gama'"),
    ({"step": 0, "budget": 10, "schedule": "linear", "power": 2.0}, "'power'"),
    ({"step": 0, "budget": 10, "schedule": "step", "gamma": 1.5}, "gamma=1.5"),
    ({"step": 0, "budget": 10, "schedule": "step", "milestones": (0.75, 0.5)}, "milestones=(0.75, 0.5)"),
    ({"step": 0, "budget": 10, "schedule": "step", "milestones": (0.5, 1.0)}, "1.0"),
    ({"step": 0, "budget": 10, "schedule": "exponential", "final_factor": 0.0}, "final_factor=0.0"),
    ({"step": 0, "budget": 10, "schedule": "exponential", "final_factor": 1.0}, "final_factor=1.0"),
    ({"step": 0, "budget": 10, "schedule": "polynomial", "power": 0}, "power=0"),
    ({"step": 0, "budget": 10, "schedule": "wsd", "decay_fraction": 1.0}, "decay_fraction=1.0"),
    ({"step": 0, "budget": 10, "schedule": "wsd", "decay_fraction": 0}, "decay_fraction=0"),
    ({"step": 0, "budget": 10, "schedule": "wsd", "decay_shape": "cubic"}, "decay_shape='cubic'"),
    ({"step": 0, "budget": 30, "schedule": "wsd", "decay_fraction": 0.1, "warmup": 28}, "warmup=28"),
]


@pytest.mark.parametrize(("arguments", "message"), INVALID_FUNCTION_CALLS)
def test_lr_multiplier_rejects_invalid(arguments, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        lr_multiplier(**arguments)


INVALID_SCHEDULER_ARGUMENTS = [
    ({"budget": 2.5}, "budget=2.5"),
    ({"budget": True}, "budget=True"),
    ({"budget": 0}, "budget=0"),
    ({"budget": 10, "warmup": 10}, "warmup=10"),
    ({"budget": 10, "warmup": 1.5}, "warmup=1.5"),
    ({"budget": 10, "unit": "minutes"}, "unit='minutes'"),
    ({"budget": 10, "unit": "epochs"}, "steps_per_epoch=None"),
    ({"budget": 10, "unit": "epochs", "steps_per_epoch": 0}, "steps_per_epoch=0"),
    ({"budget": 10, "steps_per_epoch": 4}, "steps_per_epoch=4"),
    ({"budget": 2.5, "unit": "epochs", "steps_per_epoch": 4}, "budget=2.5"),
    ({"budget": 10.0, "unit": "seconds", "warmup": 10.0}, "warmup=10.0"),
    ({"budget": float("inf"), "unit": "seconds"}, "budget=inf"),
    ({"budget": 10.0, "unit": "seconds", "clock": 3.0}, "clock=3.0"),
    ({"budget": 10, "clock": lambda: 0.0}, "unit='steps'"),
    ({"budget": 10, "schedule": "sgdr"}, "'sgdr'"),
    ({"budget": 10, "schedule": "cosine", "eta_min": 0.0}, "'eta_min'"),
    ({"budget": 4, "unit": "epochs", "steps_per_epoch": 10, "schedule": "wsd", "warmup": 4}, "warmup=4"),
]


@pytest.mark.parametrize(("arguments", "message"), INVALID_SCHEDULER_ARGUMENTS)
def test_make_schedule_rejects_invalid(arguments, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make_schedule(new_optimizer(), **arguments)


def test_invalid_helper_arguments():
    with pytest.raises(ValueError, match=re.escape("budget=30.0")):
        trunk_step(30.0, 0.1)
    with pytest.raises(ValueError, match=re.escape("decay_fraction=1.2")):
        trunk_step(30, 1.2)
    with pytest.raises(ValueError, match=re.escape("num_batches=0")):
        optimizer_steps_per_epoch(0)
    with pytest.raises(ValueError, match=re.escape("accumulation_steps=False")):
        optimizer_steps_per_epoch(10, False)


def test_unknown_schedule_lists_choices():
    with pytest.raises(ValueError, match=re.escape(str(SCHEDULES))):
        make_schedule(new_optimizer(), 10, "onecycle")


def test_base_class_needs_schedule_name():
    with pytest.raises(TypeError, match="BudgetSchedule"):
        BudgetSchedule(new_optimizer(), 10)


def test_state_dict_excludes_optimizer():
    # The optimizer has its own state_dict, so a checkpoint would store it twice.
    scheduler = LinearSchedule(new_optimizer(), 10)
    state = scheduler.state_dict()

    assert "optimizer" not in state
    assert copy.deepcopy(state) == state


def test_schedule_from_description_matches_make_schedule():
    description = {"name": "step", "options": {"gamma": 0.5, "milestones": [0.5]}, "warmup": 2, "unit": "steps"}
    from_description = schedule_from_description(new_optimizer(), 10, description)
    direct = make_schedule(new_optimizer(), 10, "step", warmup=2, gamma=0.5, milestones=[0.5])
    assert type(from_description) is StepSchedule
    assert [train_step(from_description.optimizer, from_description) for _ in range(10)] == [
        train_step(direct.optimizer, direct) for _ in range(10)
    ]


def test_schedule_from_description_defaults_and_overrides():
    assert type(schedule_from_description(new_optimizer(), 10, None)) is LinearSchedule
    assert type(schedule_from_description(new_optimizer(), 10, {})) is LinearSchedule
    overridden = schedule_from_description(new_optimizer(), 10, {"name": "step", "options": {"gamma": 0.5}}, gamma=0.25)
    reference = make_schedule(new_optimizer(), 10, "step", gamma=0.25)
    assert [train_step(overridden.optimizer, overridden) for _ in range(10)] == [
        train_step(reference.optimizer, reference) for _ in range(10)
    ]


def test_schedule_from_description_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown keys \\['warm_up'\\]"):
        schedule_from_description(new_optimizer(), 10, {"name": "linear", "warm_up": 2})
    assert type(schedule_from_description(new_optimizer(), 10, {"name": "cosine", "options": None})) is CosineSchedule
