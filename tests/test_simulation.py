"""Simulated studies: many in-process workers, a fast objective, and checks on every decision."""

import math
import random
import threading
import time
from collections import Counter

import optuna
import pytest
import sqlalchemy as sa

import budgetsearch
from budgetsearch import BudgetPruner, BudgetSampler
from budgetsearch._jobs import bracket_sizes
from budgetsearch._tables import claims_table, database_for
from budgetsearch._worker import run_worker

optuna.logging.set_verbosity(optuna.logging.ERROR)

ATTR = "budgetsearch:"


def synthetic(trial):
    """A value that improves with budget; some configurations fail or diverge."""
    budget = budgetsearch.trial_budget(trial)
    x = trial.suggest_float("x", 0.0, 1.0)
    time.sleep(random.random() * 0.001)
    if x > 0.97:
        raise RuntimeError(f"synthetic failure at x={x}")
    if x > 0.94:
        trial.report(math.nan, budget)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return (x - 0.4) ** 2 + 1.0 / budget


def run_study(min_budget, max_budget, eta, workers, algorithm, n_trials):
    storage = optuna.storages.InMemoryStorage()
    sampler = BudgetSampler(
        min_budget, max_budget, eta, n_trials=n_trials, seed=0, base_sampler="random", algorithm=algorithm,
        heartbeat_interval=0.05, grace_period=30.0,
    )
    study = optuna.create_study(study_name="simulated", storage=storage, sampler=sampler, pruner=BudgetPruner())
    sampler.settings_for(study)
    threads = [
        threading.Thread(target=run_worker, args=("simulated", storage, synthetic), kwargs={"worker_id": f"w{i}"})
        for i in range(workers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads), "a worker is still waiting"
    return study


def claim_rows(study):
    database = database_for(study._storage)
    with database.engine.connect() as connection:
        return connection.execute(sa.select(claims_table).where(claims_table.c.study_id == study._study_id)).all()


def check_promotions(study, eta):
    """Assert each promotion's parent was among the best n // eta of its bracket's rung when claimed."""
    rows = claim_rows(study)
    by_trial = {row.trial_number: row for row in rows}
    promoted = [row for row in rows if row.parent is not None]
    for child in promoted:
        parent = by_trial[child.parent]
        assert parent.config == child.config
        assert parent.rung == child.rung - 1
        assert parent.bracket == child.bracket
        finished = [
            row for row in rows
            if row.bracket == child.bracket and row.rung == parent.rung
            and row.state in ("complete", "pruned")
            and row.finished_sequence is not None and row.finished_sequence < child.claimed_sequence
        ]
        results = sorted((r for r in finished if r.state == "complete"), key=lambda r: (r.value, r.trial_number))
        ranked = results + [r for r in finished if r.state == "pruned"]
        top = {row.trial_number for row in ranked[: len(ranked) // eta]}
        assert parent.trial_number in top
        assert parent.state == "complete"
    return rows


GRID = [(1, 27, 3), (2, 100, 4), (5, 80, 2)]


@pytest.mark.parametrize("workers", [1, 4, 16])
@pytest.mark.parametrize("min_budget,max_budget,eta", GRID)
def test_hyperband_simulation(min_budget, max_budget, eta, workers):
    study = run_study(min_budget, max_budget, eta, workers, "hyperband", n_trials=700)
    trials = study.get_trials(deepcopy=False)
    states = {t.state for t in trials}
    assert states <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL}

    jobs = Counter(
        (t.user_attrs[ATTR + "config"], t.user_attrs[ATTR + "rung"], t.user_attrs[ATTR + "attempt"])
        for t in trials if ATTR + "config" in t.user_attrs
    )
    assert max(jobs.values()) == 1
    rows = check_promotions(study, eta)
    assert sum(1 for row in rows if row.parent is not None) > 0

    # The first 300 new configurations are spread over brackets in Hyperband's proportions.
    new = sorted((row for row in rows if row.rung == row.bracket and row.attempt == 0), key=lambda r: r.claimed_sequence)
    assert len(new) >= 300
    counts = Counter(row.bracket for row in new[:300])
    sizes = bracket_sizes(budgetsearch.Ladder(min_budget, max_budget, eta))
    for bracket, size in enumerate(sizes):
        expected = 300 * size / sum(sizes)
        assert abs(counts[bracket] - expected) <= max(2, 0.15 * expected)

    # A failed job is final: it never runs again.
    failed = {(row.config, row.rung) for row in rows if row.state == "failed"}
    assert all(Counter((row.config, row.rung) for row in rows)[job] == 1 for job in failed)


@pytest.mark.parametrize("workers", [1, 4, 16])
@pytest.mark.parametrize("min_budget,max_budget,eta", GRID)
def test_asha_simulation(min_budget, max_budget, eta, workers):
    study = run_study(min_budget, max_budget, eta, workers, "asha", n_trials=200)
    trials = study.get_trials(deepcopy=False)
    assert {t.state for t in trials} <= {
        optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL
    }
    rows = check_promotions(study, eta)
    assert len({(row.config, row.rung) for row in rows}) == 200
    assert max(row.rung for row in rows) >= 2
