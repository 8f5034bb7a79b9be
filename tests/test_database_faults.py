"""Database faults: a deadlock inside budgetsearch's own transactions is retried.

The deadlock is a real one on each server: a second connection holds the lock on a
trial's claim row and then requests the study's row, which budgetsearch's transaction
locked before it started to wait for the claim row.
"""

import logging
import threading
import time

import optuna
import pytest
import sqlalchemy as sa

from budgetsearch import BudgetPruner, BudgetSampler
from budgetsearch._tables import claims_table, database_for, studies_table


def _wait_until(condition, seconds=20.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("the condition was not met in time")


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_deadlock_in_result_is_retried(backend, server_databases, study_name, caplog):
    url = server_databases(backend)
    sampler = BudgetSampler(1, 9, 3, seed=0, base_sampler="random")
    study = optuna.create_study(storage=url, study_name=study_name, sampler=sampler, pruner=BudgetPruner())
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    study_id = study._study_id

    other = sa.create_engine(url, poolclass=sa.pool.NullPool)
    blocker = other.connect()
    if backend == "postgresql":
        # Our transaction waits 1 s (the default) before it checks for a deadlock, the
        # blocker 10 s, so ours is the one the server cancels.
        blocker.exec_driver_sql("SET deadlock_timeout = '10s'")
        blocker.commit()
    transaction = blocker.begin()
    # Lock every claim row of the study, so that on MariaDB the blocker has changed more
    # rows than ours and ours is the transaction the server rolls back.
    blocker.execute(claims_table.update().where(claims_table.c.study_id == study_id).values(worker="blocker"))

    outcome = {}

    def tell():
        try:
            outcome["trial"] = study.tell(trial, 0.5)
        except Exception as error:  # reported by the assertion below
            outcome["error"] = error

    teller = threading.Thread(target=tell)
    with caplog.at_level(logging.INFO, logger="budgetsearch._tables"):
        teller.start()
        # Wait until our transaction has locked the study row and waits for the claim row.
        probe = sa.create_engine(url, poolclass=sa.pool.NullPool)
        if backend == "postgresql":
            query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        else:
            query = "SELECT count(*) FROM information_schema.innodb_trx WHERE trx_state = 'LOCK WAIT'"
        with probe.connect() as connection:
            _wait_until(lambda: connection.exec_driver_sql(query).scalar() > 0)
        probe.dispose()
        try:
            blocker.execute(sa.select(studies_table.c.sequence).where(studies_table.c.study_id == study_id).with_for_update())
        except sa.exc.DBAPIError:
            # The server chose the blocker as the victim after all; ours then went ahead.
            transaction.rollback()
            pytest.fail("the server rolled back the test's blocking transaction instead of budgetsearch's")
        transaction.rollback()
        teller.join(60)
    blocker.close()
    other.dispose()

    assert "error" not in outcome, outcome.get("error")
    assert outcome["trial"].state == optuna.trial.TrialState.COMPLETE
    assert any("Retrying a budgetsearch transaction" in record.getMessage() for record in caplog.records)
    with database_for(study._storage).engine.connect() as connection:
        state, value = connection.execute(
            sa.select(claims_table.c.state, claims_table.c.value).where(claims_table.c.study_id == study_id)
        ).one()
    assert (state, value) == ("complete", 0.5)
