"""The CIFAR-10 study on a small data set that the test writes in torchvision's on-disk format."""

import math
import os
import pickle

import numpy as np
import optuna
import pytest
import torch

import budgetsearch
from budgetsearch._studyfile import load_study_file

STUDY_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "studies", "cifar10_resnet.py")
ATTR = "budgetsearch:"

optuna.logging.set_verbosity(optuna.logging.ERROR)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    module = load_study_file(STUDY_PATH).module
    root = tmp_path_factory.mktemp("cifar")
    module.write_synthetic(root, per_batch=120, test_images=40)
    os.environ["BUDGETSEARCH_CIFAR10_DIR"] = str(root)
    module.load_data.cache_clear()
    yield module
    del os.environ["BUDGETSEARCH_CIFAR10_DIR"]
    module.load_data.cache_clear()


def test_loader_reads_the_format(cifar):
    data = cifar.load_data()
    assert tuple(data.x_train.shape) == (540, 3, 32, 32)
    assert tuple(data.x_val.shape) == (60, 3, 32, 32)
    assert tuple(data.x_test.shape) == (40, 3, 32, 32)
    assert data.x_train.dtype == torch.uint8
    # The first image of data_batch_1, row-major as channel, row, column.
    with open(os.path.join(os.environ["BUDGETSEARCH_CIFAR10_DIR"], "cifar-10-batches-py", "data_batch_1"), "rb") as file:
        first = pickle.load(file, encoding="bytes")[b"data"][0]
    images = torch.cat([data.x_train, data.x_val])
    assert any(torch.equal(image, torch.from_numpy(first.reshape(3, 32, 32))) for image in images)


def test_missing_data_names_folder_and_source(tmp_path, cifar):
    with pytest.raises(cifar.MissingDataError) as raised:
        cifar.data_folder(str(tmp_path / "nowhere"))
    message = str(raised.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in message
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in message
    assert "BUDGETSEARCH_CIFAR10_DIR" in message


def test_malformed_batch_is_rejected(tmp_path, cifar):
    folder = cifar.write_synthetic(tmp_path, per_batch=4, test_images=4)
    with open(folder / "data_batch_3", "wb") as file:
        pickle.dump({b"labels": [1, 2], b"data": np.zeros((2, 100), dtype=np.uint8)}, file)
    with pytest.raises(ValueError, match="data_batch_3 is not a CIFAR-10 batch"):
        cifar.load_data(str(tmp_path))


def test_augment_crops_and_flips(cifar):
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.int64).reshape(2, 3, 32, 32) % 251 + 1
    generator = torch.Generator().manual_seed(3)
    crops = cifar.augment(images.to(torch.uint8), generator)
    assert tuple(crops.shape) == (2, 3, 32, 32)
    for source, crop in zip(images.to(torch.uint8), crops):
        padded = torch.nn.functional.pad(source, (4, 4, 4, 4))
        windows = [padded[:, i : i + 32, j : j + 32] for i in range(9) for j in range(9)]
        assert any(torch.equal(crop, w) or torch.equal(crop, w.flip(2)) for w in windows)


def test_one_epoch_through_pair_on_cpu(cifar, monkeypatch):
    monkeypatch.setenv("BUDGETSEARCH_DEVICE", "cpu")
    sampler = budgetsearch.BudgetSampler(
        1, 3, 3, budget_unit="epochs", total_budget=2, seed=0, base_sampler="random"
    )
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=budgetsearch.BudgetPruner())
    study.optimize(load_study_file(STUDY_PATH).objective)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2
    for trial in complete:
        assert trial.user_attrs[ATTR + "budget"] == 1
        assert list(trial.intermediate_values) == [1]
        assert 0.0 <= trial.value <= 1.0
        assert trial.user_attrs["cifar10:images_per_second"] > 0
        assert set(trial.params) == {"lr", "weight_decay", "batch_size", "label_smoothing"}


def test_test_value_trains_on_given_schedule(cifar):
    params = {"lr": 0.05, "weight_decay": 5e-4, "batch_size": 128, "label_smoothing": 0.0}
    schedule = {"name": "linear", "options": {}, "warmup": 0, "unit": "epochs"}
    value = cifar.test_value(params, 1, schedule=schedule, seed=0, device=torch.device("cpu"))
    assert 0.0 <= value <= 1.0
    diverged = cifar.test_value(dict(params, lr=1e9), 1, schedule=schedule, seed=0, device=torch.device("cpu"))
    assert math.isnan(diverged)
