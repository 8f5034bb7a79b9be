"""The sampler and pruner pair on Optuna's in-memory storage, in one process."""

import math
import time
import warnings
from collections import Counter

import optuna
import pytest
import sqlalchemy as sa

import budgetsearch
import budgetsearch._tables
from budgetsearch import BudgetPruner, BudgetSampler
from budgetsearch._sampler import make_base_sampler
from budgetsearch._status import summary

optuna.logging.set_verbosity(optuna.logging.ERROR)

ATTR = "budgetsearch:"


def quadratic(trial):
    budget = budgetsearch.trial_budget(trial)
    x = trial.suggest_float("x", -2.0, 2.0)
    k = trial.suggest_int("k", 1, 4)
    return (x - 0.5) ** 2 + 0.1 * k + 1.0 / budget


def make_study(direction="minimize", pruner=None, **sampler_options):
    options = dict(min_budget=1, max_budget=9, reduction_factor=3, total_budget=200, seed=1)
    options.update(sampler_options)
    return optuna.create_study(
        direction=direction, sampler=BudgetSampler(**options), pruner=pruner or BudgetPruner()
    )


def jobs(study):
    return [t for t in study.trials if ATTR + "config" in t.user_attrs]


def test_optimize_stops_when_budget_spent():
    study = make_study()
    study.optimize(quadratic)
    trials = jobs(study)
    assert sum(t.user_attrs[ATTR + "budget"] for t in trials) <= 200
    assert Counter(t.user_attrs[ATTR + "rung"] for t in trials).keys() == {0, 1, 2}
    jobless = [t for t in study.trials if t not in trials]
    assert len(jobless) == 1
    assert jobless[0].state == optuna.trial.TrialState.PRUNED


def test_trial_attributes_recorded():
    study = make_study()
    study.optimize(quadratic)
    by_number = {t.number: t for t in study.trials}
    promoted = 0
    for trial in jobs(study):
        attrs = trial.user_attrs
        assert attrs[ATTR + "budget"] == (1, 3, 9)[attrs[ATTR + "rung"]]
        assert attrs[ATTR + "bracket"] == 0
        assert attrs[ATTR + "attempt"] == 0
        if attrs[ATTR + "rung"] == 0:
            assert attrs[ATTR + "config"] == trial.number
            assert ATTR + "parent" not in attrs
        else:
            promoted += 1
            parent = by_number[attrs[ATTR + "parent"]]
            assert parent.user_attrs[ATTR + "config"] == attrs[ATTR + "config"]
            assert parent.user_attrs[ATTR + "rung"] == attrs[ATTR + "rung"] - 1
    assert promoted > 0


def test_promoted_trial_replays_parameters_exactly():
    study = make_study()
    study.optimize(quadratic)
    by_number = {t.number: t for t in study.trials}
    for trial in jobs(study):
        config = by_number[trial.user_attrs[ATTR + "config"]]
        assert trial.params == config.params
        assert trial.distributions == config.distributions


def test_promotions_follow_rule():
    study = make_study(total_budget=400)
    study.optimize(quadratic)
    trials = sorted(jobs(study), key=lambda t: t.number)
    for child in trials:
        rung = child.user_attrs[ATTR + "rung"]
        if rung == 0:
            continue
        # At the moment of the claim, the parent was among the best n // 3 finished at its rung.
        finished = [
            t for t in trials
            if t.user_attrs[ATTR + "rung"] == rung - 1
            and t.datetime_complete is not None
            and t.datetime_complete <= child.datetime_start
        ]
        ranked = sorted(finished, key=lambda t: (t.value, t.number))
        top = {t.number for t in ranked[: len(ranked) // 3]}
        assert child.user_attrs[ATTR + "parent"] in top


def test_parameter_distribution_change_fails_trial():
    errors = {}

    def objective(trial):
        budget = budgetsearch.trial_budget(trial)
        high = 2.0 if budget == 1 else 3.0
        try:
            return trial.suggest_float("x", -2.0, high) ** 2
        except ValueError as error:
            errors[trial.number] = str(error)
            raise

    study = make_study(total_budget=30)
    study.optimize(objective, catch=(ValueError,))
    promoted = [t for t in jobs(study) if t.user_attrs[ATTR + "rung"] > 0]
    assert promoted
    for trial in promoted:
        assert trial.state == optuna.trial.TrialState.FAIL
        assert "parameter 'x'" in errors[trial.number]


def test_nan_report_prunes_and_is_never_promoted():
    def objective(trial):
        budget = budgetsearch.trial_budget(trial)
        x = trial.suggest_float("x", -2.0, 2.0)
        trial.report(float("nan") if x < 0 else x * x, step=budget)
        if trial.should_prune():
            raise optuna.TrialPruned()
        return x * x

    study = make_study()
    study.optimize(objective)
    by_number = {t.number: t for t in study.trials}
    pruned = [t for t in jobs(study) if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned
    assert all(t.params["x"] < 0 for t in pruned)
    for trial in jobs(study):
        config = by_number[trial.user_attrs[ATTR + "config"]]
        if trial.user_attrs[ATTR + "rung"] > 0:
            assert config.params["x"] >= 0
    assert summary(study)["rungs"][0]["pruned"] == len(pruned)


def test_nan_return_fails_and_is_never_promoted():
    def objective(trial):
        budgetsearch.trial_budget(trial)
        x = trial.suggest_float("x", -2.0, 2.0)
        return float("nan") if x < 0 else x * x

    study = make_study()
    study.optimize(objective)
    failed = [t for t in jobs(study) if t.state == optuna.trial.TrialState.FAIL]
    assert failed
    failed_configs = {t.user_attrs[ATTR + "config"] for t in failed}
    promoted_configs = {t.user_attrs[ATTR + "config"] for t in jobs(study) if t.user_attrs[ATTR + "rung"] > 0}
    assert not failed_configs & promoted_configs


def test_exception_fails_trial_for_good():
    def objective(trial):
        budgetsearch.trial_budget(trial)
        x = trial.suggest_float("x", -2.0, 2.0)
        if x > 1.0:
            raise RuntimeError("diverged")
        return x * x

    study = make_study()
    study.optimize(objective, catch=(RuntimeError,))
    failed = [t for t in jobs(study) if t.state == optuna.trial.TrialState.FAIL]
    assert failed
    jobs_run = Counter((t.user_attrs[ATTR + "config"], t.user_attrs[ATTR + "rung"]) for t in jobs(study))
    for trial in failed:
        assert jobs_run[(trial.user_attrs[ATTR + "config"], trial.user_attrs[ATTR + "rung"])] == 1


class _DelegatingPruner(optuna.pruners.BasePruner):
    def __init__(self, inner):
        self.inner = inner

    def prune(self, study, trial):
        return self.inner.prune(study, trial)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.parametrize(
    "pruner,prunes_on_first_report",
    [
        (lambda: _DelegatingPruner(BudgetPruner()), True),
        # PatientPruner calls the wrapped pruner only after patience + 1 reports.
        (lambda: optuna.pruners.PatientPruner(BudgetPruner(), patience=0), False),
    ],
    ids=["delegating", "patient"],
)
def test_wrapped_pruner(pruner, prunes_on_first_report):
    def objective(trial):
        budget = budgetsearch.trial_budget(trial)
        x = trial.suggest_float("x", -2.0, 2.0)
        trial.report(math.inf if x < -1.5 else x * x, step=budget)
        if trial.should_prune():
            raise optuna.TrialPruned()
        return x * x

    study = make_study(pruner=pruner())
    assert not isinstance(study.pruner, BudgetPruner)
    study.optimize(objective)
    rungs = Counter(t.user_attrs[ATTR + "rung"] for t in jobs(study))
    assert rungs[2] > 0
    if prunes_on_first_report:
        for trial in jobs(study):
            if trial.params["x"] < -1.5:
                assert trial.state == optuna.trial.TrialState.PRUNED


_views = []


def _record_view(study, trial):
    """Record the rungs and states a base sampler sees, and the rung it should see."""
    view = study._get_trials(deepcopy=False, use_cache=False)
    everything = study._original._get_trials(deepcopy=False)
    results = Counter(
        t.user_attrs[ATTR + "rung"] for t in everything if t.state == optuna.trial.TrialState.COMPLETE
    )
    n_min = 3  # two parameters plus one
    expected = max((rung for rung, count in results.items() if count >= n_min), default=0)
    _views.append((trial.number, expected, [(t.number, dict(t.user_attrs), t.state) for t in view]))


def _spy(sampler_class):
    class Spy(sampler_class):
        def sample_relative(self, study, trial, search_space):
            _record_view(study, trial)
            return super().sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            _record_view(study, trial)
            return super().sample_independent(study, trial, param_name, param_distribution)

    return lambda seed: Spy(seed=seed)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.parametrize(
    "sampler_class,total_budget",
    [
        (optuna.samplers.TPESampler, 300),
        (optuna.samplers.RandomSampler, 300),
        (optuna.samplers.GPSampler, 90),
        (optuna.samplers.CmaEsSampler, 200),
    ],
    ids=["tpe", "random", "gp", "cmaes"],
)
def test_base_sampler_sees_one_rung(sampler_class, total_budget):
    _views.clear()
    study = make_study(base_sampler=_spy(sampler_class), total_budget=total_budget)
    study.optimize(quadratic)
    assert _views
    model_rungs = set()
    for number, expected, view in _views:
        complete = [(n, attrs) for n, attrs, state in view if state == optuna.trial.TrialState.COMPLETE]
        running = [(n, attrs) for n, attrs, state in view if state == optuna.trial.TrialState.RUNNING]
        assert {attrs[ATTR + "rung"] for _, attrs in complete} <= {expected}
        configs = [attrs[ATTR + "config"] for _, attrs in complete]
        assert len(configs) == len(set(configs))
        for n, attrs in running:
            assert attrs[ATTR + "config"] == n
        assert {state for _, _, state in view} <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING}
        model_rungs.add(expected)
    # The model moves up the ladder once a higher rung has enough results.
    assert model_rungs >= {0, 1}


def test_base_sampler_seeded_per_trial():
    def first_params(seed):
        study = make_study(seed=seed, base_sampler="random", total_budget=20)
        study.optimize(quadratic)
        return [t.params for t in sorted(jobs(study), key=lambda t: t.number)]

    assert first_params(5) == first_params(5)
    assert first_params(5) != first_params(6)

    # Two processes share a study: each has its own sampler object with the same seed.
    storage = optuna.storages.InMemoryStorage()
    samplers = [BudgetSampler(1, 9, 3, total_budget=40, seed=7, base_sampler="random") for _ in range(2)]
    studies = [
        optuna.create_study(study_name="shared", storage=storage, sampler=s, load_if_exists=True)
        for s in samplers
    ]
    for _ in range(5):
        for study in studies:
            study.optimize(quadratic, n_trials=1)
    xs = [t.params["x"] for t in studies[0].trials if t.user_attrs[ATTR + "rung"] == 0]
    assert len(xs) == len(set(xs))


def test_settings_mismatch_is_rejected():
    storage = optuna.storages.InMemoryStorage()
    first = optuna.create_study(study_name="s", storage=storage, sampler=BudgetSampler(1, 9, 3, seed=0))
    first.optimize(quadratic, n_trials=2)
    second = optuna.create_study(
        study_name="s", storage=storage, sampler=BudgetSampler(1, 27, 3, seed=0), load_if_exists=True
    )
    with pytest.raises(budgetsearch.SettingsMismatchError, match="max_budget: stored 9, given 27"):
        second.optimize(quadratic, n_trials=1)
    assert len(first.trials) == 3


def test_trial_budget_without_sampler():
    study = optuna.create_study()
    trial = study.ask()
    with pytest.raises(ValueError, match="BudgetSampler"):
        budgetsearch.trial_budget(trial)


@pytest.mark.parametrize(
    "options,match",
    [
        (dict(min_budget=9, max_budget=9), "min_budget=9"),
        (dict(reduction_factor=1), "reduction_factor=1"),
        (dict(total_budget=0), "total_budget=0"),
        (dict(schedule="triangle"), "schedule='triangle'"),
        (dict(base_sampler="annealing"), "sampler='annealing'"),
        (dict(base_sampler=42), "base_sampler=42 is invalid"),
        (dict(budget_unit="tokens"), "budget_unit='tokens'"),
    ],
)
def test_invalid_sampler_arguments(options, match):
    with pytest.raises(ValueError, match=match):
        make_study(**options)


def test_rung_result_is_returned_value():
    def objective(trial):
        budget = budgetsearch.trial_budget(trial)
        x = trial.suggest_float("x", -2.0, 2.0)
        # Intermediate reports differ from the returned value on purpose.
        trial.report(100.0 + x, step=max(1, budget // 2))
        return x * x + 1.0 / budget

    study = make_study()
    study.optimize(objective)
    database = budgetsearch._tables.database_for(study._storage)
    with database.engine.connect() as connection:
        rows = connection.execute(
            budgetsearch._tables.sa.select(budgetsearch._tables.claims_table)
        ).all()
    by_number = {t.number: t for t in study.trials}
    assert rows
    for row in rows:
        trial = by_number[row.trial_number]
        assert row.value == trial.value
        assert row.rung == trial.user_attrs[ATTR + "rung"]


def test_too_few_results_never_prune():
    study = make_study(reduction_factor=4, min_budget=1, max_budget=16, total_budget=3)
    study.optimize(quadratic)
    trials = jobs(study)
    assert len(trials) == 3
    assert {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
    assert {t.user_attrs[ATTR + "rung"] for t in trials} == {0}


def test_pruned_before_first_report():
    def objective(trial):
        budgetsearch.trial_budget(trial)
        x = trial.suggest_float("x", -2.0, 2.0)
        if x < -1.0:
            raise optuna.TrialPruned()
        return x * x

    study = make_study()
    study.optimize(objective)
    pruned = [t for t in jobs(study) if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned
    assert all(t.value is None for t in pruned)
    pruned_configs = {t.user_attrs[ATTR + "config"] for t in pruned}
    promoted_configs = {t.user_attrs[ATTR + "config"] for t in jobs(study) if t.user_attrs[ATTR + "rung"] > 0}
    assert not pruned_configs & promoted_configs
    rung0 = summary(study)["rungs"][0]
    assert rung0["pruned"] == sum(1 for t in pruned if t.user_attrs[ATTR + "rung"] == 0)


def test_same_step_reported_twice_keeps_first():
    study = make_study(total_budget=20)
    trial = study.ask()
    budget = budgetsearch.trial_budget(trial)
    x = trial.suggest_float("x", -2.0, 2.0)
    # Optuna keeps the first value of a step and ignores later ones with a UserWarning,
    # which the default warning filter shows once for the same step and call site.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for value in (x, math.nan, math.inf):
            trial.report(value, step=budget)
    assert not trial.should_prune()
    study.tell(trial, x * x)
    frozen = study.trials[0]
    assert frozen.state == optuna.trial.TrialState.COMPLETE
    assert frozen.intermediate_values == {budget: x}
    duplicate_warnings = [w for w in caught if "already reported" in str(w.message)]
    assert len(duplicate_warnings) == 1


def test_factory_returning_non_sampler_is_rejected():
    with pytest.raises(ValueError, match="not an optuna sampler"):
        make_study(base_sampler=lambda seed: "not a sampler")


def test_joining_worker_uses_stored_base_sampler():
    storage = optuna.storages.InMemoryStorage()
    creator = BudgetSampler(1, 9, 3, seed=0, base_sampler="random")
    optuna.create_study(study_name="s", storage=storage, sampler=creator).optimize(quadratic, n_trials=1)
    joiner = BudgetSampler(use_stored_settings=True)
    study = optuna.load_study(study_name="s", storage=storage, sampler=joiner)
    assert joiner.settings_for(study).sampler == "random"
    study.optimize(quadratic, n_trials=1)
    plan_samplers = [type(make_base_sampler(joiner._base_spec, 0))]
    assert plan_samplers == [optuna.samplers.RandomSampler]


def study_with_fast_heartbeats(tmp_path):
    """Return a study on SQLite whose claims are lost 0.2 s after their last heartbeat."""
    sampler = BudgetSampler(
        min_budget=1, max_budget=9, reduction_factor=3, total_budget=60, seed=1,
        send_heartbeats=True, heartbeat_interval=0.05, grace_period=0.2,
    )
    return optuna.create_study(storage=f"sqlite:///{tmp_path / 'lost.db'}", sampler=sampler, pruner=BudgetPruner())


def test_retry_samples_parameters_lost_trial_missed(tmp_path):
    # A worker lost between two suggest calls leaves a first trial with only some of the
    # configuration's parameters. Its job's retry must still run.
    study = study_with_fast_heartbeats(tmp_path)
    lost = study.ask()
    lost_x = lost.suggest_float("x", -2.0, 2.0)
    time.sleep(0.5)

    retry = study.ask()
    assert retry.user_attrs[ATTR + "config"] == lost.number
    assert retry.user_attrs[ATTR + "attempt"] == 1
    assert retry.suggest_float("x", -2.0, 2.0) == lost_x
    k = retry.suggest_int("k", 1, 4)
    study.tell(retry, 1.0)

    study.optimize(quadratic)
    trials = study.get_trials(deepcopy=False)
    assert trials[lost.number].state == optuna.trial.TrialState.FAIL
    assert all(t.state != optuna.trial.TrialState.FAIL for t in trials if t.number != lost.number)
    # Every later trial of the configuration gets the same value of the missing parameter.
    config_trials = [t for t in trials if t.user_attrs.get(ATTR + "config") == lost.number and t.number != lost.number]
    assert {t.params["k"] for t in config_trials} == {k}
    assert {t.params["x"] for t in config_trials} == {lost_x}


def test_lost_trial_missing_parameter_checks_distribution(tmp_path):
    study = study_with_fast_heartbeats(tmp_path)
    first = study.ask()
    first.suggest_float("x", -2.0, 2.0)
    time.sleep(0.5)
    # The first retry samples k, and is lost too.
    second = study.ask()
    second.suggest_float("x", -2.0, 2.0)
    second.suggest_int("k", 1, 4)
    time.sleep(0.5)
    third = study.ask()
    assert third.user_attrs[ATTR + "attempt"] == 2
    third.suggest_float("x", -2.0, 2.0)
    with pytest.raises(ValueError, match="asks for parameter 'k' with .*but configuration 0 was sampled with"):
        third.suggest_int("k", 1, 8)


@pytest.mark.parametrize("new_name", ["old", "new"])
def test_new_study_replaces_deleted_study_rows(new_name, tmp_path):
    url = f"sqlite:///{tmp_path / 'reuse.db'}"
    old = optuna.create_study(study_name="old", storage=url, sampler=BudgetSampler(1, 9, 3, total_budget=40, seed=0))
    old.optimize(quadratic)
    optuna.delete_study(study_name="old", storage=url)

    new = optuna.create_study(study_name=new_name, storage=url, sampler=BudgetSampler(1, 9, 3, total_budget=80, seed=0))
    # SQLite gives the new study the id of the deleted newest study, which budgetsearch's tables still use.
    assert new._study_id == old._study_id
    new.optimize(quadratic)

    report = summary(new)
    assert report["total_budget"] == 80
    assert report["budget_reserved"] > 40
    assert report["budget_reserved"] <= 80
    assert report["budget_spent"] == sum(t.user_attrs[ATTR + "budget"] for t in jobs(new))


def test_settings_stored_without_marker_stay(tmp_path):
    url = f"sqlite:///{tmp_path / 'legacy.db'}"
    study = optuna.create_study(study_name="s", storage=url, sampler=BudgetSampler(1, 9, 3, total_budget=40, seed=0))
    study.optimize(quadratic, n_trials=5)
    # A study stored before budgetsearch marked its Optuna study has no marker attribute.
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM study_system_attributes WHERE key = 'budgetsearch:settings_created_at'"))
    engine.dispose()

    again = optuna.load_study(study_name="s", storage=url, sampler=BudgetSampler(use_stored_settings=True))
    again.optimize(quadratic, n_trials=5)
    assert summary(again)["budget_reserved"] == sum(t.user_attrs[ATTR + "budget"] for t in jobs(again))
    assert len(jobs(again)) == 10
    assert "budgetsearch:settings_created_at" in again._storage.get_study_system_attrs(again._study_id)


def test_interrupt_keeps_lost_claim_lost(tmp_path):
    from budgetsearch._tables import claims_table, database_for
    from budgetsearch._worker import _mark_interrupted

    study = study_with_fast_heartbeats(tmp_path)
    first = study.ask()
    budgetsearch.trial_budget(first)
    time.sleep(0.5)
    # The next request declares the silent first trial lost, as another worker would.
    second = study.ask()
    budgetsearch.trial_budget(second)
    database = database_for(study._storage)

    def states(connection):
        rows = connection.execute(sa.select(claims_table.c.trial_number, claims_table.c.state)).all()
        return dict(rows)

    assert database.run(states)[first.number] == "lost"
    # The first trial's worker is stopped by a signal only now.
    _mark_interrupted(database, study._study_id, first.number)
    assert database.run(states)[first.number] == "lost"
    _mark_interrupted(database, study._study_id, second.number)
    assert database.run(states)[second.number] == "interrupted"
