"""Tune an MLP on scikit-learn's handwritten digits under a budget of SGD steps.

Data: the 1,797 8x8 digit images that scikit-learn ships (``load_digits``, no
download), as 64 pixel intensities scaled to [0, 1]. A fixed, seeded, stratified
split keeps 360 images as the test set and 288 as the validation set; the model
trains on the other 1,149. The study maximizes validation accuracy at the end of
each trial's budget. The test set is read only by ``measure_test_accuracy``.

Model: ``depth`` hidden layers of ``width`` units, each a linear layer, ReLU and
dropout, then a linear classifier.

Search space:

    width           log-uniform integer in [32, 512]
    depth           integer in [1, 4]
    dropout         uniform in [0, 0.5]
    lr              log-uniform in [1e-3, 1]
    weight_decay    log-uniform in [1e-6, 1e-2]

SGD uses momentum 0.9 and batches of 64. The learning rate is the base rate of the
schedule that ``budgetsearch`` fits to the trial's budget (by default a linear
decay to 0 at the end of the budget).

Run the study with

    budgetsearch run studies/digits_mlp.py --workers 2

To train the configuration in ``DEFAULT_PARAMS``, or a finished study's best one,
for the maximum budget with linear decay to 0 and print its validation and test
accuracy, run

    python studies/digits_mlp.py [--storage URL --study-name NAME] [--seeds N]
"""

import functools

import numpy as np
import optuna
import torch
from _tensor_training import DataSplits, fit, main, retrain
from torch import nn

import budgetsearch

DEFAULTS = budgetsearch.StudyDefaults(
    direction="maximize",
    metric="val_accuracy",
    budget_unit="steps",
    min_budget=100,
    max_budget=2700,
    reduction_factor=3,
    total_budget=60000,
)

TEST_SIZE = 360
VALIDATION_SIZE = 288
SPLIT_SEED = 0
EVAL_EVERY = 100
BATCH_SIZE = 64
MOMENTUM = 0.9

DEFAULT_PARAMS = {"width": 256, "depth": 2, "dropout": 0.1, "lr": 0.05, "weight_decay": 1e-4}


def _stratified_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Return an order of the indices in which every prefix has about the classes' shares."""
    ranks = np.empty(len(labels))
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        # Spread each class evenly over [0, 1), so sorting by rank interleaves the classes.
        ranks[members] = (np.arange(len(members)) + rng.random()) / len(members)
    return np.argsort(ranks, kind="stable")


@functools.cache
def load_data() -> DataSplits:
    """Load the digits as float32 inputs of shape (N, 64) and split them.

    The returned tensors are shared by every caller in the process and must not be
    modified in place.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.tensor(_stratified_order(digits.target, np.random.default_rng(SPLIT_SEED)))
    test_index = order[:TEST_SIZE]
    val_index = order[TEST_SIZE : TEST_SIZE + VALIDATION_SIZE]
    train_index = order[TEST_SIZE + VALIDATION_SIZE :]
    return DataSplits(x[train_index], y[train_index], x[val_index], y[val_index], x[test_index], y[test_index])


def build_model(params: dict) -> nn.Module:
    """Build the MLP, which maps inputs of shape (N, 64) to logits of shape (N, 10)."""
    layers = []
    width_in = 64
    for _ in range(params["depth"]):
        layers += [nn.Linear(width_in, params["width"]), nn.ReLU(), nn.Dropout(params["dropout"])]
        width_in = params["width"]
    layers.append(nn.Linear(width_in, 10))
    return nn.Sequential(*layers)


def suggest_params(trial: optuna.Trial) -> dict:
    return {
        "width": trial.suggest_int("width", 32, 512, log=True),
        "depth": trial.suggest_int("depth", 1, 4),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "lr": trial.suggest_float("lr", 1e-3, 1.0, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
    }


def _sgd_params(params: dict) -> dict:
    return {"lr": params["lr"], "momentum": MOMENTUM, "weight_decay": params["weight_decay"], "batch_size": BATCH_SIZE}


def train(params: dict, budget: int, *, scheduler_factory, device, seed: int, report=None, resume=None) -> float:
    """Train a fresh model for ``budget`` SGD steps and return its validation accuracy."""
    _, val_accuracy = fit(
        lambda: build_model(params), load_data(), _sgd_params(params), budget,
        scheduler_factory=scheduler_factory, device=device, seed=seed, report=report,
        eval_every=EVAL_EVERY, resume=resume,
    )
    return val_accuracy


def measure_test_accuracy(params: dict, budget: int, *, device: torch.device = torch.device("cpu"), seed: int = 0) -> float:
    """Train a fresh model with linear decay to 0 over ``budget`` steps and return its test accuracy."""
    return retrain(lambda: build_model(params), load_data(), _sgd_params(params), budget, device=device, seed=seed)[1]


def test_value(params: dict, budget: int, *, schedule: dict, seed: int, device: torch.device) -> float:
    """Train a fresh model for ``budget`` steps on ``schedule`` and return its test accuracy, or NaN if it diverged.

    ``budgetsearch compare`` calls this to retrain each method's incumbent.
    """
    return retrain(lambda: build_model(params), load_data(), _sgd_params(params), budget, device=device, seed=seed, schedule=schedule)[1]


def objective(trial: optuna.Trial) -> float:
    device = budgetsearch.trial_device()
    budget = budgetsearch.trial_budget(trial)
    params = suggest_params(trial)
    resume = budgetsearch.resume_for(trial)

    def report(val_accuracy: float, step: int) -> None:
        trial.report(val_accuracy, step)
        if trial.should_prune():
            raise optuna.TrialPruned()

    return train(
        params,
        budget,
        scheduler_factory=lambda optimizer: budgetsearch.schedule_for(trial, optimizer),
        device=device,
        seed=trial.number,
        report=report,
        resume=resume,
    )


if __name__ == "__main__":
    main(__doc__.splitlines()[0], DEFAULT_PARAMS, build_model, load_data, DEFAULTS.max_budget, sgd_params=_sgd_params)
