"""Workers against a PostgreSQL server that restarts or goes away in the middle of a study.

Each test runs its own PostgreSQL cluster (see own_postgres.py), never the shared one.
"""

import os
import subprocess
import time

import optuna
import pytest
import sqlalchemy as sa

from budgetsearch import DatabaseUnavailableError, ReconnectingStorage
from budgetsearch._status import duplicate_jobs
from budgetsearch._tables import StudyDatabase, claims_table, create_engine_for, database_for
from conftest import SYNTHETIC_STUDY, budgetsearch_command
from own_postgres import OwnPostgres, find_postgres_programs, free_port

ATTR = "budgetsearch:"


@pytest.fixture
def own_postgres():
    programs = find_postgres_programs()
    if programs is None:
        reason = "PostgreSQL's initdb and pg_ctl are not installed, so the test cannot start its own server"
        if os.environ.get("BUDGETSEARCH_REQUIRE_SERVERS"):
            pytest.fail(reason)
        pytest.skip(reason)
    server = OwnPostgres(programs)
    yield server
    server.remove()


def wait_for(condition, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def claim_rows(url, study_name):
    try:
        study = optuna.load_study(study_name=study_name, storage=url)
    except KeyError:  # Not created yet.
        return []
    with database_for(study._storage).engine.connect() as connection:
        return connection.execute(sa.select(claims_table).where(claims_table.c.study_id == study._study_id)).all()


def test_study_survives_server_restart(own_postgres, study_name, cli_environment):
    cli_environment["SYNTHETIC_SECONDS_PER_UNIT"] = "0.05"
    run = subprocess.Popen(
        budgetsearch_command(
            "run", SYNTHETIC_STUDY, "--storage", own_postgres.url, "--study-name", study_name,
            "--workers", "3", "--total-budget", "300", "--seed", "2",
            "--heartbeat-interval", "0.5", "--grace-period", "20",
        ),
        env=cli_environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # Restart once a few jobs have finished and others are running.
        def started():
            rows = claim_rows(own_postgres.url, study_name)
            return sum(row.state == "complete" for row in rows) >= 5 and any(row.state == "running" for row in rows)

        assert wait_for(started, 120), "the study did not start"
        own_postgres.stop()
        time.sleep(3)
        own_postgres.start()
        stdout, stderr = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, stderr
    # The workers saw the outage and waited for the server.
    assert "unreachable" in stderr
    assert "retrying for up to" in stderr

    rows = claim_rows(own_postgres.url, study_name)
    assert {row.state for row in rows} == {"complete"}
    assert sum(row.reserved for row in rows) <= 300
    assert len({(row.config, row.rung) for row in rows}) == len(rows)
    trials = optuna.load_study(study_name=study_name, storage=own_postgres.url).get_trials(deepcopy=False)
    assert duplicate_jobs(trials) == 0
    owned = [t for t in trials if ATTR + "config" in t.user_attrs]
    assert len(owned) == len(rows)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in owned)


def test_worker_stops_when_server_stays_down(own_postgres, study_name, cli_environment):
    cli_environment["SYNTHETIC_SECONDS_PER_UNIT"] = "0.2"
    create = subprocess.run(
        budgetsearch_command(
            "run", SYNTHETIC_STUDY, "--storage", own_postgres.url, "--study-name", study_name,
            "--total-budget", "300", "--timeout", "0.001",
        ),
        env=cli_environment, capture_output=True, text=True, timeout=120,
    )
    assert create.returncode == 0, create.stderr

    worker = subprocess.Popen(
        budgetsearch_command(
            "worker", SYNTHETIC_STUDY, "--storage", own_postgres.url, "--study-name", study_name, "--db-wait", "5",
        ),
        env=cli_environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert wait_for(lambda: any(row.state == "running" for row in claim_rows(own_postgres.url, study_name)), 60)
        own_postgres.stop()
        stopped = time.monotonic()
        _, stderr = worker.communicate(timeout=120)
        waited = time.monotonic() - stopped
    finally:
        if worker.poll() is None:
            worker.kill()

    assert worker.returncode == 1
    last_line = stderr.strip().splitlines()[-1]
    assert last_line.startswith("budgetsearch: error: database postgresql+psycopg://postgres@127.0.0.1:")
    assert "unreachable for" in last_line
    assert "--db-wait" in last_line
    # The wait is bounded: 5 s of retries, plus the trial that was running (at most 27 units of 0.2 s).
    assert 5 <= waited < 5 + 27 * 0.2 + 15


def test_unreachable_database_raises_after_wait():
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError, match="unreachable for") as raised:
        StudyDatabase(create_engine_for(url), db_wait=2.0)
    assert 2.0 <= time.monotonic() - started < 15
    assert isinstance(raised.value.__cause__, sa.exc.OperationalError)
    with pytest.raises(DatabaseUnavailableError):
        ReconnectingStorage(url, db_wait=1.0)


def test_reconnecting_storage_rejects_negative_wait():
    with pytest.raises(ValueError, match="db_wait=-1"):
        ReconnectingStorage("sqlite://", db_wait=-1)


def test_cached_storage_private_calls_retried():
    import inspect
    import re

    from optuna.storages import _cached_storage

    # Optuna's cache calls some private methods of the RDB storage directly, so a server
    # outage during one of them must be retried like the public calls.
    called = set(re.findall(r"self\._backend\.(_\w+)\(", inspect.getsource(_cached_storage)))
    assert "_create_new_trial" in called
    for name in called:
        assert name in ReconnectingStorage.__dict__, name
