"""BudgetPruner: the pruner half of the pair."""

from __future__ import annotations

import logging
import math

import optuna
from optuna.pruners import BasePruner

from budgetsearch import _attrs

logger = logging.getLogger(__name__)


class BudgetPruner(BasePruner):
    """An Optuna pruner that stops a trial whose latest reported value is NaN or infinite.

    In restart mode every trial trains to the end of its own budget, because its rung
    result is the value it returns there; good configurations go on as new trials with
    larger budgets, chosen by :class:`budgetsearch.BudgetSampler`. So this pruner stops
    only diverged trials. A pruned trial has no rung result: it counts in its rung's
    population and ranks below every result.

    The pruner uses the trial's own reports only and never looks at ``study.pruner``
    or ``study.sampler``, so it may be wrapped, for example in
    ``optuna.pruners.PatientPruner``; a trial that the outer pruner stops is ranked
    like any other pruned trial.

    Reporting the same step twice follows Optuna's rule: ``trial.report`` keeps the
    first value, ignores the later one and warns.

    Example:
        >>> import optuna, budgetsearch
        >>> study = optuna.create_study(pruner=budgetsearch.BudgetPruner())
        >>> trial = study.ask()
        >>> trial.report(0.5, step=100)
        >>> trial.should_prune()
        False
        >>> trial.report(float("nan"), step=200)
        >>> trial.should_prune()
        True
    """

    def prune(self, study: "optuna.study.Study", trial: "optuna.trial.FrozenTrial") -> bool:
        step = trial.last_step
        if step is None:
            return False
        resumed_from = trial.user_attrs.get(_attrs.RESUMED_FROM_STEP)
        if resumed_from is not None and min(trial.intermediate_values) <= resumed_from:
            raise ValueError(
                f"trial {trial.number} resumed parent trial {trial.user_attrs.get(_attrs.PARENT)}'s trunk at "
                f"step {resumed_from} but reported step {min(trial.intermediate_values)}: report steps "
                "counted from the start of training, after the resume step."
            )
        value = trial.intermediate_values[step]
        if math.isfinite(value):
            return False
        logger.info("Pruning trial %d: it reported %r at step %d.", trial.number, value, step)
        return True
