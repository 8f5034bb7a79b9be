"""A study whose objective fails in every way an objective can: tests run it to check that only its own trial fails."""

import math
import os
import time

import budgetsearch

DEFAULTS = budgetsearch.StudyDefaults(
    direction="minimize", min_budget=1, max_budget=9, reduction_factor=3, total_budget=60, sampler="random"
)

# Seconds each budget unit sleeps, so that a test can stop a worker mid-trial.
SECONDS_PER_UNIT = float(os.environ.get("FAULTY_SECONDS_PER_UNIT", "0"))


def objective(trial):
    budget = budgetsearch.trial_budget(trial)
    x = trial.suggest_float("x", 0.0, 1.0)
    if SECONDS_PER_UNIT:
        time.sleep(SECONDS_PER_UNIT * budget)
    if x < 0.15:
        raise RuntimeError(f"diverged at x={x}")
    if x < 0.3:
        return float("nan")
    if x < 0.45:
        return "not a number"
    if x < 0.55:
        return -math.inf
    return x
