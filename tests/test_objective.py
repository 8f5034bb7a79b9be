"""What objectives call: trial_budget, schedule_for and trial_device, with a real optimizer."""

import optuna
import pytest
import torch

import budgetsearch
from budgetsearch import BudgetPruner, BudgetSampler
from budgetsearch.schedules import CosineSchedule, LinearSchedule, lr_multiplier

optuna.logging.set_verbosity(optuna.logging.ERROR)


def test_rung_result_after_exactly_budget_steps():
    optimizer_steps = {}
    rates = {}

    def objective(trial):
        budget = budgetsearch.trial_budget(trial)
        weight = torch.nn.Parameter(torch.tensor([1.0]))
        optimizer = torch.optim.SGD([weight], lr=trial.suggest_float("lr", 0.01, 0.1, log=True))
        scheduler = budgetsearch.schedule_for(trial, optimizer)
        assert isinstance(scheduler, LinearSchedule)
        steps = 0
        for step in range(budget):
            assert not scheduler.done
            rates.setdefault(trial.number, []).append(optimizer.param_groups[0]["lr"])
            optimizer.zero_grad()
            (weight**2).sum().backward()
            optimizer.step()
            scheduler.step()
            steps += 1
        assert scheduler.done
        assert optimizer.param_groups[0]["lr"] == 0.0
        optimizer_steps[trial.number] = steps
        return float(weight.detach().abs())

    sampler = BudgetSampler(4, 36, 3, total_budget=200, seed=0)
    study = optuna.create_study(sampler=sampler, pruner=BudgetPruner())
    study.optimize(objective)

    by_number = {t.number: t for t in study.trials}
    promoted = [t for t in study.trials if t.user_attrs.get("budgetsearch:rung", 0) > 0]
    assert promoted
    for trial in by_number.values():
        if "budgetsearch:budget" not in trial.user_attrs:
            continue
        budget = trial.user_attrs["budgetsearch:budget"]
        assert optimizer_steps[trial.number] == budget
        base = trial.params["lr"]
        assert rates[trial.number][0] == base
        assert rates[trial.number][-1] == pytest.approx(base / budget)
    for child in promoted:
        parent = by_number[child.user_attrs["budgetsearch:parent"]]
        assert optimizer_steps[parent.number] == parent.user_attrs["budgetsearch:budget"]


def test_schedule_for_uses_study_settings():
    captured = {}

    def objective(trial):
        budget = budgetsearch.trial_budget(trial)
        weight = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.SGD([weight], lr=1.0)
        scheduler = budgetsearch.schedule_for(trial, optimizer)
        captured[trial.number] = (budget, scheduler)
        return 0.0

    sampler = BudgetSampler(10, 90, 3, n_trials=4, seed=0, schedule="cosine", warmup=2)
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=4)
    for budget, scheduler in captured.values():
        assert isinstance(scheduler, CosineSchedule)
        assert scheduler.budget == budget
        assert scheduler.warmup == 2
        assert scheduler.get_last_lr()[0] == lr_multiplier(0, budget, "cosine", warmup=2)


def test_schedule_for_epochs_unit():
    captured = []

    def objective(trial):
        budget = budgetsearch.trial_budget(trial)
        weight = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.SGD([weight], lr=0.5)
        scheduler = budgetsearch.schedule_for(trial, optimizer, steps_per_epoch=7)
        steps = 0
        while not scheduler.done:
            optimizer.step()
            scheduler.step()
            steps += 1
        captured.append((budget, steps))
        return 0.0

    sampler = BudgetSampler(1, 9, 3, n_trials=3, seed=0, budget_unit="epochs")
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=3)
    assert captured
    for budget, steps in captured:
        assert steps == budget * 7


def test_trial_device_follows_environment(monkeypatch):
    monkeypatch.setenv("BUDGETSEARCH_DEVICE", "cpu")
    assert budgetsearch.trial_device() == torch.device("cpu")
    monkeypatch.delenv("BUDGETSEARCH_DEVICE")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert budgetsearch.trial_device().type == expected
