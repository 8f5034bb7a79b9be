"""A fast synthetic study: its value depends on the budget and two parameters.

Tests run it through the command line and the worker loop. Larger budgets give
better values, and the best configuration is near x = 0.3, y = "b".
"""

import math
import os
import time

import budgetsearch

DEFAULTS = budgetsearch.StudyDefaults(
    direction="minimize",
    metric="loss",
    min_budget=1,
    max_budget=27,
    reduction_factor=3,
    total_budget=400,
)

# Seconds each budget unit sleeps, to make workers overlap in race tests.
SECONDS_PER_UNIT = float(os.environ.get("SYNTHETIC_SECONDS_PER_UNIT", "0"))


def objective(trial):
    budget = budgetsearch.trial_budget(trial)
    x = trial.suggest_float("x", -1.0, 1.0)
    y = trial.suggest_categorical("y", ["a", "b", "c"])
    offset = {"a": 0.2, "b": 0.0, "c": 0.4}[y]
    if SECONDS_PER_UNIT:
        time.sleep(SECONDS_PER_UNIT * budget)
    loss = (x - 0.3) ** 2 + offset + 1.0 / math.sqrt(budget)
    trial.report(loss, budget)
    return loss
