"""Rank correlation of cheap measurements with the maximum-budget value, for ``budgetsearch compare --rank-correlation K``.

K configurations are drawn at random from the study file's search space, and each is
trained twice. The first run has the maximum budget and its schedule. Its reported
value at the first rung's budget is the truncated measurement that Optuna's pruners
see. The second run has the first rung's budget and a schedule fitted to it, which is
what budgetsearch measures. The Spearman correlation of each cheap measurement with the
maximum-budget value is computed over all K configurations and over the better half
by maximum-budget value, where tuning decides, each with a bootstrap interval.
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import optuna

from budgetsearch._compare import FixedBudgetSampler, discard_partial_run, write_json

BOOTSTRAP_SAMPLES = 2000


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Return Spearman's rank correlation of two equally long sequences (ties get average ranks)."""
    from scipy.stats import spearmanr

    if len(xs) < 3:
        return math.nan
    with warnings.catch_warnings():
        # A resample whose values are all equal has no correlation: NaN, which callers skip.
        warnings.simplefilter("ignore")
        return float(spearmanr(xs, ys).statistic)


def bootstrap_interval(xs: Sequence[float], ys: Sequence[float], seed: int = 0) -> Tuple[float, float]:
    """Return the 2.5 and 97.5 percentiles of Spearman's correlation over pairs resampled with replacement."""
    if len(xs) < 3:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    x, y = np.asarray(xs), np.asarray(ys)
    values = []
    for _ in range(BOOTSTRAP_SAMPLES):
        pick = rng.integers(0, len(x), len(x))
        value = spearman(x[pick], y[pick])
        if math.isfinite(value):
            values.append(value)
    if not values:
        return math.nan, math.nan
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


# The measurement stops when this many configurations in a row fail with one error
# before their first report, as a worker does.
REPEATED_ERRORS = 3


class MeasurementError(RuntimeError):
    """A rank-correlation measurement that cannot go on, such as an objective that always raises."""


def measure(study_file: Any, count: int, out: str, seed: int = 0) -> List[Dict[str, Any]]:
    """Train ``count`` random configurations at both budgets; return one record per configuration."""
    from budgetsearch._sampler import BudgetSampler

    defaults = study_file.defaults
    settings = defaults.resolve(algorithm="fixed", mode="restart", seed=seed)
    storage = f"sqlite:///{os.path.join(out, 'runs', 'rank-correlation.db')}"
    names = {"full": "rank-full-budget", "small": "rank-first-rung"}
    for name in names.values():
        study = optuna.create_study(study_name=name, storage=storage, direction=settings.direction)
        BudgetSampler(settings=settings).settings_for(study)
    full = optuna.load_study(
        study_name=names["full"], storage=storage, pruner=optuna.pruners.NopPruner(),
        sampler=FixedBudgetSampler(optuna.samplers.RandomSampler(seed=seed), settings),
    )
    small = optuna.load_study(
        study_name=names["small"], storage=storage, pruner=optuna.pruners.NopPruner(),
        sampler=FixedBudgetSampler(optuna.samplers.RandomSampler(seed=seed), settings, budget=settings.min_budget),
    )
    raised: Dict[int, str] = {}

    def objective(trial: optuna.trial.Trial) -> Any:
        try:
            return study_file.objective(trial)
        except optuna.TrialPruned:
            raise
        except Exception as error:
            raised[trial._trial_id] = f"{type(error).__name__}: {error}"
            raise

    records = []
    errors: List[str] = []
    for index in range(count):
        full.optimize(objective, n_trials=1, catch=(Exception,))
        trial = full.get_trials(deepcopy=False)[-1]
        small.enqueue_trial(trial.params)
        small.optimize(objective, n_trials=1, catch=(Exception,))
        cheap = small.get_trials(deepcopy=False)[-1]
        # A configuration that raised before its first report points to a broken set-up,
        # not to a diverged run, so the same error three times in a row stops the measurement.
        error = None if trial.intermediate_values else raised.get(trial._trial_id)
        errors = errors + [error] if error is not None else []
        if len(errors) >= REPEATED_ERRORS and len(set(errors[-REPEATED_ERRORS:])) == 1:
            raise MeasurementError(
                f"the rank correlation stopped: its last {REPEATED_ERRORS} configurations failed with the same "
                f"error before their first report: {errors[-1]}"
            )
        records.append(
            {
                "config": index,
                "params": trial.params,
                "full_budget": _value(trial),
                "truncated": trial.intermediate_values.get(settings.min_budget, math.nan),
                "first_rung_fitted": _value(cheap),
            }
        )
    return records


def measure_or_load(study_file: Any, count: int, out: str, *, resume: bool) -> List[Dict[str, Any]]:
    """Return the records of ``count`` configurations, measured now or, with ``resume``, saved by an earlier run.

    Finished measurements are saved to ``runs/rank-correlation.json``. A saved set of
    another size, or an interrupted measurement, is measured again from the start.
    """
    runs = os.path.join(out, "runs")
    saved_path = os.path.join(runs, "rank-correlation.json")
    if resume and os.path.exists(saved_path):
        with open(saved_path) as file:
            saved = json.load(file)
        if saved["count"] == count:
            return saved["records"]
    discard_partial_run(out, "rank-correlation")
    records = measure(study_file, count, out)
    write_json(saved_path, {"count": count, "records": records})
    return records


def _value(trial: optuna.trial.FrozenTrial) -> float:
    if trial.state == optuna.trial.TrialState.COMPLETE and trial.value is not None:
        return float(trial.value)
    return math.nan


def summarize(records: List[Dict[str, Any]], direction: str) -> Dict[str, Dict[str, Tuple[float, float, float, int]]]:
    """Return {measurement: {"all" | "better half": (rho, low, high, pairs)}} for both cheap measurements."""
    finite = [r for r in records if all(math.isfinite(r[key]) for key in ("full_budget", "truncated", "first_rung_fitted"))]
    sign = -1.0 if direction == "maximize" else 1.0
    ranked = sorted(finite, key=lambda r: sign * r["full_budget"])
    # The better half takes every configuration tied with its last member, so that the
    # order of tied configurations does not decide which of them count.
    better: List[Dict[str, Any]] = []
    if len(ranked) >= 2:
        cutoff = sign * ranked[len(ranked) // 2 - 1]["full_budget"]
        better = [r for r in ranked if sign * r["full_budget"] <= cutoff]
    groups = {"all": finite, "better half": better}
    table: Dict[str, Dict[str, Tuple[float, float, float, int]]] = {}
    for measurement in ("truncated", "first_rung_fitted"):
        table[measurement] = {}
        for group, members in groups.items():
            xs = [r[measurement] for r in members]
            ys = [r["full_budget"] for r in members]
            low, high = bootstrap_interval(xs, ys)
            table[measurement][group] = (spearman(xs, ys), low, high, len(members))
    return table


def write(out: str, records: List[Dict[str, Any]], direction: str, metric: str, settings_text: str) -> None:
    """Write rank_correlation.csv, rank_correlation.md and rank_correlation.png into ``out``."""
    with open(os.path.join(out, "rank_correlation.csv"), "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["config", "full_budget", "truncated", "first_rung_fitted", "params"])
        for r in records:
            writer.writerow([r["config"], r["full_budget"], r["truncated"], r["first_rung_fitted"], r["params"]])
    table = summarize(records, direction)
    labels = {
        "truncated": "truncated: the maximum-budget run's value at the first rung's budget",
        "first_rung_fitted": "fitted: a run of the first rung's budget on a schedule fitted to it",
    }
    diverged = sum(1 for r in records if not all(math.isfinite(r[k]) for k in ("full_budget", "truncated", "first_rung_fitted")))
    lines = [
        "# Rank correlation of cheap measurements with the maximum-budget value",
        "",
        f"{len(records)} random configurations; {settings_text}. Spearman's correlation with the "
        f"maximum-budget {metric}, with a 95% bootstrap interval ({BOOTSTRAP_SAMPLES} resamples). "
        f"{diverged} configuration(s) with a non-finite value are left out. The better half holds the "
        "half with the best maximum-budget values and every configuration tied with the last of them.",
        "",
        "| measurement | all configurations | better half by maximum-budget value |",
        "|---|---|---|",
    ]
    for measurement, groups in table.items():
        cells = [f"{rho:.3f} [{low:.3f}, {high:.3f}] (n={n})" for rho, low, high, n in groups.values()]
        lines.append(f"| {labels[measurement]} | {cells[0]} | {cells[1]} |")
    with open(os.path.join(out, "rank_correlation.md"), "w") as file:
        file.write("\n".join(lines) + "\n")
    _plot(out, records, table, metric)


def _plot(out: str, records: List[Dict[str, Any]], table: Dict[str, Any], metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharey=True)
    for axis, measurement, title in zip(axes, ("truncated", "first_rung_fitted"), ("truncated", "fitted to the first rung")):
        pairs = [(r[measurement], r["full_budget"]) for r in records if math.isfinite(r[measurement]) and math.isfinite(r["full_budget"])]
        if pairs:
            axis.scatter(*zip(*pairs), s=14)
        rho = table[measurement]["all"][0]
        axis.set_title(f"{title}: Spearman {rho:.2f}")
        axis.set_xlabel(f"{metric} at the first rung's budget")
    axes[0].set_ylabel(f"{metric} at the maximum budget")
    figure.tight_layout()
    figure.savefig(os.path.join(out, "rank_correlation.png"), dpi=120)
    plt.close(figure)


