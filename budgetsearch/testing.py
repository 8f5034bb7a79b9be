"""Helpers for budgetsearch's tests and benchmarks: scratch databases and studies filled in bulk.

These touch only databases they create themselves, named by the caller, on a server
the caller points them to.
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from typing import Iterator, Optional

import optuna
import sqlalchemy as sa
from optuna.distributions import FloatDistribution

from budgetsearch import _attrs
from budgetsearch._jobs import COMPLETE, FAILED
from budgetsearch._tables import claims_table, database_for, studies_table


def create_scratch_database(server_url: str, name: str) -> str:
    """Create an empty database ``name`` on the server at ``server_url`` and return its URL.

    A database of that name left over from an earlier run is dropped first.
    """
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
            connection.exec_driver_sql(f"CREATE DATABASE {name}")
    finally:
        admin.dispose()
    return sa.engine.make_url(server_url).set(database=name).render_as_string(hide_password=False)


def drop_scratch_database(server_url: str, name: str) -> None:
    """Drop the database ``name``, ending the sessions that still use it on PostgreSQL."""
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            if admin.dialect.name == "postgresql":
                connection.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                )
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
    finally:
        admin.dispose()


@contextmanager
def scratch_database(server_url: str, name: Optional[str] = None) -> Iterator[str]:
    """Yield the URL of a new empty database on the server at ``server_url``; drop it afterwards."""
    name = name or f"budgetsearch_scratch_{uuid.uuid4().hex[:10]}"
    url = create_scratch_database(server_url, name)
    try:
        yield url
    finally:
        drop_scratch_database(server_url, name)


def fill_study(study: optuna.Study, size: int, *, claims: bool = True, promotions_claimed: bool = True) -> None:
    """Add ``size`` complete trials of one parameter ``x`` at a budget of 1, in bulk.

    With ``claims``, each trial also gets a complete claim at rung 0 in budgetsearch's
    tables (the study must be bound to a ``BudgetSampler`` with budgets 1, 3, 9...), and
    the study's sequence moves past their numbers. With ``promotions_claimed``, every
    configuration also has a failed claim at rung 1, which no trial owns, so nothing is
    promotable and the next job starts a new configuration, as most jobs of a large
    study do.
    """
    distribution = FloatDistribution(0.0, 1.0)
    values = [((number * 7919) % size) / size for number in range(size)]
    first = len(study.get_trials(deepcopy=False))
    study.add_trials(
        [
            optuna.trial.create_trial(
                params={"x": value},
                distributions={"x": distribution},
                value=value,
                intermediate_values={1: value},
                user_attrs=(
                    {_attrs.CONFIG: first + number, _attrs.RUNG: 0, _attrs.BUDGET: 1, _attrs.ATTEMPT: 0}
                    if claims
                    else {}
                ),
            )
            for number, value in enumerate(values)
        ]
    )
    if not claims:
        return
    database = database_for(study._storage)
    trial_ids = {t.number: t._trial_id for t in study.get_trials(deepcopy=False)}
    with database.engine.begin() as connection:
        start = database.next_sequence(connection, study._study_id)
        rows = []
        for offset, value in enumerate(values):
            number = first + offset
            rows.append(
                dict(
                    study_id=study._study_id, config=number, rung=0, attempt=0, bracket=0, budget=1,
                    start_step=0, reserved=1, spent=1, trial_number=number, trial_id=trial_ids[number],
                    config_trial_id=trial_ids[number], state=COMPLETE, value=value, claimed_at=0.0,
                    finished_at=0.0, claimed_sequence=start + 2 * offset, finished_sequence=start + 2 * offset + 1,
                )
            )
        if promotions_claimed:
            # No Optuna trial owns these claims: their negative trial numbers match none.
            rows += [
                dict(row, rung=1, budget=3, reserved=3, spent=0, state=FAILED, value=None, trial_number=-1 - row["config"])
                for row in rows
            ]
        connection.execute(claims_table.insert(), rows)
        connection.execute(
            studies_table.update()
            .where(studies_table.c.study_id == study._study_id)
            .values(sequence=start + 2 * size + 1)
        )
