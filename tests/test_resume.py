"""Resume mode: trunk checkpoints, hand-off to promoted trials, and fallbacks."""

import glob
import os

import optuna
import pytest
import torch

import budgetsearch
from budgetsearch import BudgetPruner, BudgetSampler
from budgetsearch._status import summary
from budgetsearch.schedules import WSDSchedule

optuna.logging.set_verbosity(optuna.logging.ERROR)

ATTR = "budgetsearch:"
FEATURES = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
TARGETS = FEATURES @ torch.linspace(-1.0, 1.0, 8) + 0.1 * torch.randn(256, generator=torch.Generator().manual_seed(1))


def new_run(lr, seed):
    """Return a fresh model, optimizer and batch generator for one configuration."""
    model = torch.nn.Linear(8, 1)
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, 8, generator=torch.Generator().manual_seed(seed)))
        model.bias.zero_()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return model, optimizer, torch.Generator().manual_seed(seed)


def train_step(model, optimizer, generator):
    index = torch.randint(0, len(TARGETS), (16,), generator=generator)
    loss = ((model(FEATURES[index]).squeeze(1) - TARGETS[index]) ** 2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def validation_loss(model):
    with torch.no_grad():
        return float(((model(FEATURES).squeeze(1) - TARGETS) ** 2).mean())


class Recorder:
    """An objective that trains a linear model and records what each trial saw."""

    def __init__(self):
        self.final_weights = {}
        self.saved_states = {}
        self.loaded_states = {}
        self.saved_momentum = {}
        self.loaded_momentum = {}
        self.rates = {}
        self.starts = {}

    def __call__(self, trial):
        budget = budgetsearch.trial_budget(trial)
        lr = trial.suggest_float("lr", 0.005, 0.05, log=True)
        config = trial.user_attrs[ATTR + "config"]
        model, optimizer, generator = new_run(lr, seed=config)

        resume = budgetsearch.resume_for(trial)
        if resume.state is not None:
            model.load_state_dict(resume.state["model"])
            optimizer.load_state_dict(resume.state["optimizer"])
            generator.set_state(resume.state["generator"])
            self.loaded_states[trial.number] = {k: v.clone() for k, v in model.state_dict().items()}
            self.loaded_momentum[trial.number] = momentum_buffers(optimizer)
        scheduler = budgetsearch.schedule_for(trial, optimizer)
        self.starts[trial.number] = resume.start_step

        rates = []
        for step in range(resume.start_step, budget):
            rates.append(optimizer.param_groups[0]["lr"])
            train_step(model, optimizer, generator)
            scheduler.step()
            if step + 1 == resume.trunk_step:
                state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "generator": generator.get_state()}
                self.saved_states[trial.number] = {k: v.clone() for k, v in model.state_dict().items()}
                self.saved_momentum[trial.number] = momentum_buffers(optimizer)
                resume.save(state)
            if (step + 1) % 10 == 0:
                trial.report(validation_loss(model), step + 1)
        self.rates[trial.number] = rates
        self.final_weights[trial.number] = {k: v.clone() for k, v in model.state_dict().items()}
        return validation_loss(model)


def momentum_buffers(optimizer):
    return [optimizer.state[p]["momentum_buffer"].clone() for p in optimizer.param_groups[0]["params"]]


def uninterrupted(lr, seed, budget, decay_fraction=0.2, warmup=0):
    model, optimizer, generator = new_run(lr, seed)
    scheduler = WSDSchedule(optimizer, budget, warmup=warmup, decay_fraction=decay_fraction)
    rates = []
    for _ in range(budget):
        rates.append(optimizer.param_groups[0]["lr"])
        train_step(model, optimizer, generator)
        scheduler.step()
    return model.state_dict(), rates


def resume_study(tmp_path, total_budget=600, **options):
    sampler = BudgetSampler(
        20, 180, 3, mode="resume", total_budget=total_budget, seed=0, base_sampler="random",
        artifact_dir=str(tmp_path / "artifacts"), **options,
    )
    return optuna.create_study(sampler=sampler, pruner=BudgetPruner())


def test_chain_ends_like_uninterrupted_run(tmp_path):
    recorder = Recorder()
    study = resume_study(tmp_path, warmup=4)
    study.optimize(recorder)
    top = [t for t in study.trials if t.user_attrs.get(ATTR + "rung") == 2]
    assert top
    for trial in top:
        assert trial.user_attrs[ATTR + "resumed_from_step"] == 48
        weights, rates = uninterrupted(trial.params["lr"], trial.user_attrs[ATTR + "config"], 180, warmup=4)
        for name, value in weights.items():
            assert torch.equal(recorder.final_weights[trial.number][name], value)
        # From the hand-off on, the rates are exactly those of the uninterrupted run.
        assert recorder.rates[trial.number] == rates[48:]
        assert max(recorder.rates[trial.number]) <= trial.params["lr"]


def test_handoff_equals_parent_trunk(tmp_path):
    recorder = Recorder()
    study = resume_study(tmp_path)
    study.optimize(recorder)
    by_number = {t.number: t for t in study.trials}
    promoted = [t for t in study.trials if t.user_attrs.get(ATTR + "rung", 0) > 0]
    assert promoted
    for child in promoted:
        parent = by_number[child.user_attrs[ATTR + "parent"]]
        assert recorder.starts[child.number] == {20: 16, 60: 48}[parent.user_attrs[ATTR + "budget"]]
        for name, value in recorder.saved_states[parent.number].items():
            assert torch.equal(recorder.loaded_states[child.number][name], value)
        saved = recorder.saved_momentum[parent.number]
        loaded = recorder.loaded_momentum[child.number]
        assert len(saved) == len(loaded) == 2
        for parent_buffer, child_buffer in zip(saved, loaded):
            assert torch.equal(parent_buffer, child_buffer)
        # The rate continues where the parent's stable phase stopped: the base rate.
        assert recorder.rates[child.number][0] == child.params["lr"]
        last_stable = recorder.starts[child.number] - recorder.starts[parent.number] - 1
        assert recorder.rates[parent.number][last_stable] == parent.params["lr"]


def test_spent_counts_only_resumed_steps(tmp_path):
    study = resume_study(tmp_path)
    study.optimize(Recorder())
    status = summary(study)
    trials = [t for t in study.trials if ATTR + "budget" in t.user_attrs]
    budgets = sum(t.user_attrs[ATTR + "budget"] for t in trials)
    starts = sum(t.user_attrs.get(ATTR + "start_step", 0) for t in trials)
    assert status["budget_spent"] == budgets - starts
    assert status["budget_spent"] < budgets
    assert status["budget_reserved"] <= 600
    assert status["resumed"] == sum(1 for t in trials if ATTR + "resumed_from_step" in t.user_attrs)
    assert status["resumed"] > 0


def delete_checkpoints(tmp_path):
    for path in glob.glob(str(tmp_path / "artifacts" / "**" / "*"), recursive=True):
        if os.path.isfile(path):
            os.remove(path)


def test_missing_checkpoint_starts_from_scratch(tmp_path):
    recorder = Recorder()
    study = resume_study(tmp_path, total_budget=2000)
    study.optimize(recorder, n_trials=9)
    delete_checkpoints(tmp_path)
    study.optimize(recorder, n_trials=1)
    child = study.trials[-1]
    assert child.user_attrs[ATTR + "rung"] == 1
    assert "saved no trunk checkpoint" not in child.user_attrs[ATTR + "resume_fallback"]
    assert "is missing" in child.user_attrs[ATTR + "resume_fallback"]
    assert ATTR + "resumed_from_step" not in child.user_attrs
    assert recorder.starts[child.number] == 0
    assert len(recorder.rates[child.number]) == 60
    status = summary(study)
    assert status["budget_spent"] == sum(
        t.user_attrs[ATTR + "budget"] - (t.user_attrs.get(ATTR + "start_step", 0) if ATTR + "resumed_from_step" in t.user_attrs else 0)
        for t in study.trials
    )


def test_missing_checkpoint_without_budget_fails(tmp_path):
    # Three trials at rung 0, then the promotion reserves 60 - 16 = 44 and fills the budget.
    study = resume_study(tmp_path, total_budget=20 * 3 + 44)
    study.optimize(Recorder(), n_trials=3)
    delete_checkpoints(tmp_path)
    errors = []

    def objective(trial):
        try:
            return Recorder()(trial)
        except budgetsearch.NoBudgetForRestartError as error:
            errors.append(str(error))
            raise

    study.optimize(objective, n_trials=1, catch=(budgetsearch.NoBudgetForRestartError,))
    child = study.trials[-1]
    assert child.user_attrs[ATTR + "rung"] == 1
    assert child.state == optuna.trial.TrialState.FAIL
    assert "is missing" in errors[0]
    assert "total budget" in errors[0]


def corrupt_checkpoints(tmp_path, content):
    for path in glob.glob(str(tmp_path / "artifacts" / "**" / "*"), recursive=True):
        if os.path.isfile(path):
            with open(path, "wb") as file:
                file.write(content)


def run_child_expecting_error(study):
    errors = []

    def objective(trial):
        try:
            return Recorder()(trial)
        except budgetsearch.CheckpointError as error:
            errors.append(str(error))
            raise

    study.optimize(objective, n_trials=1, catch=(budgetsearch.CheckpointError,))
    return study.trials[-1], errors


def test_corrupt_checkpoint_fails_naming_parent(tmp_path):
    study = resume_study(tmp_path, total_budget=2000)
    study.optimize(Recorder(), n_trials=9)
    corrupt_checkpoints(tmp_path, b"not a checkpoint")
    child, errors = run_child_expecting_error(study)
    assert child.state == optuna.trial.TrialState.FAIL
    assert f"parent trial {child.user_attrs[ATTR + 'parent']}" in errors[0]
    assert "corrupt" in errors[0]


def test_mismatched_checkpoint_fails_naming_parent(tmp_path):
    study = resume_study(tmp_path, total_budget=2000)
    study.optimize(Recorder(), n_trials=9)
    paths = sorted(p for p in glob.glob(str(tmp_path / "artifacts" / "**" / "*"), recursive=True) if os.path.isfile(p))
    with open(paths[0], "rb") as file:
        first = file.read()
    for path in paths[1:]:
        with open(path, "wb") as file:
            file.write(first)
    # Every checkpoint is now the first configuration's, so at most one child matches.
    child, errors = run_child_expecting_error(study)
    if child.state == optuna.trial.TrialState.COMPLETE:
        child, errors = run_child_expecting_error(study)
    assert child.state == optuna.trial.TrialState.FAIL
    assert f"parent trial {child.user_attrs[ATTR + 'parent']}" in errors[0]
    assert "saved for another job" in errors[0]


def test_report_at_resume_step_fails_naming_parent(tmp_path):
    errors = []

    def objective(trial):
        budget = budgetsearch.trial_budget(trial)
        trial.suggest_float("lr", 0.005, 0.05, log=True)
        resume = budgetsearch.resume_for(trial)
        resume.save({"step": torch.tensor(resume.trunk_step)})
        try:
            trial.report(1.0 / budget, max(resume.start_step, 1))
            trial.should_prune()
        except ValueError as error:
            errors.append(str(error))
            raise
        return 1.0 / budget

    study = resume_study(tmp_path, total_budget=2000)
    study.optimize(objective, n_trials=10, catch=(ValueError,))
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed
    assert all(t.user_attrs[ATTR + "rung"] > 0 for t in failed)
    assert f"parent trial {failed[0].user_attrs[ATTR + 'parent']}" in errors[0]


def test_schedule_before_resume_is_rejected(tmp_path):
    def objective(trial):
        trial.suggest_float("lr", 0.005, 0.05, log=True)
        weight = torch.nn.Parameter(torch.zeros(1))
        budgetsearch.schedule_for(trial, torch.optim.SGD([weight], lr=0.1))
        budgetsearch.resume_for(trial).save({"w": weight.detach()})
        return float(budgetsearch.trial_budget(trial))

    study = resume_study(tmp_path, total_budget=2000)
    study.optimize(objective, n_trials=10, catch=(RuntimeError,))
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed
    assert all(t.user_attrs[ATTR + "rung"] > 0 for t in failed)


@pytest.mark.parametrize(
    "options,match",
    [
        (dict(schedule="linear"), "schedule='linear' is invalid with mode='resume'"),
        (dict(schedule_options={"decay_fraction": 1.0}), "decay_fraction"),
        (dict(schedule_options={"decay_fraction": 0.0}), "decay_fraction"),
        (dict(warmup=16), "warmup=16"),
        (dict(budget_unit="epochs"), "budget_unit='epochs' is invalid with mode='resume'"),
    ],
)
def test_invalid_resume_settings(tmp_path, options, match):
    with pytest.raises(ValueError, match=match):
        resume_study(tmp_path, **options)


def test_unwritable_artifact_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    sampler = BudgetSampler(20, 180, 3, mode="resume", seed=0, artifact_dir=str(blocker / "artifacts"))
    study = optuna.create_study(sampler=sampler)
    with pytest.raises(ValueError, match="is not writable"):
        study.optimize(Recorder(), n_trials=1)
