"""Tune SGD for a ResNet-18 on CIFAR-10 under a budget of epochs.

Data: the CIFAR-10 files in torchvision's on-disk format, the folder
``cifar-10-batches-py`` with ``data_batch_1`` to ``data_batch_5`` and ``test_batch``
(Python pickles of uint8 images). The study never downloads them. It looks in
``$BUDGETSEARCH_CIFAR10_DIR``, else in ``$BUDGETSEARCH_DATA_DIR`` (default
``~/.cache/budgetsearch``); either folder may be the one that contains
``cifar-10-batches-py`` or that folder itself. A fixed, seeded tenth of the
training images (5,000 of 50,000) is the validation set. The study maximizes
validation accuracy after the trial's last epoch; the test set is read only by
``measure_test_accuracy``.

Model: ResNet-18 adapted to 32x32 inputs, as is usual for CIFAR: a 3x3 stride-1
first convolution and no max pooling. Training uses random crops (padding 4) and
horizontal flips, done on the device batch by batch, SGD with Nesterov momentum
0.9, and the trial's schedule stepped after every iteration. On CUDA it runs in
bfloat16 autocast (float16 with loss scaling where bfloat16 is missing) with
channels-last memory.

Search space:

    lr              log-uniform in [0.01, 1]
    weight_decay    log-uniform in [1e-5, 1e-2]
    batch_size      one of 128, 256, 512
    label_smoothing uniform in [0, 0.2]

Run the study with one worker per GPU:

    BUDGETSEARCH_CIFAR10_DIR=/data/cifar10 budgetsearch run studies/cifar10_resnet.py --devices auto

To train one configuration for the maximum budget and print its validation and test
accuracy, run

    python studies/cifar10_resnet.py --data-dir /data/cifar10 [--storage URL --study-name NAME]
"""

import argparse
import functools
import math
import os
import pickle
import time
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import optuna
import torch
import torch.nn.functional as F
from torch import nn

import budgetsearch
from budgetsearch.schedules import optimizer_steps_per_epoch

DEFAULTS = budgetsearch.StudyDefaults(
    direction="maximize",
    metric="val_accuracy",
    budget_unit="epochs",
    min_budget=1,
    max_budget=27,
    reduction_factor=3,
    total_budget=270,
)

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{index}" for index in range(1, 6)]
TEST_FILE = "test_batch"
DOWNLOAD_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
VALIDATION_FRACTION = 0.1
SPLIT_SEED = 0
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
BATCH_SIZES = (128, 256, 512)
DEFAULT_PARAMS = {"lr": 0.2, "weight_decay": 5e-4, "batch_size": 256, "label_smoothing": 0.1}


class CifarSplits(NamedTuple):
    """uint8 images of shape (N, 3, 32, 32) and int64 labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


class MissingDataError(FileNotFoundError):
    """The CIFAR-10 files are not where the study looks for them."""


def data_folder(root: Optional[str] = None) -> Path:
    """Return the ``cifar-10-batches-py`` folder, or raise MissingDataError saying where to put it."""
    given = root or os.environ.get("BUDGETSEARCH_CIFAR10_DIR") or os.environ.get("BUDGETSEARCH_DATA_DIR", "~/.cache/budgetsearch")
    base = Path(given).expanduser()
    for folder in (base, base / FOLDER):
        if all((folder / name).is_file() for name in (*TRAIN_FILES, TEST_FILE)):
            return folder
    raise MissingDataError(
        f"CIFAR-10 not found in {base}: the study needs {base / FOLDER}/ with data_batch_1 to data_batch_5 and "
        f"test_batch (torchvision's format). It never downloads them: on a machine with internet access, get "
        f"cifar-10-python.tar.gz from {DOWNLOAD_PAGE} and extract it into {base}, or run "
        f"`python -c \"import torchvision; torchvision.datasets.CIFAR10('{base}', download=True)\"`. "
        "Then set BUDGETSEARCH_CIFAR10_DIR to that folder (`python studies/cifar10_resnet.py` also takes --data-dir)."
    )


def _read_batch(path: Path) -> tuple:
    with open(path, "rb") as file:
        batch = pickle.load(file, encoding="bytes")
    try:
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a CIFAR-10 batch: it lacks {error} (expected keys b'data' and b'labels').") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise ValueError(
            f"{path} is not a CIFAR-10 batch: data has shape {data.shape} and {len(labels)} labels "
            "(expected (N, 3072) and N labels)."
        )
    return data.reshape(-1, 3, 32, 32), labels


@functools.lru_cache(maxsize=4)
def load_data(root: Optional[str] = None) -> CifarSplits:
    """Read CIFAR-10 and split off the validation set; the tensors must not be modified in place."""
    folder = data_folder(root)
    parts = [_read_batch(folder / name) for name in TRAIN_FILES]
    x = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    x_test, y_test = (torch.from_numpy(array) for array in _read_batch(folder / TEST_FILE))
    order = torch.from_numpy(np.random.default_rng(SPLIT_SEED).permutation(len(y)))
    validation = max(1, int(round(VALIDATION_FRACTION * len(y))))
    val_index, train_index = order[:validation], order[validation:]
    return CifarSplits(x[train_index], y[train_index], x[val_index], y[val_index], x_test, y_test)


def write_synthetic(root: Path, per_batch: int, test_images: int, seed: int = 0) -> Path:
    """Write a synthetic CIFAR-10 in the real on-disk format under ``root``; return its folder.

    Each of data_batch_1 to data_batch_5 gets ``per_batch`` images and test_batch
    ``test_images``, with the keys and layout of the real pickles. Each class has its own
    mean brightness plus noise, so a model can learn something in one epoch. Tests and
    ``benchmarks/gpu_check.sh`` use it where the real files cannot be downloaded.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for name in (*TRAIN_FILES, TEST_FILE):
        count = test_images if name == TEST_FILE else per_batch
        labels = [int(label) for label in rng.integers(0, 10, count)]
        base = np.array(labels, dtype=np.float32)[:, None] * 20 + 30
        data = np.clip(base + rng.normal(0, 25, (count, 3 * 32 * 32)), 0, 255).astype(np.uint8)
        with open(folder / name, "wb") as file:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": []}, file)
    with open(folder / "batches.meta", "wb") as file:
        pickle.dump({b"label_names": [f"class{index}".encode() for index in range(10)]}, file)
    return folder


def build_model() -> nn.Module:
    """Build ResNet-18 for 32x32 inputs: a 3x3 stride-1 stem and no max pooling."""
    import torchvision

    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Return random 32x32 crops of the images padded by 4 with zeros, each flipped with probability 1/2."""
    count = len(images)
    offsets = torch.randint(0, 9, (2, count), generator=generator).to(images.device)
    flips = (torch.rand(count, generator=generator) < 0.5).to(images.device)
    padded = F.pad(images, (4, 4, 4, 4))
    span = torch.arange(32, device=images.device)
    rows = (offsets[0][:, None] + span)[:, None, :, None]
    columns = (offsets[1][:, None] + span)[:, None, None, :]
    batch = torch.arange(count, device=images.device)[:, None, None, None]
    channels = torch.arange(3, device=images.device)[None, :, None, None]
    crops = padded[batch, channels, rows, columns]
    return torch.where(flips[:, None, None, None], crops.flip(3), crops)


def _normalize(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    x = (images.float() / 255.0 - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _autocast(device: torch.device):
    if device.type != "cuda":
        return torch.autocast("cpu", enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def evaluate_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    """Return the accuracy of ``model`` on uint8 images ``x`` with labels ``y``."""
    model.eval()
    correct = 0
    with torch.no_grad(), _autocast(device):
        for start in range(0, len(y), 1000):
            images = _normalize(x[start : start + 1000].to(device), device.type == "cuda")
            correct += (model(images).argmax(dim=1).cpu() == y[start : start + 1000]).sum().item()
    model.train()
    return correct / len(y)


def suggest_params(trial: optuna.Trial) -> dict:
    return {
        "lr": trial.suggest_float("lr", 0.01, 1.0, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-5, 1e-2, log=True),
        "batch_size": trial.suggest_categorical("batch_size", BATCH_SIZES),
        "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.2),
    }


def fit(
    params: dict,
    epochs: int,
    *,
    scheduler_factory,
    device: torch.device,
    seed: int,
    report=None,
    data: Optional[CifarSplits] = None,
    resume: Optional[budgetsearch.ResumePoint] = None,
) -> tuple:
    """Train a fresh ResNet-18 for ``epochs`` epochs; return the model, its validation accuracy and speed.

    ``scheduler_factory(optimizer, steps_per_epoch)`` builds the schedule, stepped after
    every iteration. ``report(val_accuracy, epoch)`` is called after every epoch. A
    diverged run reports NaN at that epoch and stops. The speed is training images per
    second, without evaluation.
    """
    data = data or load_data()
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model()
    model = model.to(device, memory_format=torch.channels_last) if cuda else model.to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=params["lr"], momentum=0.9, nesterov=True, weight_decay=params["weight_decay"]
    )
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and not torch.cuda.is_bf16_supported())
    loss_function = nn.CrossEntropyLoss(label_smoothing=params["label_smoothing"])
    batch_size = params["batch_size"]
    batches = len(data.y_train) // batch_size
    if batches == 0:
        raise ValueError(f"batch_size={batch_size} exceeds the {len(data.y_train)} training images.")
    steps_per_epoch = optimizer_steps_per_epoch(batches)
    generator = torch.Generator().manual_seed(seed)
    x_train = data.x_train.to(device)
    y_train = data.y_train.to(device)

    start_epoch = 0
    if resume is not None and resume.state is not None:
        model.load_state_dict(resume.state["model"])
        optimizer.load_state_dict(resume.state["optimizer"])
        scaler.load_state_dict(resume.state["scaler"])
        generator.set_state(resume.state["generator"])
        start_epoch = resume.start_step
    scheduler = scheduler_factory(optimizer, steps_per_epoch)

    model.train()
    val_accuracy = float("nan")
    trained, seconds = 0, 0.0
    for epoch in range(start_epoch + 1, epochs + 1):
        if cuda:
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        order = torch.randperm(len(y_train), generator=generator).to(device)
        diverged = False
        for batch in range(batches):
            index = order[batch * batch_size : (batch + 1) * batch_size]
            images = _normalize(augment(x_train[index], generator), cuda)
            with _autocast(device):
                loss = loss_function(model(images), y_train[index])
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if not torch.isfinite(loss).item():
                diverged = True
                break
        if cuda:
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - started
        trained += batches * batch_size
        if diverged:
            val_accuracy = float("nan")
            if report is not None:
                report(val_accuracy, epoch)
            break
        if resume is not None and epoch == resume.trunk_step:
            resume.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "generator": generator.get_state(),
                }
            )
        val_accuracy = evaluate_accuracy(model, data.x_val, data.y_val, device)
        if report is not None:
            report(val_accuracy, epoch)
    speed = trained / seconds if seconds else float("nan")
    return model, val_accuracy, speed


def measure_test_accuracy(params: dict, epochs: int, *, device: torch.device, seed: int = 0, data=None) -> float:
    """Train with linear decay to 0 over ``epochs`` epochs and return the test accuracy."""
    from budgetsearch.schedules import LinearSchedule

    data = data or load_data()
    model, _, _ = fit(
        params, epochs, device=device, seed=seed, data=data,
        scheduler_factory=lambda optimizer, per_epoch: LinearSchedule(optimizer, epochs, unit="epochs", steps_per_epoch=per_epoch),
    )
    return evaluate_accuracy(model, data.x_test, data.y_test, device)


def test_value(params: dict, budget: int, *, schedule: dict, seed: int, device: torch.device) -> float:
    """Train for ``budget`` epochs on ``schedule`` and return the test accuracy, or NaN if training diverged.

    ``budgetsearch compare`` calls this to retrain each method's incumbent.
    """
    from budgetsearch.schedules import schedule_from_description

    data = load_data()
    model, val_accuracy, _ = fit(
        params, budget, device=device, seed=seed, data=data,
        scheduler_factory=lambda optimizer, per_epoch: schedule_from_description(
            optimizer, budget, {**schedule, "unit": "epochs"}, steps_per_epoch=per_epoch
        ),
    )
    if math.isnan(val_accuracy):
        return val_accuracy
    return evaluate_accuracy(model, data.x_test, data.y_test, device)


def objective(trial: optuna.Trial) -> float:
    device = budgetsearch.trial_device()
    epochs = budgetsearch.trial_budget(trial)
    params = suggest_params(trial)
    resume = budgetsearch.resume_for(trial)

    def report(val_accuracy: float, epoch: int) -> None:
        trial.report(val_accuracy, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()

    _, val_accuracy, speed = fit(
        params,
        epochs,
        scheduler_factory=lambda optimizer, per_epoch: budgetsearch.schedule_for(trial, optimizer, steps_per_epoch=per_epoch),
        device=device,
        seed=trial.number,
        report=report,
        resume=resume,
    )
    trial.set_user_attr("cifar10:images_per_second", speed)
    if device.type == "cuda":
        trial.set_user_attr("cifar10:max_memory_mib", torch.cuda.max_memory_allocated(device) / 2**20)
    return val_accuracy


if __name__ == "__main__":
    from _tensor_training import best_params, positive_int

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="folder of cifar-10-batches-py (default: $BUDGETSEARCH_CIFAR10_DIR).")
    parser.add_argument(
        "--storage",
        help="storage URL of the study named by --study-name (default: $BUDGETSEARCH_STORAGE or sqlite:///budgetsearch.db).",
    )
    parser.add_argument("--study-name", help="name of a finished study whose best configuration to train.")
    parser.add_argument("--epochs", type=positive_int, default=DEFAULTS.max_budget, help="epochs to train (default: the maximum budget).")
    args = parser.parse_args()
    if args.storage is not None and args.study_name is None:
        parser.error("--storage needs --study-name: name the study whose best configuration to train.")
    params = DEFAULT_PARAMS
    if args.study_name is not None:
        params = best_params(args.storage or os.environ.get("BUDGETSEARCH_STORAGE") or "sqlite:///budgetsearch.db", args.study_name)
    device = budgetsearch.trial_device()
    try:
        splits = load_data(args.data_dir)
    except MissingDataError as error:
        raise SystemExit(f"{parser.prog}: error: {error}") from None
    print(f"params: {params}, {args.epochs} epochs on {device}, linear decay to 0")
    print(f"test accuracy: {measure_test_accuracy(params, args.epochs, device=device, data=splits):.4f}")
