"""Workers that die or run long steps: heartbeats, lost trials and their next attempts."""

import json
import os
import signal
import subprocess
import time
from collections import Counter

import optuna
import pytest
import sqlalchemy as sa

from budgetsearch._tables import claims_table, database_for
from conftest import HERE, SYNTHETIC_STUDY, budgetsearch_command

ATTR = "budgetsearch:"
LONG_STEPS_STUDY = os.path.join(HERE, "studies", "long_steps.py")


@pytest.fixture(params=["sqlite", "postgresql"])
def kill_storage_url(request, tmp_path, server_databases):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'kill.db'}"
    return server_databases(request.param)


def claims(url, study_name):
    study = optuna.load_study(study_name=study_name, storage=url)
    database = database_for(study._storage)
    with database.engine.connect() as connection:
        return connection.execute(sa.select(claims_table).where(claims_table.c.study_id == study._study_id)).all()


def start_worker(environment, url, study_name, *options):
    return subprocess.Popen(
        budgetsearch_command("worker", SYNTHETIC_STUDY, "--storage", url, "--study-name", study_name, *options),
        env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_killed_worker_job_runs_again(kill_storage_url, study_name, cli_environment):
    # A trial of the smallest budget lasts 0.8 s, so it is still running when the test
    # kills its worker, even on a loaded machine.
    cli_environment["SYNTHETIC_SECONDS_PER_UNIT"] = "0.8"
    create = subprocess.run(
        budgetsearch_command(
            "run", SYNTHETIC_STUDY, "--storage", kill_storage_url, "--study-name", study_name,
            "--total-budget", "40", "--seed", "1", "--heartbeat-interval", "0.2", "--grace-period", "2",
            "--timeout", "0.001",
        ),
        env=cli_environment, capture_output=True, text=True, timeout=120,
    )
    assert create.returncode == 0, create.stderr

    victim = start_worker(cli_environment, kill_storage_url, study_name, "--worker-id", "victim")
    deadline = time.time() + 60
    while time.time() < deadline and not any(row.state == "running" for row in claims(kill_storage_url, study_name)):
        time.sleep(0.1)
    time.sleep(0.2)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    killed = [row for row in claims(kill_storage_url, study_name) if row.state == "running"]
    assert len(killed) == 1
    assert killed[0].worker.startswith("victim (")

    # Once the grace period has passed, the status shows the killed worker's trial as stale.
    time.sleep(max(0.0, killed[0].heartbeat_at + 2.5 - time.time()))
    stale = subprocess.run(
        budgetsearch_command("status", "--storage", kill_storage_url, "--study-name", study_name),
        env=cli_environment, capture_output=True, text=True, timeout=120,
    )
    assert "Running trials without a heartbeat for the grace period: 1." in stale.stdout

    survivor = start_worker(cli_environment, kill_storage_url, study_name)
    _, stderr = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, stderr
    # The warning names the lost trial's worker as that worker's own log lines do.
    assert f"Trial {killed[0].trial_number} of worker victim (" in stderr
    assert "sent no heartbeat" in stderr

    rows = claims(kill_storage_url, study_name)
    lost = [row for row in rows if row.state == "lost"]
    assert [row.trial_number for row in lost] == [killed[0].trial_number]
    retry = [row for row in rows if (row.config, row.rung) == (lost[0].config, lost[0].rung) and row.attempt == 1]
    assert len(retry) == 1
    assert retry[0].state == "complete"
    assert all(row.state in ("complete", "lost") for row in rows)

    study = optuna.load_study(study_name=study_name, storage=kill_storage_url)
    trials = [t for t in study.trials if ATTR + "config" in t.user_attrs]
    complete = Counter(
        (t.user_attrs[ATTR + "config"], t.user_attrs[ATTR + "rung"]) for t in trials
        if t.state == optuna.trial.TrialState.COMPLETE
    )
    assert max(complete.values()) == 1
    assert set(complete) == {(row.config, row.rung) for row in rows}
    by_number = {t.number: t for t in trials}
    assert by_number[killed[0].trial_number].state == optuna.trial.TrialState.FAIL
    assert sum(row.reserved for row in rows) <= 40

    # The status table counts the lost trial in its rung's lost column.
    status = subprocess.run(
        budgetsearch_command("status", "--storage", kill_storage_url, "--study-name", study_name, "--json"),
        env=cli_environment, capture_output=True, text=True, timeout=120,
    )
    lost_per_rung = {rung["rung"]: rung["lost"] for rung in json.loads(status.stdout)["rungs"]}
    assert lost_per_rung[lost[0].rung] == 1
    assert sum(lost_per_rung.values()) == 1


def test_long_steps_keep_heartbeat(tmp_path, cli_environment):
    url = f"sqlite:///{tmp_path / 'long.db'}"
    cli_environment["LONG_STEPS_SECONDS_PER_UNIT"] = "2.5"
    result = subprocess.run(
        budgetsearch_command("run", LONG_STEPS_STUDY, "--storage", url, "--study-name", "long", "--workers", "2"),
        env=cli_environment, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "sent no heartbeat" not in result.stderr
    rows = claims(url, "long")
    assert len(rows) == 4
    assert {row.state for row in rows} == {"complete"}
    assert {row.attempt for row in rows} == {0}
