"""A study's progress and results, from Optuna's trials and budgetsearch's claims."""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any, Dict, List, Optional

import optuna
import sqlalchemy as sa
from optuna.trial import TrialState

from budgetsearch import _attrs
from budgetsearch._jobs import COMPLETE, FAILED, PRUNED, RELEASED, RUNNING
from budgetsearch._settings import StudySettings
from budgetsearch._tables import StudyDatabase, claims_table, current_settings_row, database_for, settings_marker


def load_settings(database: StudyDatabase, study: optuna.Study) -> Optional[StudySettings]:
    """Return the budgetsearch settings stored for ``study``, or None if it has none.

    Settings stored under the study's id by a deleted study whose id was reused count as none.
    """
    marker = settings_marker(study)

    def read(connection: sa.engine.Connection) -> Optional[str]:
        row = current_settings_row(connection, study, marker)
        return None if row is None else row.settings

    text = database.run(read)
    return None if text is None else StudySettings.from_json(text)


def _claim_rows(database: StudyDatabase, study_id: int) -> List[Any]:
    def read(connection: sa.engine.Connection) -> List[Any]:
        return list(connection.execute(sa.select(claims_table).where(claims_table.c.study_id == study_id)).all())

    return database.run(read)


def progress(study: optuna.Study) -> Dict[str, Any]:
    """Return a cheap progress snapshot from the claims table only."""
    database = database_for(study._storage)
    settings = load_settings(database, study)
    rows = _claim_rows(database, study._study_id)
    rungs = Counter(row.rung for row in rows if row.state in (COMPLETE, PRUNED))
    running = sum(1 for row in rows if row.state == RUNNING)
    results = [row for row in rows if row.state == COMPLETE]
    best = None
    if results and settings is not None:
        top = max(row.rung for row in results)
        values = [row.value for row in results if row.rung == top]
        best = (max(values) if settings.direction == "maximize" else min(values), top)
    return {
        "reserved": sum(row.reserved for row in rows),
        "total_budget": None if settings is None else settings.total_budget,
        "finished_per_rung": dict(sorted(rungs.items())),
        "running": running,
        "best": best,
    }


def summary(study: optuna.Study) -> Dict[str, Any]:
    """Return the machine-readable summary that ``budgetsearch status --json`` prints."""
    database = database_for(study._storage)
    settings = load_settings(database, study)
    if settings is None:
        raise ValueError(
            f"study {study.study_name!r} has no budgetsearch settings: it was not created by budgetsearch."
        )
    rows = _claim_rows(database, study._study_id)
    trials = study.get_trials(deepcopy=False)
    ladder = settings.ladder.budgets

    counts: Counter = Counter()
    for trial in trials:
        if trial.system_attrs.get(_attrs.NO_JOB):
            counts["no_job"] += 1
        else:
            counts[trial.state.name.lower()] += 1
    trial_counts = {state.name.lower(): counts.get(state.name.lower(), 0) for state in TrialState}
    trial_counts["no_job"] = counts.get("no_job", 0)

    by_number = {trial.number: trial for trial in trials}
    spent = 0
    for row in rows:
        if row.spent is not None:
            spent += row.spent
        elif row.state == RUNNING or row.state in RELEASED:
            trial = by_number.get(row.trial_number)
            if trial is not None and trial.intermediate_values:
                spent += max(0, min(max(trial.intermediate_values), row.budget) - row.start_step)

    rungs = []
    for rung, budget in enumerate(ladder):
        at_rung = [row for row in rows if row.rung == rung]
        above = {row.config for row in rows if row.rung == rung + 1}
        rungs.append(
            {
                "rung": rung,
                "budget": budget,
                "complete": sum(1 for row in at_rung if row.state == COMPLETE),
                "pruned": sum(1 for row in at_rung if row.state == PRUNED),
                "failed": sum(1 for row in at_rung if row.state == FAILED),
                "lost": sum(1 for row in at_rung if row.state in RELEASED),
                "running": sum(1 for row in at_rung if row.state == RUNNING),
                "promoted": len({row.config for row in at_rung} & above),
            }
        )

    brackets = []
    for bracket in sorted({row.bracket for row in rows}):
        in_bracket = [row for row in rows if row.bracket == bracket]
        brackets.append(
            {
                "bracket": bracket,
                "configurations": len({row.config for row in in_bracket}),
                "results_per_rung": {
                    str(rung): sum(1 for row in in_bracket if row.rung == rung and row.state == COMPLETE)
                    for rung in range(bracket, len(ladder))
                },
            }
        )
    resumed = sum(1 for trial in trials if _attrs.RESUMED_FROM_STEP in trial.user_attrs)
    now = time.time()
    stale = sum(
        1 for row in rows
        if row.state == RUNNING and row.heartbeat_at is not None and now - row.heartbeat_at > settings.grace_period
    )

    return {
        "study_name": study.study_name,
        "direction": settings.direction,
        "metric": settings.metric,
        "budget_unit": settings.budget_unit,
        "algorithm": settings.algorithm,
        "mode": settings.mode,
        "schedule": settings.schedule,
        "sampler": settings.sampler,
        "seed": settings.seed,
        "ladder": list(ladder),
        "total_budget": settings.total_budget,
        "n_trials": settings.n_trials,
        "budget_reserved": sum(row.reserved for row in rows),
        "budget_spent": spent,
        "trials": trial_counts,
        "rungs": rungs,
        "brackets": brackets,
        "resumed": resumed,
        # Running trials whose heartbeat is older than the grace period; the next worker
        # that requests a job declares them lost.
        "stale_running": stale,
        "duplicate_jobs": duplicate_jobs(trials),
        "best": best_result(trials, settings),
    }


def duplicate_jobs(trials: List[optuna.trial.FrozenTrial]) -> int:
    """Count the Optuna trials beyond the first that share a configuration, rung and attempt."""
    jobs = Counter(
        (t.user_attrs[_attrs.CONFIG], t.user_attrs[_attrs.RUNG], t.user_attrs[_attrs.ATTEMPT])
        for t in trials
        if _attrs.CONFIG in t.user_attrs
    )
    return sum(count - 1 for count in jobs.values() if count > 1)


def best_result(trials: List[optuna.trial.FrozenTrial], settings: StudySettings) -> Optional[Dict[str, Any]]:
    """Return the best complete result at the highest rung that has one; ties go to the lower trial number."""
    complete = [
        t for t in trials
        if t.state == TrialState.COMPLETE and _attrs.RUNG in t.user_attrs and math.isfinite(t.value)
    ]
    if not complete:
        return None
    top = max(t.user_attrs[_attrs.RUNG] for t in complete)
    sign = -1.0 if settings.direction == "maximize" else 1.0
    best = min((t for t in complete if t.user_attrs[_attrs.RUNG] == top), key=lambda t: (sign * t.value, t.number))
    return {
        "value": best.value,
        "trial_number": best.number,
        "rung": top,
        "budget": best.user_attrs[_attrs.BUDGET],
        "config": best.user_attrs[_attrs.CONFIG],
        "params": best.params,
    }
