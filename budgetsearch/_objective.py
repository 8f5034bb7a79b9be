"""Functions an objective calls for its trial's budget, schedule and device."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

import optuna

from budgetsearch import _attrs

DEVICE_ENVIRONMENT_VARIABLE = "BUDGETSEARCH_DEVICE"


def _user_attrs(trial: Any) -> Dict[str, Any]:
    return dict(trial.user_attrs)


def _no_job(trial: Any) -> bool:
    cached = getattr(trial, "_cached_frozen_trial", trial)
    system_attrs = getattr(cached, "system_attrs", {})
    return bool(system_attrs.get(_attrs.NO_JOB))


def trial_budget(trial: "optuna.trial.BaseTrial") -> int:
    """Return the trial's budget in the study's budget unit (optimizer steps by default).

    Raises:
        NoJobError: The sampler found no job that fits the study's limits.
        ValueError: The study does not use :class:`budgetsearch.BudgetSampler`.
    """
    attrs = _user_attrs(trial)
    if _attrs.BUDGET in attrs:
        return int(attrs[_attrs.BUDGET])
    if _no_job(trial):
        from budgetsearch._sampler import NoJobError

        raise NoJobError(
            f"trial {trial.number} has no job: none fits the study's remaining total budget or "
            "trial limit, so the study is finished."
        )
    raise ValueError(
        f"trial {getattr(trial, 'number', '?')} has no {_attrs.BUDGET!r} attribute: create the "
        "study with sampler=budgetsearch.BudgetSampler(...)."
    )


def schedule_for(
    trial: "optuna.trial.BaseTrial",
    optimizer: Any,
    *,
    steps_per_epoch: Optional[int] = None,
    **options: Any,
) -> Any:
    """Return a PyTorch LR scheduler for ``optimizer`` fitted to the trial's budget.

    The schedule, its options, warm-up and unit are the study's settings; keyword
    ``options`` override the schedule's options. Call ``scheduler.step()`` after every
    ``optimizer.step()``. With the ``epochs`` unit, pass ``steps_per_epoch`` (optimizer
    steps per epoch, see :func:`budgetsearch.schedules.optimizer_steps_per_epoch`).
    """
    from budgetsearch.schedules import schedule_from_description

    budget = trial_budget(trial)
    attrs = _user_attrs(trial)
    scheduler = schedule_from_description(
        optimizer, budget, attrs.get(_attrs.SCHEDULE), steps_per_epoch=steps_per_epoch, **options
    )

    start_step = attrs.get(_attrs.RESUMED_FROM_STEP, 0)
    if attrs.get(_attrs.START_STEP) and _attrs.RESUMED_FROM_STEP not in attrs and _attrs.RESUME_FALLBACK not in attrs:
        raise RuntimeError(
            f"trial {trial.number} is promoted in resume mode: call budgetsearch.resume_for(trial) "
            "before budgetsearch.schedule_for(trial, optimizer), so that the schedule starts where "
            "training resumes."
        )
    if start_step:
        # The closed form makes this the rate an uninterrupted run has at start_step.
        state = scheduler.state_dict()
        state["last_epoch"] = start_step
        scheduler.load_state_dict(state)
    return scheduler


def trial_device() -> Any:
    """Return the ``torch.device`` this worker owns (set by ``budgetsearch run --devices``)."""
    import torch

    name = os.environ.get(DEVICE_ENVIRONMENT_VARIABLE)
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
