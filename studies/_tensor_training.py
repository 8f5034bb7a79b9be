"""Training and evaluation shared by the studies whose data fits in memory as tensors.

Study files import this module from the folder they are in; ``budgetsearch`` puts
a study file's folder on ``sys.path`` before it imports the file.
"""

import argparse
import math
import os
import tempfile
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import numpy as np
import torch
from torch import nn

import budgetsearch
from budgetsearch.cli import _positive_int as positive_int

SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


class DataSplits(NamedTuple):
    """Training, validation and test inputs with their int64 class labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def data_dir() -> Path:
    """Return the folder for generated or cached data: ``$BUDGETSEARCH_DATA_DIR`` or ``~/.cache/budgetsearch``."""
    return Path(os.environ.get("BUDGETSEARCH_DATA_DIR", "~/.cache/budgetsearch")).expanduser()


def write_npz_atomically(path: Path, arrays: dict) -> None:
    """Write ``arrays`` to the ``.npz`` file ``path`` so that readers never see a partial file.

    Workers that start together may all generate the data. Each one writes a private
    temporary file and renames it into place, so a reader sees either no file or a
    complete one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary_name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        # mkstemp creates the file readable by its owner only.
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as file:
            np.savez(file, **arrays)
        os.replace(temporary_name, path)
    except BaseException:
        os.unlink(temporary_name)
        raise


def linear_decay(budget: int) -> SchedulerFactory:
    """Return a scheduler factory that decays the learning rate linearly to 0 in ``budget`` steps."""
    return lambda optimizer: torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=budget, power=1.0)


def evaluate_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> float:
    """Return the accuracy of ``model`` on (x, y), evaluated in eval mode."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(y), batch_size):
            logits = model(x[start : start + batch_size])
            correct += (logits.argmax(dim=1) == y[start : start + batch_size]).sum().item()
    model.train()
    return correct / len(y)


def fit(
    build_model: Callable[[], nn.Module],
    data: DataSplits,
    params: dict,
    budget: int,
    *,
    scheduler_factory: SchedulerFactory,
    device: torch.device,
    seed: int,
    report: Optional[Callable[[float, int], None]],
    eval_every: int,
    resume: Optional[budgetsearch.ResumePoint] = None,
) -> tuple:
    """Train ``build_model()`` with SGD for ``budget`` steps; return the model and its validation accuracy.

    ``params`` contains lr, momentum, weight_decay and batch_size. The scheduler that
    ``scheduler_factory`` builds is stepped after every optimizer step. ``seed`` sets
    the weight initialization and the batch order. ``report(val_accuracy, step)`` is
    called every ``eval_every`` steps and after the last step. A diverged run, with a
    non-finite loss, reports NaN at that step, stops and returns NaN. With ``resume``
    (resume mode), training continues the parent's trunk checkpoint and saves its own
    at its trunk step.
    """
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_val, y_val = data.x_val.to(device), data.y_val.to(device)

    # fork_rng keeps the caller's global torch RNG state unchanged.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model().to(device)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=params["lr"],
        momentum=params["momentum"],
        weight_decay=params["weight_decay"],
    )
    loss_function = nn.CrossEntropyLoss()

    # Batches are drawn without replacement from a new shuffle each epoch, and the
    # last incomplete batch of an epoch is dropped.
    batch_size = params["batch_size"]
    generator = torch.Generator().manual_seed(seed)
    permutation = torch.randperm(len(y_train), generator=generator)
    position = 0
    # Dropout draws from the global torch generator, seeded here from ``seed`` inside
    # fork_rng; a resumed trial restores its state from the checkpoint.
    dropout_state = None

    # In resume mode a promoted trial continues its parent's trunk: weights, momentum
    # buffers and the batch order, from the parent's trunk step.
    start_step = 0
    if resume is not None and resume.state is not None:
        model.load_state_dict(resume.state["model"])
        optimizer.load_state_dict(resume.state["optimizer"])
        generator.set_state(resume.state["generator"])
        permutation = resume.state["permutation"]
        position = int(resume.state["position"])
        start_step = resume.start_step
        dropout_state = resume.state.get("dropout_rng")
    scheduler = scheduler_factory(optimizer)

    model.train()
    val_accuracy = float("nan")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        if dropout_state is not None:
            torch.set_rng_state(dropout_state)
        for step in range(start_step + 1, budget + 1):
            if position + batch_size > len(permutation):
                permutation = torch.randperm(len(y_train), generator=generator)
                position = 0
            index = permutation[position : position + batch_size].to(device)
            position += batch_size

            loss = loss_function(model(x_train[index]), y_train[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()

            # A non-finite loss means the weights have diverged and cannot recover, so
            # the run reports NaN, which budgetsearch's pruner stops, and ends here.
            if not torch.isfinite(loss).item():
                val_accuracy = float("nan")
                if report is not None:
                    report(val_accuracy, step)
                break
            if resume is not None and step == resume.trunk_step:
                resume.save(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "generator": generator.get_state(),
                        "permutation": permutation,
                        "position": position,
                        "dropout_rng": torch.get_rng_state(),
                    }
                )
            if step % eval_every == 0 or step == budget:
                val_accuracy = evaluate_accuracy(model, x_val, y_val)
                if report is not None:
                    report(val_accuracy, step)
    return model, val_accuracy


def schedule_factory(budget: int, schedule: Optional[dict] = None) -> SchedulerFactory:
    """Return a scheduler factory for a budgetsearch schedule description, by default linear decay to 0.

    ``schedule`` has the keys of the ``budgetsearch:schedule`` trial attribute: name,
    options, warmup and unit.
    """
    if schedule is None:
        return linear_decay(budget)
    from budgetsearch.schedules import schedule_from_description

    return lambda optimizer: schedule_from_description(optimizer, budget, schedule)


def retrain(
    build_model: Callable[[], nn.Module],
    data: DataSplits,
    params: dict,
    budget: int,
    *,
    device: torch.device,
    seed: int,
    schedule: Optional[dict] = None,
) -> tuple:
    """Train a fresh model over ``budget`` steps; return its validation and test accuracy.

    The schedule is ``schedule`` (see ``schedule_factory``), by default linear decay to 0.
    A diverged run gives NaN for both.
    """
    model, val_accuracy = fit(
        build_model, data, params, budget, scheduler_factory=schedule_factory(budget, schedule), device=device,
        seed=seed, report=None, eval_every=budget,
    )
    if math.isnan(val_accuracy):
        return val_accuracy, val_accuracy
    return val_accuracy, evaluate_accuracy(model, data.x_test.to(device), data.y_test.to(device))


def best_params(storage: str, study_name: str) -> dict:
    """Return the parameters of a study's best result at its highest rung."""
    import optuna

    from budgetsearch._status import summary
    from budgetsearch.cli import _study_may_exist, mask_url

    if not _study_may_exist(storage):
        raise SystemExit(f"storage {mask_url(storage)} not found: pass the --storage URL of study {study_name!r}.")
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise SystemExit(f"study {study_name!r} not found in {mask_url(storage)}: check --study-name and --storage.") from None
    best = summary(study)["best"]
    if best is None:
        raise SystemExit(f"study {study_name!r} in {mask_url(storage)} has no complete result yet.")
    return best["params"]


def main(
    description: str,
    default_params: dict,
    build_model: Callable[[dict], nn.Module],
    load_data: Callable[[], DataSplits],
    budget: int,
    sgd_params: Callable[[dict], dict] = dict,
) -> None:
    """Train one configuration for ``budget`` steps and print its validation and test accuracy.

    The configuration is ``default_params``, or with ``--storage`` and ``--study-name``
    the best one of that study. ``sgd_params(params)`` gives the lr, momentum,
    weight_decay and batch_size of a configuration.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--storage",
        help="storage URL of the study named by --study-name (default: $BUDGETSEARCH_STORAGE or sqlite:///budgetsearch.db).",
    )
    parser.add_argument("--study-name", help="name of a finished study whose best configuration to train.")
    parser.add_argument("--seeds", type=positive_int, default=1, help="number of training seeds; seeds 0 to N-1 are trained (default 1).")
    args = parser.parse_args()
    if args.storage is not None and args.study_name is None:
        parser.error("--storage needs --study-name: name the study whose best configuration to train.")
    if args.study_name is None:
        params = default_params
    else:
        storage = args.storage or os.environ.get("BUDGETSEARCH_STORAGE") or "sqlite:///budgetsearch.db"
        params = best_params(storage, args.study_name)
    print(f"params: {params}, budget: {budget} steps, linear decay to 0")
    data = load_data()
    for seed in range(args.seeds):
        val_accuracy, test_accuracy = retrain(
            lambda: build_model(params), data, sgd_params(params), budget, device=torch.device("cpu"), seed=seed
        )
        print(f"seed {seed}: validation accuracy {val_accuracy:.4f}, test accuracy {test_accuracy:.4f}")
