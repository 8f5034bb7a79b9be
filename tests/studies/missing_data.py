"""A study whose data is missing: every trial fails the same way before it trains."""

import budgetsearch

DEFAULTS = budgetsearch.StudyDefaults(direction="minimize", min_budget=1, max_budget=9, reduction_factor=3, total_budget=60)


def objective(trial):
    budgetsearch.trial_budget(trial)
    trial.suggest_float("x", 0.0, 1.0)
    raise FileNotFoundError("data not found in /nonexistent/data: put the files there")
