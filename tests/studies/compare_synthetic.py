"""A fast synthetic study for ``budgetsearch compare``: no training, a value per step.

The loss falls with the step and is lowest near x = 0.3; ``test_value`` gives the
loss at the end of the budget plus a small seed-dependent offset.
"""

import math

import optuna

import budgetsearch

DEFAULTS = budgetsearch.StudyDefaults(
    direction="minimize",
    metric="loss",
    min_budget=3,
    max_budget=27,
    reduction_factor=3,
    total_budget=270,
)


def loss(x, step):
    return (x - 0.3) ** 2 + 1.0 / math.sqrt(step)


def objective(trial):
    budget = budgetsearch.trial_budget(trial)
    x = trial.suggest_float("x", -1.0, 1.0)
    trial.suggest_categorical("batch_size", [8, 16])
    value = math.nan
    for step in range(1, budget + 1):
        value = loss(x, step)
        trial.report(value, step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return value


def test_value(params, budget, *, schedule, seed, device):
    assert schedule["name"] in ("linear", "wsd")
    return loss(params["x"], budget) + 0.001 * (seed % 10)
