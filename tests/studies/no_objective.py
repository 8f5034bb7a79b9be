import budgetsearch

DEFAULTS = budgetsearch.StudyDefaults(direction="minimize", min_budget=1, max_budget=9)
