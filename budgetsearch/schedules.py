"""Learning-rate schedules that end exactly at a compute budget.

Every schedule is a closed form ``lr(t) = base_lr * m(t / T)`` of the position ``t``
within the budget ``T``. The multiplier ``m`` depends only on the position, never on
how many times ``step()`` ran before a resume, so a run restored from a checkpoint
follows the same curve as an uninterrupted one.

A budget of ``T`` steps covers optimizer steps ``0 .. T - 1``. Step ``t`` uses
``m(t / T)``, and from ``t = T`` on the multiplier stays at its final value (0 for
``linear``) instead of turning negative or raising.

``lr_multiplier`` computes the multiplier as a plain function for training loops
without a PyTorch optimizer. ``make_schedule`` and the ``*Schedule`` classes apply the
same function to a ``torch.optim`` optimizer, with the budget counted in optimizer
steps, epochs or seconds of training time.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = [
    "SCHEDULES",
    "UNITS",
    "WSD_DECAY_SHAPES",
    "BudgetSchedule",
    "ConstantSchedule",
    "CosineSchedule",
    "ExponentialSchedule",
    "LinearSchedule",
    "PolynomialSchedule",
    "StepSchedule",
    "WSDSchedule",
    "lr_multiplier",
    "make_schedule",
    "schedule_from_description",
    "optimizer_steps_per_epoch",
    "trunk_step",
]

SCHEDULES = ("linear", "cosine", "step", "exponential", "polynomial", "wsd", "constant")
UNITS = ("steps", "epochs", "seconds")
WSD_DECAY_SHAPES = ("linear", "sqrt")

_COUNTED_UNITS = ("steps", "epochs")

_DEFAULT_MILESTONES = (0.5, 0.75)
_DEFAULT_GAMMA = 0.1
_DEFAULT_FINAL_FACTOR = 0.01
_DEFAULT_POWER = 2.0
_DEFAULT_DECAY_FRACTION = 0.2
_DEFAULT_DECAY_SHAPE = "linear"

_DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "linear": {},
    "cosine": {},
    "step": {"milestones": _DEFAULT_MILESTONES, "gamma": _DEFAULT_GAMMA},
    "exponential": {"final_factor": _DEFAULT_FINAL_FACTOR},
    "polynomial": {"power": _DEFAULT_POWER},
    "wsd": {"decay_fraction": _DEFAULT_DECAY_FRACTION, "decay_shape": _DEFAULT_DECAY_SHAPE},
    "constant": {},
}


# --- Input checks -------------------------------------------------------------------


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _exact(value: float) -> Fraction:
    """Return the decimal value that the user wrote, as an exact fraction.

    In floating point 0.07 * 100 is 7.000000000000001, so a ceiling of the product
    would count one step too many. The shortest repr of a float is the decimal it
    was written as.
    """
    return Fraction(repr(float(value)))


def _check_schedule(schedule: object) -> str:
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}. Choose one of {SCHEDULES}.")
    return str(schedule)


def _check_open_unit_interval(name: str, value: object) -> float:
    if not _is_real(value) or not 0 < value < 1:
        raise ValueError(f"{name}={value!r} must be a number in the open interval (0, 1)")
    return float(value)


def _check_milestones(milestones: object) -> tuple[float, ...]:
    expected = "a sequence of increasing fractions of the budget, each in the open interval (0, 1)"
    if isinstance(milestones, (str, bytes)):
        raise ValueError(f"milestones={milestones!r} must be {expected}")
    try:
        items = tuple(milestones)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"milestones={milestones!r} must be {expected}") from None

    for item in items:
        if not _is_real(item) or not 0 < item < 1:
            raise ValueError(f"milestones={milestones!r} contains {item!r}, but it must be {expected}")
    for earlier, later in zip(items, items[1:]):
        if not earlier < later:
            raise ValueError(f"milestones={milestones!r} is not increasing, but it must be {expected}")
    return tuple(float(item) for item in items)


def _check_option_names(schedule: str, options: Mapping[str, object]) -> None:
    accepted = sorted(_DEFAULT_OPTIONS[schedule])
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        accepted_text = ", ".join(accepted) if accepted else "none"
        names = ", ".join(repr(name) for name in unknown)
        raise ValueError(
            f"unknown option {names} for schedule {schedule!r}. Accepted options: {accepted_text}."
        )


def _normalize_options(schedule: str, options: Mapping[str, object]) -> dict[str, Any]:
    """Fill in the defaults and return the options as plain Python values."""
    _check_option_names(schedule, options)
    merged = {**_DEFAULT_OPTIONS[schedule], **options}

    if schedule == "step":
        merged["milestones"] = _check_milestones(merged["milestones"])
        merged["gamma"] = _check_open_unit_interval("gamma", merged["gamma"])
    elif schedule == "exponential":
        merged["final_factor"] = _check_open_unit_interval("final_factor", merged["final_factor"])
    elif schedule == "polynomial":
        power = merged["power"]
        if not _is_real(power) or not 0 < power < math.inf:
            raise ValueError(f"power={power!r} must be a positive finite number")
        merged["power"] = float(power)
    elif schedule == "wsd":
        merged["decay_fraction"] = _check_open_unit_interval("decay_fraction", merged["decay_fraction"])
        shape = merged["decay_shape"]
        if shape not in WSD_DECAY_SHAPES:
            raise ValueError(f"decay_shape={shape!r} must be one of {WSD_DECAY_SHAPES}")
    return merged


def _check_budget(budget: object, unit: str | None) -> int | float:
    """Return the budget as an int (counted units) or float (seconds).

    ``unit=None`` is the plain function, which takes an int number of steps or a
    float time.
    """
    if unit in _COUNTED_UNITS:
        if not _is_integer(budget) or budget <= 0:
            raise ValueError(
                f"budget={budget!r} must be a positive int number of {unit}."
                " Use unit='seconds' for a time budget."
            )
        return int(budget)

    of_unit = f" of {unit}" if unit else ""
    if not _is_real(budget) or not 0 < budget < math.inf:
        raise ValueError(f"budget={budget!r} must be a positive finite number{of_unit}")
    if unit is None and _is_integer(budget):
        return int(budget)
    return float(budget)


def _wsd_decay_start(budget: int | float, decay_fraction: float) -> int | float:
    """Return where the wsd decay phase starts: a step for an int budget, a time for a float."""
    if isinstance(budget, int):
        return trunk_step(budget, decay_fraction)
    return float(Fraction(budget) * (1 - _exact(decay_fraction)))


def _check_warmup(
    warmup: object,
    budget: int | float,
    schedule: str,
    options: Mapping[str, Any],
    unit: str | None,
    steps_per_epoch: int | None = None,
) -> int | float:
    """Return the warm-up length in the budget's unit, or raise ValueError."""
    unit_text = f" {unit}" if unit else ""
    if unit in _COUNTED_UNITS:
        valid_type = _is_integer(warmup)
        kind = f"an int number of {unit}"
    else:
        valid_type = _is_real(warmup)
        kind = f"a number of {unit}" if unit else "a number"
    if not valid_type or not 0 <= warmup < math.inf:
        raise ValueError(f"warmup={warmup!r} must be {kind} of at least 0")
    warmup = int(warmup) if _is_integer(warmup) else float(warmup)

    if schedule != "wsd":
        if warmup >= budget:
            raise ValueError(
                f"warmup={warmup!r} must be below the budget {budget!r}{unit_text}. Lower warmup or raise the budget."
            )
        return warmup

    decay_fraction = options["decay_fraction"]
    per_unit = steps_per_epoch or 1
    decay_start = _wsd_decay_start(budget * per_unit, decay_fraction)
    if warmup * per_unit > decay_start:
        warmup_text = f"warmup={warmup!r}{unit_text}"
        if steps_per_epoch:
            warmup_text += f" ({warmup * per_unit} steps)"
        start_name = "trunk step" if isinstance(decay_start, int) else "decay start"
        raise ValueError(
            f"{warmup_text} must be at most the {start_name} {decay_start}, where the wsd decay"
            f" starts for budget {budget!r}{unit_text} and decay_fraction {decay_fraction!r}."
            " Lower warmup or decay_fraction."
        )
    return warmup


# --- The multiplier ------------------------------------------------------------------


class _Curve:
    """Checked schedule settings, with positions in counted steps or in seconds.

    An int budget counts steps, so the wsd trunk step is an integer and step
    milestones are compared in exact arithmetic. A float budget is continuous time.
    """

    __slots__ = ("budget", "decay_start", "milestone_fractions", "options", "schedule", "warmup")

    def __init__(
        self, schedule: str, budget: int | float, warmup: int | float, options: Mapping[str, Any]
    ) -> None:
        self.schedule = schedule
        self.budget = budget
        self.warmup = warmup
        self.options = dict(options)
        self.decay_start: int | float = warmup
        if schedule == "wsd":
            self.decay_start = _wsd_decay_start(budget, options["decay_fraction"])
        self.milestone_fractions: tuple[Fraction, ...] = ()
        if schedule == "step":
            self.milestone_fractions = tuple(_exact(m) for m in options["milestones"])

    def multiplier(self, position: int | float) -> float:
        warmup = self.warmup
        if warmup > 0 and position < warmup:
            return position / warmup
        if self.schedule == "wsd":
            return self._wsd_multiplier(position)
        if warmup == 0:
            # A separate branch keeps the result bit-for-bit equal to m(t / T).
            return self._decay(position, self.budget)
        return self._decay(position - warmup, self.budget - warmup)

    def _decay(self, elapsed: int | float, span: int | float) -> float:
        """Return the decay multiplier after ``elapsed`` of a decay phase of length ``span``."""
        progress = 1.0 if elapsed >= span else elapsed / span
        schedule = self.schedule
        if schedule == "linear":
            return 1.0 - progress
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if schedule == "step":
            return self.options["gamma"] ** self._milestones_passed(elapsed, span, progress)
        if schedule == "exponential":
            return self.options["final_factor"] ** progress
        if schedule == "polynomial":
            return (1.0 - progress) ** self.options["power"]
        return 1.0

    def _milestones_passed(self, elapsed: int | float, span: int | float, progress: float) -> int:
        if _is_integer(elapsed) and _is_integer(span):
            # For a huge budget, elapsed / span can round onto a milestone that the
            # step has not reached, so counted steps are compared exactly.
            exact_progress = Fraction(int(elapsed), int(span)) if elapsed < span else Fraction(1)
            return sum(1 for milestone in self.milestone_fractions if milestone <= exact_progress)
        return sum(1 for milestone in self.options["milestones"] if milestone <= progress)

    def _wsd_multiplier(self, position: int | float) -> float:
        decay_start = self.decay_start
        if position < decay_start:
            return 1.0
        span = self.budget - decay_start
        elapsed = position - decay_start
        fraction = 1.0 if elapsed >= span else elapsed / span
        if self.options["decay_shape"] == "linear":
            return 1.0 - fraction
        return 1.0 - math.sqrt(fraction)


def trunk_step(budget: int, decay_fraction: float) -> int:
    """Return the step where the wsd decay phase starts: ``budget - ceil(decay_fraction * budget)``.

    The ceiling is taken in exact arithmetic on the decimal value of ``decay_fraction``,
    so ``trunk_step(100, 0.07)`` is 93 although ``0.07 * 100`` is slightly above 7 in
    floating point. The decay phase always has at least one step.

    Args:
        budget: number of optimizer steps, a positive int.
        decay_fraction: fraction of the budget spent decaying, in the open interval (0, 1).

    Raises:
        ValueError: if an argument is out of range.

    >>> trunk_step(30, 0.1)
    27
    >>> trunk_step(100, 0.07)
    93
    """
    if not _is_integer(budget) or budget <= 0:
        raise ValueError(f"budget={budget!r} must be a positive int number of steps")
    fraction = _check_open_unit_interval("decay_fraction", decay_fraction)
    budget = int(budget)
    return budget - math.ceil(budget * _exact(fraction))


def optimizer_steps_per_epoch(num_batches: int, accumulation_steps: int = 1) -> int:
    """Return the number of optimizer steps in one epoch with gradient accumulation.

    The last group of an epoch may hold fewer than ``accumulation_steps`` batches and
    still ends with an optimizer step, so the count is
    ``ceil(num_batches / accumulation_steps)``.

    >>> optimizer_steps_per_epoch(10, 3)
    4
    """
    if not _is_integer(num_batches) or num_batches <= 0:
        raise ValueError(f"num_batches={num_batches!r} must be a positive int")
    if not _is_integer(accumulation_steps) or accumulation_steps <= 0:
        raise ValueError(f"accumulation_steps={accumulation_steps!r} must be a positive int")
    return -(-int(num_batches) // int(accumulation_steps))


def lr_multiplier(
    step: int | float,
    budget: int | float,
    schedule: str = "linear",
    *,
    warmup: int | float = 0,
    **options: Any,
) -> float:
    """Return the learning-rate multiplier at ``step`` of a budget, for any training loop.

    The schedule classes call the same code, so their rate is exactly
    ``base_lr * lr_multiplier(...)``. Before ``warmup`` the multiplier rises as
    ``step / warmup``. After it, the decay runs over the rest of the budget (for
    ``wsd``, the stable phase shortens instead). From ``step = budget`` on it stays at
    the final value.

    Args:
        step: position in the budget, at least 0: optimizer steps done, or seconds used.
        budget: the budget T. An int counts steps. A float is continuous time, where
            the wsd decay starts at ``budget * (1 - decay_fraction)`` instead of at
            ``trunk_step(budget, decay_fraction)``.
        schedule: one of ``SCHEDULES``.
        warmup: warm-up length in the unit of ``budget``.
        **options: options of the schedule: ``milestones`` and ``gamma`` (step),
            ``final_factor`` (exponential), ``power`` (polynomial), ``decay_fraction``
            and ``decay_shape`` (wsd).

    Raises:
        ValueError: for an unknown schedule or option, or an argument out of range.

    >>> [lr_multiplier(t, 4) for t in range(6)]
    [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    >>> [lr_multiplier(t, 4, "cosine", warmup=2) for t in range(5)]
    [0.0, 0.5, 1.0, 0.5, 0.0]
    """
    schedule = _check_schedule(schedule)
    checked_options = _normalize_options(schedule, options)
    budget = _check_budget(budget, None)
    warmup = _check_warmup(warmup, budget, schedule, checked_options, None)
    if not _is_real(step) or not 0 <= step < math.inf:
        raise ValueError(f"step={step!r} must be a finite number of at least 0")
    step = int(step) if _is_integer(step) else float(step)
    return _Curve(schedule, budget, warmup, checked_options).multiplier(step)


# --- PyTorch schedulers --------------------------------------------------------------

# Settings that a saved state must share with the scheduler that loads it.
_SETTING_KEYS = ("schedule", "unit", "budget", "warmup", "steps_per_epoch", "options")
# Attributes that are rebuilt on construction or belong to this process only.
_UNSAVED_ATTRIBUTES = ("optimizer", "_curve", "_clock", "_clock_start")


def _set_group_lr(group: dict[str, Any], rate: float | torch.Tensor) -> None:
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(float(rate))
    else:
        group["lr"] = rate


class BudgetSchedule(LRScheduler):
    """Base class of the schedules that end at a fixed budget.

    Each param group's rate is ``base_lr * lr_multiplier(position, budget, schedule,
    warmup=warmup, **options)``, computed from ``base_lrs`` and never from the current
    ``lr``. Call ``step()`` once after every optimizer step. Subclasses set the
    ``schedule`` name and take that schedule's options as keyword arguments.

    Args:
        optimizer: the wrapped optimizer.
        budget: the budget in ``unit``: an int for ``"steps"`` and ``"epochs"``, an int
            or float for ``"seconds"``.
        warmup: warm-up length in ``unit``. The rate rises linearly from 0 to the base
            rate over it. An int for ``"steps"`` and ``"epochs"``.
        unit: ``"steps"`` counts optimizer steps. ``"epochs"`` counts optimizer steps
            against ``budget * steps_per_epoch``, so the rate changes every step.
            ``"seconds"`` measures training time with ``clock`` from the creation of
            the scheduler, plus the time used before ``load_state_dict``.
        steps_per_epoch: optimizer steps in one epoch, required for ``"epochs"``
            (see ``optimizer_steps_per_epoch``).
        clock: callable that returns the time in seconds, for ``"seconds"`` only.
            Defaults to ``time.monotonic``. It is not saved in the state dict.
        last_epoch: number of ``step()`` calls before this one, -1 for a new run, as in
            ``torch.optim.lr_scheduler.LRScheduler``.

    Raises:
        ValueError: for an invalid budget, warm-up, unit or schedule option.

    A time budget ends the training loop through ``done``:

    >>> import torch
    >>> optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> now = [0.0]
    >>> scheduler = LinearSchedule(optimizer, 60.0, unit="seconds", clock=lambda: now[0])
    >>> now[0] = 45.0
    >>> optimizer.step()
    >>> scheduler.step()
    >>> scheduler.get_last_lr(), scheduler.done
    ([0.25], False)
    >>> now[0] = 60.0
    >>> scheduler.done
    True
    """

    schedule: str = ""

    def __init__(
        self,
        optimizer: Optimizer,
        budget: int | float,
        *,
        warmup: int | float = 0,
        unit: str = "steps",
        steps_per_epoch: int | None = None,
        clock: Callable[[], float] | None = None,
        last_epoch: int = -1,
        **options: Any,
    ) -> None:
        if self.schedule not in SCHEDULES:
            raise TypeError(
                f"{type(self).__name__} has no schedule name. Use make_schedule or a subclass such as LinearSchedule."
            )
        if unit not in UNITS:
            raise ValueError(f"unit={unit!r} must be one of {UNITS}")

        if unit == "epochs":
            if not _is_integer(steps_per_epoch) or steps_per_epoch <= 0:
                raise ValueError(
                    f"steps_per_epoch={steps_per_epoch!r} must be a positive int for unit='epochs'."
                    " Compute it with optimizer_steps_per_epoch(num_batches, accumulation_steps)."
                )
            steps_per_epoch = int(steps_per_epoch)
        elif steps_per_epoch is not None:
            raise ValueError(
                f"steps_per_epoch={steps_per_epoch!r} applies only to unit='epochs', not unit={unit!r}. Remove it."
            )
        if unit != "seconds" and clock is not None:
            raise ValueError(f"clock applies only to unit='seconds', not unit={unit!r}. Remove it.")
        if clock is not None and not callable(clock):
            raise ValueError(f"clock={clock!r} must be a callable that returns seconds")

        self.unit = unit
        self.budget = _check_budget(budget, unit)
        self.steps_per_epoch = steps_per_epoch
        self.options = _normalize_options(self.schedule, options)
        self.warmup = _check_warmup(warmup, self.budget, self.schedule, self.options, unit, steps_per_epoch)

        per_unit = steps_per_epoch or 1
        self._curve = _Curve(self.schedule, self.budget * per_unit, self.warmup * per_unit, self.options)

        self._clock: Callable[[], float] | None = None
        if unit == "seconds":
            self._clock = clock if clock is not None else time.monotonic
            self._clock_start = self._clock()
            # Seconds used before _clock_start, from an earlier run.
            self._seconds_offset = 0.0
            # Seconds used at the most recent step(), which set the current rates.
            self._seconds_at_step = 0.0

        super().__init__(optimizer, last_epoch)

    def _seconds_used(self) -> float:
        used = self._seconds_offset + (self._clock() - self._clock_start)  # type: ignore[misc]
        # A clock that runs backwards must not give a negative position.
        return max(used, 0.0)

    def _position(self) -> int | float:
        """Return the position of the most recent step in the curve's unit."""
        if self.unit == "seconds":
            return self._seconds_at_step
        return self.last_epoch

    def _rates_at(self, position: int | float) -> list[float | torch.Tensor]:
        multiplier = self._curve.multiplier(position)
        return [base_lr * multiplier for base_lr in self.base_lrs]

    @property
    def done(self) -> bool:
        """Whether the budget is spent, so a training loop can stop."""
        if self.unit == "seconds":
            return self._seconds_used() >= self._curve.budget
        return self.last_epoch >= self._curve.budget

    def step(self, epoch: int | None = None) -> None:
        """Advance the schedule after an optimizer step and set each group's ``lr``."""
        if self.unit == "seconds":
            self._seconds_at_step = self._seconds_used()
        super().step(epoch)

    def get_lr(self) -> list[float | torch.Tensor]:
        """Return the rate of each param group at the most recent step, from ``base_lrs``."""
        return self._rates_at(self._position())

    def _get_closed_form_lr(self) -> list[float | torch.Tensor]:
        return self._rates_at(self._position())

    def state_dict(self) -> dict[str, Any]:
        """Return the scheduler state, with the settings and the seconds used so far.

        The clock is not saved, and the state contains only Python and torch values,
        so ``torch.load(..., weights_only=True)`` can read it.
        """
        state = {key: value for key, value in self.__dict__.items() if key not in _UNSAVED_ATTRIBUTES}
        state["schedule"] = self.schedule
        state["options"] = dict(self.options)
        if self.unit == "seconds":
            state["_seconds_offset"] = self._seconds_used()
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a saved state and set each param group's ``lr`` to its rate.

        Setting ``lr`` here makes the next rates the same whether the optimizer state
        is loaded before or after this one. For ``"seconds"``, the time used continues
        from the saved value, and the time between creating this scheduler and loading
        the state is not counted.

        Raises:
            ValueError: if the state was saved with other settings (schedule, unit,
                budget, warm-up, steps per epoch or options).
        """
        self._check_saved_settings(state_dict)
        state = {key: value for key, value in state_dict.items() if key != "schedule"}
        self.__dict__.update(state)
        self.options = _normalize_options(self.schedule, self.options)
        if self.unit == "seconds":
            self._clock_start = self._clock()  # type: ignore[misc]

        rates = self._rates_at(self._position())
        for group, rate in zip(self.optimizer.param_groups, rates, strict=True):
            _set_group_lr(group, rate)
        self._last_lr = [
            group["lr"].clone() if isinstance(group["lr"], torch.Tensor) else group["lr"]
            for group in self.optimizer.param_groups
        ]

    def _check_saved_settings(self, state_dict: Mapping[str, Any]) -> None:
        missing = [key for key in _SETTING_KEYS if key not in state_dict]
        if missing:
            raise ValueError(
                f"state_dict is missing {', '.join(missing)}. Load a state saved by {type(self).__name__}.state_dict()."
            )
        saved = {key: state_dict[key] for key in _SETTING_KEYS}
        if saved["schedule"] in SCHEDULES:
            # Options that were saved through a format without tuples, such as JSON,
            # compare equal after normalizing. Options that fail to normalize are
            # reported as a mismatch below.
            try:
                saved["options"] = _normalize_options(saved["schedule"], saved["options"])
            except (ValueError, TypeError):
                pass
        current = {key: self.schedule if key == "schedule" else getattr(self, key) for key in _SETTING_KEYS}
        for key in _SETTING_KEYS:
            if saved[key] != current[key]:
                raise ValueError(
                    f"state_dict was saved with {key}={saved[key]!r}, but this scheduler has"
                    f" {key}={current[key]!r}. Create the scheduler with the saved settings before loading."
                )


class LinearSchedule(BudgetSchedule):
    """Decay the learning rate linearly from the base rate to 0 at the budget.

    Rule: ``m(p) = 1 - p`` for ``p = t / T``. The arguments and their units are those
    of ``BudgetSchedule``.

    >>> import torch
    >>> optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.4)
    >>> scheduler = LinearSchedule(optimizer, budget=4)
    >>> rates = []
    >>> for _ in range(6):
    ...     rates.append(round(scheduler.get_last_lr()[0], 6))
    ...     optimizer.step()
    ...     scheduler.step()
    >>> rates
    [0.4, 0.3, 0.2, 0.1, 0.0, 0.0]
    """

    schedule = "linear"


class CosineSchedule(BudgetSchedule):
    """Decay the learning rate along a half cosine from the base rate to 0 at the budget.

    Rule: ``m(p) = 0.5 * (1 + cos(pi * p))`` for ``p = t / T``. The arguments and their
    units are those of ``BudgetSchedule``.

    >>> import torch
    >>> optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> scheduler = CosineSchedule(optimizer, budget=4)
    >>> rates = []
    >>> for _ in range(5):
    ...     rates.append(round(scheduler.get_last_lr()[0], 4))
    ...     optimizer.step()
    ...     scheduler.step()
    >>> rates
    [1.0, 0.8536, 0.5, 0.1464, 0.0]
    """

    schedule = "cosine"


class StepSchedule(BudgetSchedule):
    """Multiply the learning rate by ``gamma`` at fixed fractions of the budget.

    Rule: ``m(p) = gamma ** k``, where ``k`` is the number of milestones ``<= p`` for
    ``p = t / T``. Milestones are compared exactly for step-counted units.

    Args:
        milestones: increasing fractions of the budget (of the part after the
            warm-up), each in the open interval (0, 1). Default ``(0.5, 0.75)``.
        gamma: factor applied at each milestone, in the open interval (0, 1).
            Default 0.1.

    The other arguments and their units are those of ``BudgetSchedule``.

    >>> import torch
    >>> optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> scheduler = StepSchedule(optimizer, budget=4)
    >>> rates = []
    >>> for _ in range(5):
    ...     rates.append(round(scheduler.get_last_lr()[0], 4))
    ...     optimizer.step()
    ...     scheduler.step()
    >>> rates
    [1.0, 1.0, 0.1, 0.01, 0.01]
    """

    schedule = "step"

    def __init__(
        self,
        optimizer: Optimizer,
        budget: int | float,
        *,
        milestones: tuple[float, ...] = _DEFAULT_MILESTONES,
        gamma: float = _DEFAULT_GAMMA,
        warmup: int | float = 0,
        unit: str = "steps",
        steps_per_epoch: int | None = None,
        clock: Callable[[], float] | None = None,
        last_epoch: int = -1,
    ) -> None:
        super().__init__(
            optimizer,
            budget,
            warmup=warmup,
            unit=unit,
            steps_per_epoch=steps_per_epoch,
            clock=clock,
            last_epoch=last_epoch,
            milestones=milestones,
            gamma=gamma,
        )


class ExponentialSchedule(BudgetSchedule):
    """Decay the learning rate exponentially to ``final_factor`` times the base rate.

    Rule: ``m(p) = final_factor ** p`` for ``p = t / T``, so the rate is
    ``final_factor * base_lr`` at the budget and after it.

    Args:
        final_factor: multiplier reached at the budget, in the open interval (0, 1).
            Default 0.01.

    The other arguments and their units are those of ``BudgetSchedule``.

    >>> import torch
    >>> optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> scheduler = ExponentialSchedule(optimizer, budget=2)
    >>> rates = []
    >>> for _ in range(3):
    ...     rates.append(round(scheduler.get_last_lr()[0], 4))
    ...     optimizer.step()
    ...     scheduler.step()
    >>> rates
    [1.0, 0.1, 0.01]
    """

    schedule = "exponential"

    def __init__(
        self,
        optimizer: Optimizer,
        budget: int | float,
        *,
        final_factor: float = _DEFAULT_FINAL_FACTOR,
        warmup: int | float = 0,
        unit: str = "steps",
        steps_per_epoch: int | None = None,
        clock: Callable[[], float] | None = None,
        last_epoch: int = -1,
    ) -> None:
        super().__init__(
            optimizer,
            budget,
            warmup=warmup,
            unit=unit,
            steps_per_epoch=steps_per_epoch,
            clock=clock,
            last_epoch=last_epoch,
            final_factor=final_factor,
        )


class PolynomialSchedule(BudgetSchedule):
    """Decay the learning rate as a power of the remaining budget, to 0 at the budget.

    Rule: ``m(p) = (1 - p) ** power`` for ``p = t / T``.

    Args:
        power: exponent, a positive number. Default 2.0.

    The other arguments and their units are those of ``BudgetSchedule``.

    >>> import torch
    >>> optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> scheduler = PolynomialSchedule(optimizer, budget=4)
    >>> rates = []
    >>> for _ in range(5):
    ...     rates.append(round(scheduler.get_last_lr()[0], 4))
    ...     optimizer.step()
    ...     scheduler.step()
    >>> rates
    [1.0, 0.5625, 0.25, 0.0625, 0.0]
    """

    schedule = "polynomial"

    def __init__(
        self,
        optimizer: Optimizer,
        budget: int | float,
        *,
        power: float = _DEFAULT_POWER,
        warmup: int | float = 0,
        unit: str = "steps",
        steps_per_epoch: int | None = None,
        clock: Callable[[], float] | None = None,
        last_epoch: int = -1,
    ) -> None:
        super().__init__(
            optimizer,
            budget,
            warmup=warmup,
            unit=unit,
            steps_per_epoch=steps_per_epoch,
            clock=clock,
            last_epoch=last_epoch,
            power=power,
        )


class WSDSchedule(BudgetSchedule):
    """Hold the learning rate at the base rate, then decay it to 0 at the budget.

    Rule (warmup-stable-decay): the multiplier is 1 until the trunk step
    ``T - ceil(decay_fraction * T)`` (see ``trunk_step``), then falls to 0 at ``T`` as
    ``1 - q`` (``decay_shape="linear"``) or ``1 - sqrt(q)`` (``"sqrt"``), where
    ``q = (t - trunk) / (T - trunk)``. A warm-up shortens the stable phase and leaves
    the decay phase unchanged, so ``warmup`` must be at most the trunk step. For
    ``unit="seconds"`` the decay starts at ``T * (1 - decay_fraction)``.

    Args:
        decay_fraction: fraction of the budget spent decaying, in the open interval
            (0, 1). Default 0.2.
        decay_shape: ``"linear"`` (default) or ``"sqrt"``.

    The other arguments and their units are those of ``BudgetSchedule``.

    >>> import torch
    >>> optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> scheduler = WSDSchedule(optimizer, budget=10, decay_fraction=0.3, warmup=2)
    >>> rates = []
    >>> for _ in range(11):
    ...     rates.append(round(scheduler.get_last_lr()[0], 4))
    ...     optimizer.step()
    ...     scheduler.step()
    >>> rates
    [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.6667, 0.3333, 0.0]
    """

    schedule = "wsd"

    def __init__(
        self,
        optimizer: Optimizer,
        budget: int | float,
        *,
        decay_fraction: float = _DEFAULT_DECAY_FRACTION,
        decay_shape: str = _DEFAULT_DECAY_SHAPE,
        warmup: int | float = 0,
        unit: str = "steps",
        steps_per_epoch: int | None = None,
        clock: Callable[[], float] | None = None,
        last_epoch: int = -1,
    ) -> None:
        super().__init__(
            optimizer,
            budget,
            warmup=warmup,
            unit=unit,
            steps_per_epoch=steps_per_epoch,
            clock=clock,
            last_epoch=last_epoch,
            decay_fraction=decay_fraction,
            decay_shape=decay_shape,
        )


class ConstantSchedule(BudgetSchedule):
    """Keep the learning rate at the base rate after the warm-up.

    Rule: ``m(p) = 1``. The budget still sets ``done`` and the warm-up. The arguments
    and their units are those of ``BudgetSchedule``.

    >>> import torch
    >>> optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> scheduler = ConstantSchedule(optimizer, budget=3, warmup=2)
    >>> rates = []
    >>> for _ in range(4):
    ...     rates.append(scheduler.get_last_lr()[0])
    ...     optimizer.step()
    ...     scheduler.step()
    >>> rates, scheduler.done
    ([0.0, 0.5, 1.0, 1.0], True)
    """

    schedule = "constant"


_SCHEDULE_CLASSES: dict[str, type[BudgetSchedule]] = {
    "linear": LinearSchedule,
    "cosine": CosineSchedule,
    "step": StepSchedule,
    "exponential": ExponentialSchedule,
    "polynomial": PolynomialSchedule,
    "wsd": WSDSchedule,
    "constant": ConstantSchedule,
}


def make_schedule(
    optimizer: Optimizer,
    budget: int | float,
    schedule: str = "linear",
    *,
    warmup: int | float = 0,
    unit: str = "steps",
    steps_per_epoch: int | None = None,
    clock: Callable[[], float] | None = None,
    **options: Any,
) -> BudgetSchedule:
    """Create the scheduler class for a schedule name, such as one sampled by a trial.

    The arguments are those of ``BudgetSchedule`` and ``lr_multiplier``.

    Raises:
        ValueError: for an unknown schedule or option, or an argument out of range.

    >>> import torch
    >>> optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> type(make_schedule(optimizer, 100, "wsd", decay_shape="sqrt")).__name__
    'WSDSchedule'
    """
    schedule = _check_schedule(schedule)
    _check_option_names(schedule, options)
    schedule_class = _SCHEDULE_CLASSES[schedule]
    return schedule_class(
        optimizer,
        budget,
        warmup=warmup,
        unit=unit,
        steps_per_epoch=steps_per_epoch,
        clock=clock,
        **options,
    )


def schedule_from_description(
    optimizer: Optimizer,
    budget: int | float,
    description: Mapping[str, Any] | None,
    *,
    steps_per_epoch: int | None = None,
    **overrides: Any,
) -> BudgetSchedule:
    """Create the scheduler for a stored schedule description, fitted to ``budget``.

    ``description`` has the keys of the ``budgetsearch:schedule`` trial attribute and
    of ``budgetsearch compare``'s retrain calls: ``name``, ``options``, ``warmup`` and
    ``unit``. Missing keys mean linear decay to zero, no warm-up, in steps. Keyword
    ``overrides`` replace entries of ``options``.

    Raises:
        ValueError: for a key other than those four, or for the errors of ``make_schedule``.

    >>> import torch
    >>> optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> scheduler = schedule_from_description(optimizer, 10, {"name": "step", "options": {"gamma": 0.5}})
    >>> type(scheduler).__name__
    'StepSchedule'
    """
    description = description or {}
    unknown = sorted(set(description) - {"name", "options", "warmup", "unit"})
    if unknown:
        raise ValueError(
            f"schedule description {dict(description)!r} has unknown keys {unknown}: use name, options, warmup and unit."
        )
    options = {**(description.get("options") or {}), **overrides}
    return make_schedule(
        optimizer,
        budget,
        description.get("name", "linear"),
        warmup=description.get("warmup", 0),
        unit=description.get("unit", "steps"),
        steps_per_epoch=steps_per_epoch,
        **options,
    )
