"""budgetsearch compare on a synthetic study: equal compute, incumbents and the files it writes."""

import csv
import json
import os
import signal
import subprocess
import time

import pytest

from budgetsearch._compare import METHODS, RunResult, anytime_grid, first_reach, parse_methods, parse_seeds
from conftest import HERE, SYNTHETIC_STUDY, budgetsearch_command

STUDY = os.path.join(HERE, "studies", "compare_synthetic.py")


def test_compare_writes_results_at_equal_compute(tmp_path, cli_environment):
    out = tmp_path / "cmp"
    result = subprocess.run(
        budgetsearch_command(
            "compare", STUDY, "--methods", "asha,optuna-hyperband,random-full", "--seeds", "1,asha=2,optuna-hyperband=2",
            "--total-budget", "270", "--workers", "2", "--rank-correlation", "8", "--out", str(out),
        ),
        env=cli_environment, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    with open(out / "results.csv") as file:
        rows = list(csv.DictReader(file))
    assert [(row["method"], row["seed"]) for row in rows] == [
        ("asha", "0"), ("asha", "1"), ("optuna-hyperband", "0"), ("optuna-hyperband", "1"),
        ("random-full", "0"),
    ]
    for row in rows:
        compute = float(row["compute_used"])
        # Ours reserves within the budget. The others stop starting trials at the budget,
        # so each of their two workers may finish one trial of at most 27 units beyond it.
        if row["method"] == "asha":
            assert compute <= 270
        else:
            assert 270 <= compute <= 270 + 2 * 27
        assert row["retrains"] == "3"
        assert row["diverged_retrains"] == "0"
        assert float(row["best_validation_value"]) >= 1.0 / 27**0.5
        # The retrained incumbent's test value is its loss at 27 plus the seeds' offsets.
        assert float(row["incumbent_median_test_value"]) >= float(row["best_validation_value"])
        assert float(row["examples_processed"]) >= 8 * min(compute, 270)
    markdown = (out / "results.md").read_text()
    assert "| asha | 2 |" in markdown
    assert "| optuna-hyperband | 2 |" in markdown
    assert "| random-full | 1 |" in markdown
    assert (out / "anytime.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # In this study a configuration's value at any step ranks it as at the end, so both
    # cheap measurements rank the 8 configurations perfectly.
    with open(out / "rank_correlation.csv") as file:
        records = list(csv.DictReader(file))
    assert len(records) == 8
    for record in records:
        assert float(record["truncated"]) == float(record["first_rung_fitted"]) > float(record["full_budget"])
    table = (out / "rank_correlation.md").read_text()
    assert table.count("1.000 [1.000, 1.000] (n=8)") == 2
    assert table.count("(n=4)") == 2
    assert (out / "rank_correlation.png").exists()


def test_compare_rejects_bad_input(tmp_path, cli_environment):
    def run(*args):
        return subprocess.run(
            budgetsearch_command("compare", STUDY, "--out", str(tmp_path / "x"), *args),
            env=cli_environment, capture_output=True, text=True, timeout=120,
        )

    unknown = run("--methods", "asha,optuna-bohb")
    assert unknown.returncode == 2
    assert "unknown optuna-bohb" in unknown.stderr
    small = run("--total-budget", "10")
    assert small.returncode == 2
    assert "below the study's maximum budget 27" in small.stderr
    seeds = run("--seeds", "2,optuna-sha=3")
    assert seeds.returncode == 2
    assert "'optuna-sha' is not one of the compared methods" in seeds.stderr


def test_compare_resume_keeps_finished_runs(tmp_path, cli_environment):
    out = tmp_path / "cmp"

    def run(*args):
        return subprocess.run(
            budgetsearch_command(
                "compare", STUDY, "--methods", "asha,random-full", "--total-budget", "54", "--workers", "1",
                "--retrain-seeds", "1", "--rank-correlation", "3", "--out", str(out), *args,
            ),
            env=cli_environment, capture_output=True, text=True, timeout=600,
        )

    first = run()
    assert first.returncode == 0, first.stderr + first.stdout
    with open(out / "results.csv") as file:
        first_rows = list(csv.DictReader(file))
    first_ranks = (out / "rank_correlation.csv").read_text()
    saved_ranks = out / "runs" / "rank-correlation.json"
    saved_ranks_time = saved_ranks.stat().st_mtime_ns

    # Without --resume, a folder with runs is rejected.
    again = run()
    assert again.returncode == 2
    assert "pass --resume" in again.stderr

    # An interrupted search leaves its storage but no saved result, and --resume runs it
    # again. A run interrupted while retraining is only retrained.
    (out / "runs" / "random-full-seed0.json").unlink()
    saved_asha = json.loads((out / "runs" / "asha-seed0.json").read_text())
    saved_asha["result"].update(retrained=False, test_values=[])
    (out / "runs" / "asha-seed0.json").write_text(json.dumps(saved_asha))
    resumed = run("--resume")
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert "asha-seed0: kept the finished search, retraining its incumbent" in resumed.stdout
    assert "random-full, seed 0 ..." in resumed.stdout
    with open(out / "results.csv") as file:
        resumed_rows = list(csv.DictReader(file))
    assert [row["method"] for row in resumed_rows] == ["asha", "random-full"]
    assert resumed_rows[0] == first_rows[0]
    assert resumed_rows[1]["wall_seconds"] != ""
    assert (out / "rank_correlation.csv").read_text() == first_ranks
    # The rank correlation's configurations were not trained again.
    assert saved_ranks.stat().st_mtime_ns == saved_ranks_time

    # Runs made under another total budget are not mixed with new ones: the check
    # comes before any run, so the deleted run is not made again at the new budget.
    (out / "runs" / "asha-seed0.json").unlink()
    other = subprocess.run(
        budgetsearch_command(
            "compare", STUDY, "--methods", "asha", "--total-budget", "81", "--workers", "1", "--retrain-seeds", "1",
            "--out", str(out), "--resume",
        ),
        env=cli_environment, capture_output=True, text=True, timeout=600,
    )
    assert other.returncode == 2
    assert "--total-budget 54 (now 81)" in other.stderr
    assert not (out / "runs" / "asha-seed0.json").exists()


def session_processes(session):
    """Return the ids of the live processes in the session ``session``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the command name: state, parent, process group, session.
        if int(fields[3]) == session and fields[0] != "Z":
            found.append(int(name))
    return found


@pytest.mark.parametrize("method", ["asha", "random-full"])
def test_compare_sigterm_stops_its_processes(tmp_path, cli_environment, method):
    out = tmp_path / "cmp"
    cli_environment["SYNTHETIC_SECONDS_PER_UNIT"] = "0.2"
    compare = subprocess.Popen(
        budgetsearch_command(
            "compare", SYNTHETIC_STUDY, "--methods", method, "--total-budget", "2700", "--workers", "2", "--out", str(out),
        ),
        env=cli_environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        storage = out / "runs" / f"{method}-seed0.db"
        deadline = time.time() + 120
        while time.time() < deadline and not (storage.exists() and len(session_processes(compare.pid)) >= 3):
            time.sleep(0.5)
        assert len(session_processes(compare.pid)) >= 3, "the run's worker processes did not start"
        compare.send_signal(signal.SIGTERM)
        _, stderr = compare.communicate(timeout=120)
    finally:
        if compare.poll() is None:
            os.killpg(compare.pid, signal.SIGKILL)
    assert compare.returncode == 143, stderr
    assert "--resume" in stderr
    deadline = time.time() + 10
    while time.time() < deadline and session_processes(compare.pid):
        time.sleep(0.2)
    assert session_processes(compare.pid) == []


def test_parse_methods_keeps_order_and_drops_repeats():
    assert [m.name for m in parse_methods("optuna-sha, asha,optuna-sha")] == ["optuna-sha", "asha"]
    with pytest.raises(ValueError, match="choose from"):
        parse_methods(" , ")


def test_parse_seeds_default_and_overrides():
    methods = [METHODS["asha"], METHODS["optuna-sha"], METHODS["tpe-full"]]
    assert parse_seeds("3", methods) == {"asha": 3, "optuna-sha": 3, "tpe-full": 3}
    assert parse_seeds("3, asha=5,optuna-sha=5", methods) == {"asha": 5, "optuna-sha": 5, "tpe-full": 3}
    assert parse_seeds("asha=2", methods) == {"asha": 2, "optuna-sha": 1, "tpe-full": 1}
    for text in ("0", "asha=0", "asha=two", "", "3,random-full=2", "3,4", "asha=2,asha=5", "=2"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(text, methods)


def test_anytime_curve_on_grid_and_first_reach():
    anytime = [(3.0, None), (6.0, 0.9), (33.0, 0.5), (60.0, 0.5), (87.0, 0.4)]
    assert anytime_grid(anytime, [1, 3, 6, 30, 33, 100]) == [None, None, 0.9, 0.9, 0.5, 0.4]
    assert first_reach(anytime, 0.5, "minimize") == 33.0
    assert first_reach(anytime, 0.3, "minimize") is None
    assert first_reach([(5.0, 0.7), (9.0, 0.8)], 0.75, "maximize") == 9.0
    assert RunResult("asha", 0, "sqlite://", 1.0).anytime == []


def test_rank_summary_over_all_and_better_half():
    from budgetsearch._rank import summarize

    # The study maximizes; the configuration with a NaN result is left out.
    records = [
        {"full_budget": full, "truncated": truncated, "first_rung_fitted": fitted}
        for full, truncated, fitted in [
            (0.1, 0.4, 0.1), (0.2, 0.3, 0.2), (0.3, 0.2, 0.3), (0.4, 0.1, 0.4),
            (0.5, 0.6, 0.5), (0.6, 0.5, 0.6), (float("nan"), 0.9, 0.9),
        ]
    ]
    table = summarize(records, "maximize")
    rho, low, high, pairs = table["first_rung_fitted"]["all"]
    assert (rho, pairs) == (1.0, 6)
    assert low <= rho <= high
    # Truncated values reverse the order within the first four: the squared rank
    # differences sum to 22, so rho over all six is 1 - 6 * 22 / (6 * 35).
    assert abs(table["truncated"]["all"][0] - (1 - 6 * 22 / 210)) < 1e-12
    # The better half by full-budget value (0.6, 0.5, 0.4) is ranked 0.5, 0.6, 0.1 by truncation.
    assert table["truncated"]["better half"][3] == 3
    assert abs(table["truncated"]["better half"][0] - 0.5) < 1e-12


def test_rank_better_half_keeps_ties():
    from budgetsearch._rank import summarize

    # The third and fourth best tie, so the better half of six contains four configurations,
    # whichever order the tied two come in.
    rows = [(0.1, 0.1, 0.1), (0.2, 0.2, 0.2), (0.5, 0.3, 0.4), (0.5, 0.4, 0.3), (0.7, 0.5, 0.5), (0.9, 0.6, 0.6)]
    tables = []
    for order in (rows, rows[::-1]):
        records = [{"full_budget": full, "truncated": truncated, "first_rung_fitted": fitted} for full, truncated, fitted in order]
        tables.append(summarize(records, "maximize"))
    for table in tables:
        assert table["truncated"]["better half"][3] == 4
        assert table["first_rung_fitted"]["better half"][3] == 4
    assert tables[0]["truncated"]["better half"][0] == tables[1]["truncated"]["better half"][0]


def test_progress_line_without_and_with_result():
    from budgetsearch.cli import _run_line

    empty = RunResult(method="asha", seed=0, storage="sqlite://", wall_seconds=6.2, compute=200)
    assert _run_line(empty) == "no trial reached the maximum budget within the total budget, compute 200, 6 s"
    found = RunResult(
        method="asha", seed=0, storage="sqlite://", wall_seconds=86, best_value=0.98375, compute=67250,
        test_values=[0.967, float("nan")],
    )
    assert _run_line(found) == "best 0.9838, compute 67250, test values [0.967, nan], 86 s"
    untested = RunResult(method="asha", seed=0, storage="sqlite://", wall_seconds=86, best_value=0.5, compute=100)
    assert _run_line(untested) == "best 0.5, compute 100, no test values (the study file has no test_value), 86 s"


def test_rank_correlation_stops_on_repeated_error(tmp_path):
    from budgetsearch._rank import MeasurementError, measure
    from budgetsearch._studyfile import load_study_file

    study_file = load_study_file(os.path.join(HERE, "studies", "missing_data.py"))
    (tmp_path / "runs").mkdir()
    with pytest.raises(MeasurementError, match="last 3 configurations failed with the same error before their first report: "
                       "FileNotFoundError: data not found in /nonexistent/data"):
        measure(study_file, 10, str(tmp_path))
