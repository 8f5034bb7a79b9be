"""The command line as a user meets it: run, status, worker and bad input."""

import json
import os
import signal
import subprocess
import time

import optuna
import pytest

from conftest import HERE, SYNTHETIC_STUDY, budgetsearch_command

FAULTY_STUDY = os.path.join(HERE, "studies", "faulty.py")


def run_cli(environment, *args, timeout=300):
    return subprocess.run(
        budgetsearch_command(*args), env=environment, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'cli.db'}"


@pytest.fixture(scope="module")
def shared_url(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('shared') / 'cli.db'}"


@pytest.fixture(scope="module")
def finished_study(shared_url):
    """A finished study "s" in shared_url; tests that use it must leave it unchanged."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.path.dirname(HERE) + os.pathsep + environment.get("PYTHONPATH", "")
    result = run_cli(
        environment, "run", SYNTHETIC_STUDY, "--storage", shared_url, "--study-name", "s",
        "--workers", "2", "--total-budget", "120", "--seed", "0",
    )
    assert result.returncode == 0, result.stderr
    return result


def snapshot(url, name):
    status = json.loads(
        subprocess.run(
            budgetsearch_command("status", "--storage", url, "--study-name", name, "--json"),
            capture_output=True, text=True, check=True,
        ).stdout
    )
    return status


def test_run_then_status_json(finished_study, shared_url, cli_environment):
    sqlite_url = shared_url
    assert "\r" not in finished_study.stdout
    assert "Best: loss" in finished_study.stdout
    status = snapshot(sqlite_url, "s")
    for key in (
        "study_name", "direction", "budget_unit", "algorithm", "mode", "ladder", "total_budget",
        "budget_reserved", "budget_spent", "trials", "rungs", "duplicate_jobs", "best",
    ):
        assert key in status
    assert status["ladder"] == [1, 3, 9, 27]
    assert status["budget_reserved"] <= 120
    assert status["budget_spent"] == status["budget_reserved"]
    assert status["duplicate_jobs"] == 0
    assert status["trials"]["complete"] == sum(r["complete"] for r in status["rungs"])
    assert sum(1 for r in status["rungs"] if r["complete"]) >= 3
    best = status["best"]
    top = max(r["rung"] for r in status["rungs"] if r["complete"])
    assert best["rung"] == top
    assert best["budget"] == status["ladder"][top]
    assert set(best["params"]) == {"x", "y"}
    text = run_cli(cli_environment, "status", "--storage", sqlite_url, "--study-name", "s")
    assert text.returncode == 0
    assert "promoted" in text.stdout


def test_run_again_continues_study(finished_study, shared_url, cli_environment):
    sqlite_url = shared_url
    before = snapshot(sqlite_url, "s")
    result = run_cli(cli_environment, "run", SYNTHETIC_STUDY, "--storage", sqlite_url, "--study-name", "s")
    assert result.returncode == 0, result.stderr
    after = snapshot(sqlite_url, "s")
    # The stored total budget is spent, so nothing more runs.
    assert after["budget_reserved"] == before["budget_reserved"]


BAD_RUN_FLAGS = [
    (["--min-budget", "27"], "min_budget: stored 1, given 27"),
    (["--min-budget", "30", "--max-budget", "27"], "min_budget: stored 1, given 30"),
    (["--reduction-factor", "1"], "'1'"),
    (["--reduction-factor", "2.5"], "'2.5'"),
    (["--total-budget", "0"], "'0'"),
    (["--total-budget", "-5"], "'-5'"),
    (["--max-budget", "1.5"], "'1.5'"),
    (["--schedule", "triangle"], "'triangle'"),
    (["--sampler", "annealing"], "'annealing'"),
    (["--algorithm", "bohb"], "'bohb'"),
    (["--max-budget", "81"], "max_budget: stored 27, given 81"),
    (["--seed", "5"], "seed: stored 0, given 5"),
    (["--mode", "continue"], "'continue'"),
    (["--mode", "resume"], "mode: stored 'restart', given 'resume'"),
    (["--algorithm", "hyperband"], "algorithm: stored 'asha', given 'hyperband'"),
]


BAD_NEW_STUDY_FLAGS = [
    (["--min-budget", "27"], "min_budget=27 is invalid: it must be below max_budget=27"),
    (["--min-budget", "30", "--max-budget", "27"], "min_budget=30 is invalid"),
    (["--total-budget", "1", "--min-budget", "2"], "total_budget=1 is invalid"),
    (["--mode", "resume", "--schedule", "cosine"], "schedule='cosine' is invalid with mode='resume'"),
    (["--mode", "resume", "--min-budget", "5", "--warmup", "4"], "warmup=4 is invalid in resume mode"),
]


@pytest.mark.parametrize("flags,named", BAD_NEW_STUDY_FLAGS, ids=[" ".join(f) for f, _ in BAD_NEW_STUDY_FLAGS])
def test_bad_resume_flags(flags, named, sqlite_url, cli_environment):
    result = run_cli(cli_environment, "run", SYNTHETIC_STUDY, "--storage", sqlite_url, "--study-name", "r", *flags)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert named in lines[0]
    assert optuna.study.get_all_study_names(sqlite_url) == []


def test_unwritable_artifact_dir(tmp_path, sqlite_url, cli_environment):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    result = run_cli(
        cli_environment, "run", SYNTHETIC_STUDY, "--storage", sqlite_url, "--study-name", "r",
        "--mode", "resume", "--min-budget", "10", "--max-budget", "90", "--artifact-dir", str(blocker / "checkpoints"),
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "is not writable" in result.stderr
    assert "--artifact-dir" in result.stderr


@pytest.mark.parametrize("flags,named", BAD_RUN_FLAGS, ids=[" ".join(f) for f, _ in BAD_RUN_FLAGS])
def test_bad_flags_leave_study_untouched(finished_study, shared_url, cli_environment, flags, named):
    sqlite_url = shared_url
    before = snapshot(sqlite_url, "s")
    result = run_cli(cli_environment, "run", SYNTHETIC_STUDY, "--storage", sqlite_url, "--study-name", "s", *flags)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert named in lines[0]
    assert snapshot(sqlite_url, "s") == before


@pytest.mark.parametrize(
    "study_file,named",
    [
        (os.path.join(HERE, "studies", "no_defaults.py"), "no DEFAULTS"),
        (os.path.join(HERE, "studies", "no_objective.py"), "no objective"),
        ("missing_study.py", "'missing_study.py' not found"),
        (HERE, f"study file {HERE!r} is a folder"),
    ],
)
def test_bad_study_file(study_file, named, sqlite_url, cli_environment):
    result = run_cli(cli_environment, "run", study_file, "--storage", sqlite_url)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert named in result.stderr


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://tuner:s3cret-pw@127.0.0.1:9/test",
        "mysql+pymysql://tuner:s3cret-pw@127.0.0.1:9/test",
    ],
)
def test_unreachable_storage_masks_password(url, cli_environment):
    result = run_cli(cli_environment, "run", SYNTHETIC_STUDY, "--storage", url, "--db-wait", "1", timeout=120)
    assert result.returncode == 1
    # A warning that the worker retries, then the error on one line.
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2
    assert "retrying for up to 1 s" in lines[0]
    assert lines[1].startswith("budgetsearch: error: database ")
    assert "unreachable for 1 s" in lines[1]
    assert "--db-wait" in lines[1]
    assert "s3cret-pw" not in result.stderr
    assert "tuner:***@127.0.0.1:9" in result.stderr


def test_status_of_missing_study(sqlite_url, cli_environment):
    missing_file = run_cli(cli_environment, "status", "--storage", sqlite_url, "--study-name", "nope")
    assert missing_file.returncode == 2
    assert "not found" in missing_file.stderr
    assert not os.path.exists(sqlite_url[len("sqlite:///"):])

    optuna.create_study(study_name="other", storage=sqlite_url)
    result = run_cli(cli_environment, "status", "--storage", sqlite_url, "--study-name", "nope")
    assert result.returncode == 2
    assert "'nope' not found" in result.stderr


def test_faulty_objective_fails_only_its_trial(sqlite_url, cli_environment):
    result = run_cli(
        cli_environment, "run", FAULTY_STUDY, "--storage", sqlite_url, "--study-name", "f", "--workers", "1", "--seed", "2"
    )
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="f", storage=sqlite_url)
    trials = [t for t in study.trials if "budgetsearch:config" in t.user_attrs]
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert {t.params["x"] < 0.55 for t in failed} == {True}
    assert {t.params["x"] >= 0.55 for t in complete} == {True}
    # Each kind of fault happened, and the single worker went on after each.
    assert any(t.params["x"] < 0.15 for t in failed)
    assert any(0.15 <= t.params["x"] < 0.3 for t in failed)
    assert any(0.3 <= t.params["x"] < 0.45 for t in failed)
    assert any(0.45 <= t.params["x"] < 0.55 for t in failed)
    assert max(t.number for t in complete) > min(t.number for t in failed)
    jobs = [(t.user_attrs["budgetsearch:config"], t.user_attrs["budgetsearch:rung"]) for t in trials]
    assert len(jobs) == len(set(jobs))
    status = snapshot(sqlite_url, "f")
    assert status["budget_reserved"] <= 60
    assert status["trials"]["fail"] == len(failed)
    assert status["best"]["value"] >= 0.55
    assert "diverged at x=" in result.stderr


def test_sigterm_releases_job_without_using_retry(sqlite_url, cli_environment):
    cli_environment["FAULTY_SECONDS_PER_UNIT"] = "1.0"
    create = run_cli(
        cli_environment, "run", FAULTY_STUDY, "--storage", sqlite_url, "--study-name", "k", "--n-trials", "1",
        "--timeout", "0.001", "--max-retries", "0",
    )
    assert create.returncode == 0, create.stderr
    worker = subprocess.Popen(
        budgetsearch_command("worker", FAULTY_STUDY, "--storage", sqlite_url, "--study-name", "k"),
        env=cli_environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    study = optuna.load_study(study_name="k", storage=sqlite_url)
    deadline = time.time() + 60
    while not study.trials and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    worker.send_signal(signal.SIGTERM)
    _, stderr = worker.communicate(timeout=60)
    assert worker.returncode == 143
    assert "next attempt" in stderr
    first = study.trials[0]
    assert first.state == optuna.trial.TrialState.FAIL

    cli_environment["FAULTY_SECONDS_PER_UNIT"] = "0"
    again = run_cli(cli_environment, "worker", FAULTY_STUDY, "--storage", sqlite_url, "--study-name", "k")
    assert again.returncode == 0, again.stderr
    retried = [t for t in study.trials if t.number != first.number and "budgetsearch:config" in t.user_attrs]
    assert len(retried) == 1
    assert retried[0].user_attrs["budgetsearch:config"] == first.user_attrs["budgetsearch:config"]
    assert retried[0].user_attrs["budgetsearch:attempt"] == 1
    assert retried[0].params == first.params
    # The job ran again with --max-retries 0: an attempt that a signal stopped does not count.
    status = snapshot(sqlite_url, "k")
    assert status["rungs"][0]["lost"] == 1
    # The faulty objective fails some parameter values for good, so the retry may fail too.
    assert status["rungs"][0]["complete"] + status["rungs"][0]["failed"] == 1


def test_help_of_every_command(cli_environment):
    for command in ([], ["run"], ["worker"], ["status"], ["db"], ["db", "upgrade"]):
        result = run_cli(cli_environment, *command, "--help")
        assert result.returncode == 0
        assert "usage: budgetsearch" in result.stdout


def test_run_ends_beside_trial_without_heartbeat(sqlite_url, cli_environment):
    import budgetsearch

    # A study.optimize process that died mid-trial leaves a running claim with no heartbeat.
    sampler = budgetsearch.BudgetSampler(1, 9, 3, total_budget=30, seed=0)
    study = optuna.create_study(study_name="orphan", storage=sqlite_url, sampler=sampler)
    orphan = study.ask()
    budgetsearch.trial_budget(orphan)
    result = run_cli(
        cli_environment, "run", SYNTHETIC_STUDY, "--storage", sqlite_url, "--study-name", "orphan", "--workers", "2",
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    status = snapshot(sqlite_url, "orphan")
    assert status["trials"]["running"] == 1
    assert status["budget_reserved"] <= 30


SECONDS_STUDY = os.path.join(os.path.dirname(SYNTHETIC_STUDY), "seconds_budget.py")


def test_seconds_budgets_end_when_schedule_is_done(sqlite_url, cli_environment):
    result = run_cli(cli_environment, "run", SECONDS_STUDY, "--storage", sqlite_url, "--study-name", "s", "--workers", "2")
    assert result.returncode == 0, result.stderr
    trials = optuna.load_study(study_name="s", storage=sqlite_url).get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sum(t.user_attrs["budgetsearch:budget"] for t in complete) <= 9
    assert {t.user_attrs["budgetsearch:budget"] for t in complete} == {1, 3}
    for trial in complete:
        budget = trial.user_attrs["budgetsearch:budget"]
        # The loop stopped when the scheduler reported the time budget spent, and the
        # learning rate had decayed to about 0 by then.
        assert budget <= trial.user_attrs["seconds_trained"] < budget + 1.0
        assert trial.user_attrs["last_lr_fraction"] < 0.1
        assert trial.user_attrs["steps"] > 10
        assert list(trial.intermediate_values) == [budget]


def test_devices_not_on_machine_are_rejected(sqlite_url, cli_environment):
    missing = run_cli(cli_environment, "run", SYNTHETIC_STUDY, "--storage", sqlite_url, "--devices", "cuda:7")
    assert missing.returncode == 2
    assert "cuda:7 is not on this machine" in missing.stderr
    invalid = run_cli(cli_environment, "run", SYNTHETIC_STUDY, "--storage", sqlite_url, "--devices", "gpu0")
    assert invalid.returncode == 2
    assert "'gpu0' is invalid: use auto, cpu or cuda:N" in invalid.stderr


def test_devices_auto_runs_on_cpu_here(sqlite_url, cli_environment):
    result = run_cli(
        cli_environment, "run", SYNTHETIC_STUDY, "--storage", sqlite_url, "--devices", "auto", "--total-budget", "30"
    )
    assert result.returncode == 0, result.stderr
    assert "on cpu" in result.stdout


@pytest.mark.parametrize(
    "study_name,error",
    [
        ("missing_data.py", "FileNotFoundError: data not found in /nonexistent/data"),
        ("wrong_return.py", "the objective returned a str, not a finite number"),
    ],
)
def test_worker_stops_after_repeated_identical_failures(study_name, error, sqlite_url, cli_environment):
    study = os.path.join(os.path.dirname(SYNTHETIC_STUDY), study_name)
    result = run_cli(cli_environment, "run", study, "--storage", sqlite_url, "--study-name", "m", "--workers", "1")
    assert result.returncode == 1
    assert f"its last 3 trials failed with the same error: {error}" in result.stderr
    status = snapshot(sqlite_url, "m")
    # Three trials of budget 1 failed; the rest of the budget is left for a fixed set-up.
    assert status["trials"]["fail"] == 3
    assert status["budget_reserved"] == 3


def test_worker_on_finished_study_says_why(sqlite_url, cli_environment):
    done = run_cli(cli_environment, "run", SYNTHETIC_STUDY, "--storage", sqlite_url, "--study-name", "d", "--total-budget", "20")
    assert done.returncode == 0, done.stderr
    result = run_cli(cli_environment, "worker", SYNTHETIC_STUDY, "--storage", sqlite_url, "--study-name", "d")
    assert result.returncode == 0
    assert "study 'd' has no job left that fits its total budget or trial limit" in result.stderr


def test_worker_does_not_create_missing_study(sqlite_url, cli_environment):
    optuna.create_study(study_name="other", storage=sqlite_url)
    result = run_cli(cli_environment, "worker", SYNTHETIC_STUDY, "--storage", sqlite_url, "--study-name", "typo")
    assert result.returncode == 2
    assert "study 'typo' not found" in result.stderr
    assert "budgetsearch create" in result.stderr
    assert [s.study_name for s in optuna.get_all_study_summaries(sqlite_url)] == ["other"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--seed", "-1"], "seed=-1 is invalid"),
        (["--devices", ""], "--devices is empty"),
        (["--study-name", " "], "--study-name ' ' is empty"),
        (["--decay-fraction", "0.5"], "--decay-fraction applies only to the wsd schedule"),
        (["--schedule", "cosine", "--decay-shape", "sqrt"], "--decay-shape applies only to the wsd schedule"),
        (["--mode", "resume", "--decay-fraction", "1.0"], "'1.0' is not between 0 and 1: give a fraction such as 0.2"),
        (["--mode", "resume", "--decay-fraction", "0"], "'0' is not between 0 and 1"),
        (["--schedule", "wsd", "--decay-fraction", "-0.5"], "'-0.5' is not between 0 and 1"),
    ],
)
def test_invalid_flags_create_nothing(args, message, sqlite_url, cli_environment):
    result = run_cli(cli_environment, "run", SYNTHETIC_STUDY, "--storage", sqlite_url, "--study-name", "x", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert not os.path.exists(sqlite_url[len("sqlite:///"):])


@pytest.mark.parametrize(
    "url,shown",
    [("notaurl", "'notaurl'"), ("postgresql://user:secret@host:port/db", "'postgresql://user:***@host:port/db'")],
)
def test_invalid_storage_url_is_named_masked(url, shown, cli_environment):
    result = run_cli(cli_environment, "status", "--storage", url, "--study-name", "x")
    assert result.returncode == 2
    assert f"{shown} (from --storage or $BUDGETSEARCH_STORAGE) is not a database URL" in result.stderr
    assert "secret" not in result.stderr


def test_empty_storage_variable_means_default(tmp_path, cli_environment):
    cli_environment["BUDGETSEARCH_STORAGE"] = ""
    result = subprocess.run(
        budgetsearch_command("status", "--study-name", "x"), env=cli_environment, capture_output=True, text=True,
        cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 2
    assert "storage sqlite:///budgetsearch.db not found" in result.stderr


def test_report_out_must_be_a_folder(sqlite_url, tmp_path, cli_environment):
    run_cli(cli_environment, "run", SYNTHETIC_STUDY, "--storage", sqlite_url, "--study-name", "r", "--total-budget", "20")
    afile = tmp_path / "afile"
    afile.write_text("")
    result = run_cli(cli_environment, "report", "--storage", sqlite_url, "--study-name", "r", "--out", str(afile))
    assert result.returncode == 2
    assert "cannot be used as a folder" in result.stderr


def test_decay_flag_with_leftover_option_names_it(tmp_path, sqlite_url, cli_environment):
    study = tmp_path / "polynomial_study.py"
    study.write_text(
        "import budgetsearch\n"
        "DEFAULTS = budgetsearch.StudyDefaults(direction='minimize', min_budget=1, max_budget=9, reduction_factor=3,\n"
        "    schedule='polynomial', schedule_options={'power': 3.0})\n"
        "def objective(trial):\n"
        "    return budgetsearch.trial_budget(trial)\n"
    )
    result = run_cli(
        cli_environment, "create", str(study), "--storage", sqlite_url, "--schedule", "wsd", "--decay-fraction", "0.3"
    )
    assert result.returncode == 2
    # The wsd schedule is selected, so the error is the study file's polynomial option.
    assert "unknown option 'power' for schedule 'wsd'" in result.stderr
    assert "applies only to the wsd schedule" not in result.stderr
