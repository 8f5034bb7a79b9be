"""Keys of the trial attributes that budgetsearch writes, defined once."""

PREFIX = "budgetsearch:"
BUDGET = PREFIX + "budget"
RUNG = PREFIX + "rung"
BRACKET = PREFIX + "bracket"
CONFIG = PREFIX + "config"
ATTEMPT = PREFIX + "attempt"
PARENT = PREFIX + "parent"
RESUMED_FROM_STEP = PREFIX + "resumed_from_step"
SCHEDULE = PREFIX + "schedule"
# Step at which the trial's training starts: its parent's trunk step in resume mode, else 0.
START_STEP = PREFIX + "start_step"
TRUNK_ARTIFACT = PREFIX + "trunk_artifact"
RESUME_FALLBACK = PREFIX + "resume_fallback"
# System attribute of a trial that got no job because none fits the study's limits.
NO_JOB = PREFIX + "no_job"
