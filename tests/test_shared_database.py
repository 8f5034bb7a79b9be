"""Eight worker processes share one study on SQLite, PostgreSQL and MySQL/MariaDB.

The assertions read the Optuna trials themselves: no job (configuration, rung,
attempt) ran twice, and every promoted trial's parent was among the best
``n // eta`` finished trials of its rung when the promotion was claimed.
"""

import subprocess
import sys
import time
from collections import Counter

import optuna
import sqlalchemy as sa

from budgetsearch._tables import claims_table, database_for
from conftest import SYNTHETIC_STUDY, budgetsearch_command

ATTR = "budgetsearch:"


def test_eight_workers_share_study(storage_url, study_name, cli_environment):
    cli_environment["SYNTHETIC_SECONDS_PER_UNIT"] = "0.002"
    result = subprocess.run(
        budgetsearch_command(
            "run", SYNTHETIC_STUDY, "--storage", storage_url, "--study-name", study_name,
            "--workers", "8", "--total-budget", "300", "--seed", "3",
        ),
        env=cli_environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr

    study = optuna.load_study(study_name=study_name, storage=storage_url)
    all_trials = study.get_trials(deepcopy=False)
    # A worker that lost the race for the last job that fitted ends its trial as
    # pruned, with no job and a no_job mark.
    jobless = [t for t in all_trials if ATTR + "config" not in t.user_attrs]
    assert all(t.system_attrs.get(ATTR + "no_job") for t in jobless)
    assert {t.state for t in jobless} <= {optuna.trial.TrialState.PRUNED}
    assert len(jobless) <= 8
    trials = [t for t in all_trials if t not in jobless]
    assert trials
    assert {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
    jobs = Counter((t.user_attrs[ATTR + "config"], t.user_attrs[ATTR + "rung"], t.user_attrs[ATTR + "attempt"]) for t in trials)
    assert max(jobs.values()) == 1
    assert sum(t.user_attrs[ATTR + "budget"] for t in trials) <= 300
    assert len({t.user_attrs[ATTR + "rung"] for t in trials}) >= 3

    database = database_for(study._storage)
    with database.engine.connect() as connection:
        rows = connection.execute(
            sa.select(claims_table).where(claims_table.c.study_id == study._study_id)
        ).all()
    order = {row.trial_number: (row.claimed_sequence, row.finished_sequence) for row in rows}
    assert set(order) == {t.number for t in trials}

    by_number = {t.number: t for t in trials}
    promoted = [t for t in trials if t.user_attrs[ATTR + "rung"] > 0]
    assert promoted
    for child in promoted:
        rung = child.user_attrs[ATTR + "rung"]
        parent = by_number[child.user_attrs[ATTR + "parent"]]
        assert parent.user_attrs[ATTR + "config"] == child.user_attrs[ATTR + "config"]
        assert parent.params == child.params
        claimed = order[child.number][0]
        finished = [
            t for t in trials
            if t.user_attrs[ATTR + "rung"] == rung - 1 and order[t.number][1] < claimed
        ]
        ranked = sorted(finished, key=lambda t: (t.value, t.number))
        top = [t.number for t in ranked[: len(ranked) // 3]]
        assert parent.number in top, (child.number, parent.number, top)


# Imports budgetsearch's CLI, reports ready, waits for the go file, then runs the command.
STARTER = """
import os, sys, time
from budgetsearch import cli
folder = sys.argv[1]
open(os.path.join(folder, f"ready-{os.getpid()}"), "w").close()
while not os.path.exists(os.path.join(folder, "go")):
    time.sleep(0.001)
sys.exit(cli.main(sys.argv[2:]))
"""


def test_concurrent_create_of_one_study(storage_url, study_name, cli_environment, tmp_path):
    # Hosts of an array job may all create the same new study at the same moment.
    count = 8
    command = ["create", SYNTHETIC_STUDY, "--storage", storage_url, "--study-name", study_name]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", STARTER, str(tmp_path), *command],
            env=cli_environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(count)
    ]
    try:
        deadline = time.time() + 120
        while len(list(tmp_path.glob("ready-*"))) < count and time.time() < deadline:
            time.sleep(0.05)
        (tmp_path / "go").touch()
        outputs = [process.communicate(timeout=120) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    errors = [stderr for _, stderr in outputs if stderr.strip()]
    assert [process.returncode for process in processes] == [0] * count, errors
