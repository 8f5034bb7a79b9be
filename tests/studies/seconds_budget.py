"""A study whose budgets are seconds of training: each trial trains until its schedule is done."""

import time

import torch

import budgetsearch

DEFAULTS = budgetsearch.StudyDefaults(
    direction="minimize",
    metric="loss",
    budget_unit="seconds",
    min_budget=1,
    max_budget=3,
    reduction_factor=3,
    total_budget=9,
)

FEATURES = torch.randn(512, 16, generator=torch.Generator().manual_seed(0))
TARGETS = FEATURES @ torch.linspace(-1.0, 1.0, 16)


def objective(trial):
    budget = budgetsearch.trial_budget(trial)
    lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    model = torch.nn.Linear(16, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    started = time.monotonic()
    scheduler = budgetsearch.schedule_for(trial, optimizer)
    steps = 0
    while not scheduler.done:
        loss = ((model(FEATURES).squeeze(1) - TARGETS) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        steps += 1
    trial.set_user_attr("seconds_trained", time.monotonic() - started)
    trial.set_user_attr("last_lr_fraction", optimizer.param_groups[0]["lr"] / lr)
    trial.set_user_attr("steps", steps)
    trial.report(float(loss), budget)
    return float(loss)
