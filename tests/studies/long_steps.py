"""A study whose trials run long CPU-bound PyTorch steps, for heartbeat tests."""

import os
import time

import torch

import budgetsearch

DEFAULTS = budgetsearch.StudyDefaults(
    direction="minimize", min_budget=1, max_budget=3, reduction_factor=3, n_trials=4,
    sampler="random", heartbeat_interval=0.2, grace_period=1.5,
)

# Seconds of computation per budget unit.
SECONDS_PER_UNIT = float(os.environ.get("LONG_STEPS_SECONDS_PER_UNIT", "1.0"))


def objective(trial):
    budget = budgetsearch.trial_budget(trial)
    x = trial.suggest_float("x", -1.0, 1.0)
    matrix = torch.randn(400, 400)
    deadline = time.monotonic() + SECONDS_PER_UNIT * budget
    while time.monotonic() < deadline:
        matrix = torch.tanh(matrix @ matrix)
    return x * x + 1.0 / budget
