"""budgetsearch report: the data behind each plot, and the files it writes."""

import json
import subprocess

import optuna

from budgetsearch._status import summary
from conftest import SYNTHETIC_STUDY, budgetsearch_command


def test_report_data_matches_study(tmp_path, cli_environment):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    run = subprocess.run(
        budgetsearch_command("run", SYNTHETIC_STUDY, "--storage", url, "--study-name", "r", "--total-budget", "200", "--seed", "4"),
        env=cli_environment, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    out = tmp_path / "report"
    result = subprocess.run(
        budgetsearch_command("report", "--storage", url, "--study-name", "r", "--out", str(out)),
        env=cli_environment, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for name in ("rung_scatter.png", "learning_curves.png", "best_vs_spent.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    data = json.loads((out / "report.json").read_text())

    study = optuna.load_study(study_name="r", storage=url)
    info = summary(study)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    complete = [t for t in trials.values() if t.state == optuna.trial.TrialState.COMPLETE]
    # One scatter point per complete trial, at its rung's budget and with its value.
    assert len(data["rung_results"]) == len(complete)
    for point in data["rung_results"]:
        trial = trials[point["trial"]]
        assert point["value"] == trial.value
        assert point["budget"] == trial.user_attrs["budgetsearch:budget"]
    # Every promotion joins two results of one configuration on neighbouring rungs.
    values = {(p["config"], p["rung"]): p["value"] for p in data["rung_results"]}
    assert data["promotions"]
    for promotion in data["promotions"]:
        assert values[(promotion["config"], promotion["from_rung"])] == promotion["from_value"]
        assert values[(promotion["config"], promotion["from_rung"] + 1)] == promotion["to_value"]
    # Each learning curve ends at its trial's budget.
    assert len(data["curves"]) == len(complete)
    for curve in data["curves"]:
        assert curve["steps"][-1] == curve["budget"]
    # Budget spent only grows, ends at the study's total, and the last best is the study's best.
    spent = [p["spent"] for p in data["best_vs_spent"]]
    assert spent == sorted(spent)
    assert spent[-1] == info["budget_spent"]
    assert data["best_vs_spent"][-1]["best"] == info["best"]["value"]
    markdown = (out / "summary.md").read_text()
    assert f"Trial {info['best']['trial_number']} " in markdown
    for name in info["best"]["params"]:
        assert f"| {name} |" in markdown


def test_report_on_missing_study(tmp_path, cli_environment):
    url = f"sqlite:///{tmp_path / 'none.db'}"
    optuna.create_study(study_name="other", storage=url)
    result = subprocess.run(
        budgetsearch_command("report", "--storage", url, "--study-name", "nope", "--out", str(tmp_path / "o")),
        env=cli_environment, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "'nope' not found" in result.stderr
    plain = subprocess.run(
        budgetsearch_command("report", "--storage", url, "--study-name", "other", "--out", str(tmp_path / "o")),
        env=cli_environment, capture_output=True, text=True, timeout=120,
    )
    assert plain.returncode == 2
    assert "not created by budgetsearch" in plain.stderr
