"""The MNIST-1D study file, run through the pair with small budgets."""

import math
import os

import optuna
import pytest

import budgetsearch
from budgetsearch._studyfile import load_study_file

STUDY_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "studies", "mnist1d_cnn.py")


@pytest.fixture(scope="module")
def study_file(tmp_path_factory):
    os.environ["BUDGETSEARCH_DATA_DIR"] = str(tmp_path_factory.mktemp("data"))
    return load_study_file(STUDY_PATH)


def test_defaults_match_the_main_job(study_file):
    defaults = study_file.defaults
    assert defaults.direction == "maximize"
    assert defaults.budget_unit == "steps"
    assert (defaults.min_budget, defaults.max_budget, defaults.reduction_factor) == (250, 6000, 3)
    assert defaults.total_budget == 60000


def test_data_split_and_cache(study_file):
    data = study_file.module.load_data()
    assert tuple(data.x_train.shape) == (3200, 1, 40)
    assert tuple(data.x_val.shape) == (800, 1, 40)
    assert tuple(data.x_test.shape) == (1000, 1, 40)
    assert set(data.y_train.tolist()) == set(range(10))
    cached = [name for name in os.listdir(os.environ["BUDGETSEARCH_DATA_DIR"]) if name.endswith(".npz")]
    assert len(cached) == 1


def test_objective_through_pair(study_file):
    sampler = budgetsearch.BudgetSampler(20, 60, 3, total_budget=200, seed=0, base_sampler="random")
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=budgetsearch.BudgetPruner())
    study.optimize(study_file.objective)
    trials = [t for t in study.trials if "budgetsearch:config" in t.user_attrs]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete
    for trial in complete:
        assert 0.0 <= trial.value <= 1.0
        budget = trial.user_attrs["budgetsearch:budget"]
        # The last report is at the end of the trial's own budget.
        assert max(trial.intermediate_values) == budget
        assert set(trial.params) == {"lr", "momentum", "weight_decay", "batch_size"}
    for trial in trials:
        if trial.state == optuna.trial.TrialState.PRUNED:
            assert math.isnan(trial.intermediate_values[max(trial.intermediate_values)])


def test_diverged_run_reports_nan(study_file):
    module = study_file.module
    reports = []
    params = {"lr": 1e12, "momentum": 0.99, "weight_decay": 1e-6, "batch_size": 16}
    value = module.train(
        params,
        600,
        scheduler_factory=constant_rate,
        device=budgetsearch.trial_device(),
        seed=0,
        report=lambda accuracy, step: reports.append((step, accuracy)),
    )
    assert math.isnan(value)
    assert math.isnan(reports[-1][1])
    assert reports[-1][0] < 600


def constant_rate(optimizer):
    from budgetsearch.schedules import ConstantSchedule

    return ConstantSchedule(optimizer, 600)
