"""The digits and MNIST-1D MLP study files, run through the pair with small budgets."""

import math
import os

import optuna
import pytest
import torch

import budgetsearch
from budgetsearch._studyfile import load_study_file
from budgetsearch.schedules import WSDSchedule

STUDIES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "studies")
ATTR = "budgetsearch:"

optuna.logging.set_verbosity(optuna.logging.ERROR)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    os.environ["BUDGETSEARCH_DATA_DIR"] = str(tmp_path_factory.mktemp("data"))


def study(name):
    return load_study_file(os.path.join(STUDIES, name + ".py"))


def test_digits_splits_are_disjoint_and_stratified(data_dir):
    data = study("digits_mlp").module.load_data()
    assert tuple(data.x_train.shape) == (1149, 64)
    assert tuple(data.x_val.shape) == (288, 64)
    assert tuple(data.x_test.shape) == (360, 64)
    assert float(data.x_train.max()) <= 1.0
    # Every class has 28 or 29 of the 288 validation images (its share is 28.8).
    counts = torch.bincount(data.y_val, minlength=10).tolist()
    assert min(counts) >= 27
    assert max(counts) <= 30
    rows = {tuple(row.tolist()) for row in torch.cat([data.x_train, data.x_val, data.x_test])}
    assert len(rows) >= 1790  # load_digits has a few duplicate images, nothing more.


@pytest.mark.parametrize("name,params", [("digits_mlp", 5), ("mnist1d_mlp", 6)])
def test_objective_through_pair(name, params, data_dir):
    objective = study(name).objective
    sampler = budgetsearch.BudgetSampler(20, 60, 3, total_budget=200, seed=0, base_sampler="random")
    optuna_study = optuna.create_study(direction="maximize", sampler=sampler, pruner=budgetsearch.BudgetPruner())
    optuna_study.optimize(objective)
    trials = [t for t in optuna_study.trials if ATTR + "config" in t.user_attrs]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) >= 5
    for trial in complete:
        assert 0.0 <= trial.value <= 1.0
        # The last report is at the end of the trial's own budget.
        assert max(trial.intermediate_values) == trial.user_attrs[ATTR + "budget"]
        assert len(trial.params) == params
    for trial in trials:
        if trial.state == optuna.trial.TrialState.PRUNED:
            assert math.isnan(trial.intermediate_values[max(trial.intermediate_values)])


def test_digits_resumed_chain_equals_uninterrupted_run(data_dir, tmp_path):
    # Dropout makes the training random beyond the batch order: a resumed trial must
    # continue the parent's random state too, so its result equals an uninterrupted run's.
    module = study("digits_mlp").module
    sampler = budgetsearch.BudgetSampler(
        100, 900, 3, mode="resume", total_budget=2700, seed=0, base_sampler="random",
        artifact_dir=str(tmp_path / "artifacts"),
    )
    optuna_study = optuna.create_study(direction="maximize", sampler=sampler, pruner=budgetsearch.BudgetPruner())
    optuna_study.optimize(module.objective)
    top = [
        t for t in optuna_study.trials
        if t.user_attrs.get(ATTR + "rung") == 2 and t.state == optuna.trial.TrialState.COMPLETE
    ]
    assert top
    for trial in top:
        assert trial.user_attrs[ATTR + "resumed_from_step"] > 0
        assert trial.params["dropout"] > 0
        reports = []
        value = module.train(
            trial.params,
            900,
            scheduler_factory=lambda optimizer: WSDSchedule(optimizer, 900, decay_fraction=0.2),
            device=torch.device("cpu"),
            seed=trial.user_attrs[ATTR + "config"],
            report=lambda accuracy, step, into=reports: into.append((step, accuracy)),
        )
        assert value == trial.value
        resumed_from = trial.user_attrs[ATTR + "resumed_from_step"]
        assert [r for r in reports if r[0] > resumed_from] == sorted(trial.intermediate_values.items())


@pytest.mark.parametrize(
    "args,status,message",
    [
        (["--seeds", "0"], 2, "argument --seeds: '0' is not positive: give a positive integer"),
        (["--storage", "sqlite:///x.db"], 2, "--storage needs --study-name"),
        (["--study-name", "missing"], 1, "storage sqlite:///budgetsearch.db not found"),
        (["--study-name", "x", "--storage", "postgresql://u:secret@h:bad/db"], 1, "storage 'postgresql://u:***@h:bad/db' not found"),
    ],
)
def test_study_script_rejects_bad_arguments(args, status, message, tmp_path):
    import subprocess
    import sys

    environment = {key: value for key, value in os.environ.items() if key != "BUDGETSEARCH_STORAGE"}
    result = subprocess.run(
        [sys.executable, os.path.join(STUDIES, "digits_mlp.py"), *args],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == status
    assert message in result.stderr
    assert os.listdir(tmp_path) == []
