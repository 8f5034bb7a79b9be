"""Deciding a job and pruning cost a number of SQL queries that does not grow with the study."""

import optuna
import pytest
from sqlalchemy import event

import budgetsearch
from budgetsearch import BudgetPruner, BudgetSampler
from budgetsearch._sampler import _ClaimCache
from budgetsearch._tables import database_for
from budgetsearch.testing import fill_study

optuna.logging.set_verbosity(optuna.logging.ERROR)

ATTR = "budgetsearch:"


def filled_study(url, size, promotions_claimed):
    """Return a study with ``size`` complete rung-0 trials, added in bulk.

    With ``promotions_claimed``, every promotable configuration already has a failed
    claim at rung 1, so the next job starts a new configuration.
    """
    sampler = BudgetSampler(1, 9, 3, seed=0, base_sampler="random", send_heartbeats=True)
    study = optuna.create_study(storage=url, study_name="filled", sampler=sampler, pruner=BudgetPruner())
    sampler.settings_for(study)
    fill_study(study, size, promotions_claimed=promotions_claimed)
    return study, sampler


def count_one_job(study, sampler):
    """Count the SQL statements of one job: the check, the claim, a report, a pruning decision and the result."""
    engines = {database_for(study._storage).engine, study._storage._backend.engine}
    statements = []

    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    for engine in engines:
        event.listen(engine, "before_cursor_execute", record)
    try:
        assert sampler.peek_job(study) is not None
        trial = study.ask()
        budget = budgetsearch.trial_budget(trial)
        x = trial.suggest_float("x", 0.0, 1.0)
        trial.report(x, budget)
        trial.should_prune()
        study.tell(trial, x)
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", record)
    return len(statements), trial.user_attrs[ATTR + "rung"]


@pytest.mark.parametrize("rung", [0, 1])
def test_queries_do_not_grow_with_study(tmp_path, rung):
    counts = {}
    for size in (100, 5000):
        study, sampler = filled_study(f"sqlite:///{tmp_path / f'q{size}-{rung}.db'}", size, rung == 0)
        counts[size], measured_rung = count_one_job(study, sampler)
        assert measured_rung == rung
    assert counts[5000] == counts[100]
    # A sanity bound on one job, whatever the study size (64 statements on SQLite when written).
    assert counts[100] < 100


def test_later_decisions_read_only_changed_claims(tmp_path, monkeypatch):
    study, sampler = filled_study(f"sqlite:///{tmp_path / 'changed.db'}", 1000, True)
    count_one_job(study, sampler)  # The first decision reads every claim.
    finished_rows = []
    original = _ClaimCache.finish

    def counting_finish(cache, claim_id, claim):
        finished_rows.append(claim_id)
        original(cache, claim_id, claim)

    monkeypatch.setattr(_ClaimCache, "finish", counting_finish)
    count_one_job(study, sampler)
    # The check and the claim of the second job read the first job's result once.
    assert len(finished_rows) == 1
    # A sampler that reads every claim afresh reaches the same decision as the cached one.
    fresh = BudgetSampler(use_stored_settings=True)
    assert fresh.peek_job(study) == sampler.peek_job(study)
