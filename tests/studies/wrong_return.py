"""A study whose objective returns text: every trial fails the same way before it trains."""

import budgetsearch

DEFAULTS = budgetsearch.StudyDefaults(direction="minimize", min_budget=1, max_budget=9, reduction_factor=3, total_budget=60)


def objective(trial):
    budgetsearch.trial_budget(trial)
    return f"loss {trial.suggest_float('x', 0.0, 1.0)}"
