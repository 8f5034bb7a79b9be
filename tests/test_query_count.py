"""Deciding a job and pruning cost a number of SQL queries that does not grow with the study."""

import optuna
import pytest
from optuna.distributions import FloatDistribution
from sqlalchemy import event

import budgetsearch
from budgetsearch import BudgetPruner, BudgetSampler
from budgetsearch._tables import claims_table, database_for

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
    distribution = FloatDistribution(0.0, 1.0)
    values = [((number * 7919) % size) / size for number in range(size)]
    study.add_trials(
        [
            optuna.trial.create_trial(
                params={"x": value},
                distributions={"x": distribution},
                value=value,
                user_attrs={ATTR + "config": number, ATTR + "rung": 0, ATTR + "budget": 1, ATTR + "attempt": 0},
            )
            for number, value in enumerate(values)
        ]
    )
    database = database_for(study._storage)
    trial_ids = {t.number: t._trial_id for t in study.get_trials(deepcopy=False)}
    rows = [
        dict(
            study_id=study._study_id, config=number, rung=0, attempt=0, bracket=0, budget=1,
            start_step=0, reserved=1, spent=1, trial_number=number, trial_id=trial_ids[number],
            config_trial_id=trial_ids[number], state="complete", value=value, claimed_at=0.0,
            finished_at=0.0, claimed_sequence=2 * number + 1, finished_sequence=2 * number + 2,
        )
        for number, value in enumerate(values)
    ]
    if promotions_claimed:
        rows += [
            dict(row, rung=1, budget=3, reserved=3, state="failed", value=None, trial_number=size + row["config"])
            for row in rows
        ]
    with database.engine.begin() as connection:
        connection.execute(claims_table.insert(), rows)
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
