"""Tune SGD for an MLP on MNIST-1D under a budget of optimizer steps.

The MLP counterpart of ``mnist1d_cnn.py``: the same data, splits, ladder and
training loop, with a multilayer perceptron in place of the CNN.

Data: MNIST-1D, generated locally by the ``mnist1d`` package with its default
arguments (seed 42): 4,000 training and 1,000 test sequences of length 40 in 10
classes, cached as an ``.npz`` file in ``$BUDGETSEARCH_DATA_DIR`` (default
``~/.cache/budgetsearch``). A fixed, seeded slice of 800 training sequences is the
validation set, and the model trains on the other 3,200. The study maximizes
validation accuracy at the end of each trial's budget. The test set is read only by
``measure_test_accuracy``.

Model: ``depth`` hidden layers of ``width`` units with ReLU, on the flattened
sequence of 40 values, then a linear classifier.

Search space:

    width           log-uniform integer in [32, 512]
    depth           integer in [1, 3]
    lr              log-uniform in [1e-3, 1]
    momentum        uniform in [0, 0.99]
    weight_decay    log-uniform in [1e-6, 1e-1]
    batch_size      one of 16, 32, 64, 128

Run the study with

    budgetsearch run studies/mnist1d_mlp.py --workers 2

To train the configuration in ``DEFAULT_PARAMS``, or a finished study's best one,
for the maximum budget with linear decay to 0 and print its validation and test
accuracy, run

    python studies/mnist1d_mlp.py [--storage URL --study-name NAME] [--seeds N]
"""

import optuna
import torch
from _tensor_training import fit, main, retrain
from mnist1d_cnn import BATCH_SIZES, DEFAULTS, EVAL_EVERY, load_data
from torch import nn

import budgetsearch

DEFAULT_PARAMS = {"width": 256, "depth": 2, "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 64}

def build_model(params: dict) -> nn.Module:
    """Build the MLP, which maps inputs of shape (N, 1, 40) to logits of shape (N, 10)."""
    layers = [nn.Flatten()]
    width_in = 40
    for _ in range(params["depth"]):
        layers += [nn.Linear(width_in, params["width"]), nn.ReLU()]
        width_in = params["width"]
    layers.append(nn.Linear(width_in, 10))
    return nn.Sequential(*layers)


def suggest_params(trial: optuna.Trial) -> dict:
    return {
        "width": trial.suggest_int("width", 32, 512, log=True),
        "depth": trial.suggest_int("depth", 1, 3),
        "lr": trial.suggest_float("lr", 1e-3, 1.0, log=True),
        "momentum": trial.suggest_float("momentum", 0.0, 0.99),
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-1, log=True),
        "batch_size": trial.suggest_categorical("batch_size", BATCH_SIZES),
    }


def train(
    params: dict,
    budget: int,
    *,
    scheduler_factory,
    device: torch.device,
    seed: int,
    report=None,
    eval_every: int = EVAL_EVERY,
    resume=None,
) -> float:
    """Train a fresh model for ``budget`` SGD steps and return its validation accuracy.

    The arguments are those of ``_tensor_training.fit``; ``params`` also contains
    width and depth, and a diverged run reports and returns NaN.
    """
    _, val_accuracy = fit(
        lambda: build_model(params), load_data(), params, budget, scheduler_factory=scheduler_factory, device=device,
        seed=seed, report=report, eval_every=eval_every, resume=resume,
    )
    return val_accuracy


def measure_test_accuracy(params: dict, budget: int, *, device: torch.device = torch.device("cpu"), seed: int = 0) -> float:
    """Train a fresh model with linear decay to 0 over ``budget`` steps and return its test accuracy.

    The model trains on the same 3,200 sequences as the study's trials, so its
    score is comparable with their validation accuracy.
    """
    return retrain(lambda: build_model(params), load_data(), params, budget, device=device, seed=seed)[1]


def test_value(params: dict, budget: int, *, schedule: dict, seed: int, device: torch.device) -> float:
    """Train a fresh model for ``budget`` steps on ``schedule`` and return its test accuracy, or NaN if it diverged.

    ``budgetsearch compare`` calls this to retrain each method's incumbent.
    """
    return retrain(lambda: build_model(params), load_data(), params, budget, device=device, seed=seed, schedule=schedule)[1]


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
    main(__doc__.splitlines()[0], DEFAULT_PARAMS, build_model, load_data, DEFAULTS.max_budget)
