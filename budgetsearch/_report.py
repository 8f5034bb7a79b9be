"""``budgetsearch report``: plots and a Markdown summary of one study.

The data behind every plot is computed first, by :func:`report_data`, and also
written to ``report.json``, so that it can be checked and reused.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List

import optuna

from budgetsearch._jobs import COMPLETE
from budgetsearch._status import _claim_rows, load_settings, summary
from budgetsearch._tables import database_for


def report_data(study: optuna.Study) -> Dict[str, Any]:
    """Return the data of the report's plots and summary.

    The keys:

    * ``summary``: as ``budgetsearch status --json``.
    * ``rung_results``: one entry per complete claim, with its configuration, rung,
      budget and value.
    * ``promotions``: each configuration and the rung it moved up from, with its
      values on both rungs.
    * ``curves``: each trial's reported steps and values, with its budget.
    * ``best_vs_spent``: after each finished claim, in the order they finished, the
      budget spent so far and the best result at the highest rung reached so far.
    """
    database = database_for(study._storage)
    settings = load_settings(database, study)
    if settings is None:
        raise ValueError(f"study {study.study_name!r} has no budgetsearch settings: it was not created by budgetsearch.")
    rows = _claim_rows(database, study._study_id)
    ladder = settings.ladder.budgets
    results = [
        {"config": row.config, "rung": row.rung, "budget": ladder[row.rung], "value": row.value, "trial": row.trial_number}
        for row in rows
        if row.state == COMPLETE and row.value is not None and math.isfinite(row.value)
    ]
    value_of = {(r["config"], r["rung"]): r["value"] for r in results}
    promotions = [
        {"config": config, "from_rung": rung, "from_value": value, "to_value": value_of[(config, rung + 1)]}
        for (config, rung), value in sorted(value_of.items())
        if (config, rung + 1) in value_of
    ]

    curves = []
    for trial in study.get_trials(deepcopy=False):
        budget = trial.user_attrs.get("budgetsearch:budget")
        if budget is None or not trial.intermediate_values:
            continue
        steps = sorted(trial.intermediate_values)
        curves.append(
            {
                "trial": trial.number,
                "budget": budget,
                "state": trial.state.name.lower(),
                "steps": steps,
                "values": [trial.intermediate_values[step] for step in steps],
            }
        )

    sign = 1.0 if settings.direction == "maximize" else -1.0
    spent = 0
    best_rung, best_value = -1, None
    best_vs_spent = []
    for row in sorted((r for r in rows if r.finished_sequence is not None), key=lambda r: r.finished_sequence):
        spent += row.spent or 0
        if row.state == COMPLETE and row.value is not None and math.isfinite(row.value):
            if row.rung > best_rung or (row.rung == best_rung and sign * row.value > sign * best_value):
                best_rung, best_value = row.rung, row.value
        best_vs_spent.append({"spent": spent, "best": best_value, "rung": best_rung if best_value is not None else None})

    return {
        "summary": summary(study),
        "rung_results": results,
        "promotions": promotions,
        "curves": curves,
        "best_vs_spent": best_vs_spent,
    }


def write_report(study: optuna.Study, out: str) -> List[str]:
    """Write the report's plots, report.json and summary.md into ``out``; return the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = report_data(study)
    info = data["summary"]
    metric = info["metric"]
    unit = info["budget_unit"]
    os.makedirs(out, exist_ok=True)

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for promotion in data["promotions"]:
        rung = promotion["from_rung"]
        axes.plot(
            [info["ladder"][rung], info["ladder"][rung + 1]], [promotion["from_value"], promotion["to_value"]],
            color="tab:blue", alpha=0.4, linewidth=1,
        )
    axes.scatter([r["budget"] for r in data["rung_results"]], [r["value"] for r in data["rung_results"]], s=12, color="tab:blue")
    axes.set_xscale("log")
    axes.set_xticks(info["ladder"], [str(budget) for budget in info["ladder"]])
    axes.minorticks_off()
    axes.set_xlabel(f"rung budget ({unit})")
    axes.set_ylabel(metric)
    axes.set_title("Results per rung; lines join a configuration's promotions")
    _save(figure, out, "rung_scatter.png")

    figure, axes = plt.subplots(figsize=(7, 4.5))
    colours = {budget: plt.cm.viridis(index / max(1, len(info["ladder"]) - 1)) for index, budget in enumerate(info["ladder"])}
    for curve in data["curves"]:
        # A trial with one report shows as a point.
        axes.plot(
            curve["steps"], curve["values"], color=colours.get(curve["budget"], "grey"), alpha=0.5, linewidth=1,
            marker="." if len(curve["steps"]) == 1 else None,
        )
    for budget, colour in colours.items():
        axes.plot([], [], color=colour, label=f"budget {budget}")
    axes.set_xlabel(f"step ({unit})")
    axes.set_ylabel(f"reported {metric}")
    axes.legend()
    axes.set_title("Learning curves by trial budget")
    _save(figure, out, "learning_curves.png")

    figure, axes = plt.subplots(figsize=(7, 4.5))
    points = [(p["spent"], p["best"]) for p in data["best_vs_spent"] if p["best"] is not None]
    if points:
        axes.plot(*zip(*points), drawstyle="steps-post")
    axes.set_xlabel(f"budget spent ({unit})")
    axes.set_ylabel(f"best {metric} at the highest rung reached")
    axes.set_title("Best result against budget spent")
    _save(figure, out, "best_vs_spent.png")

    with open(os.path.join(out, "report.json"), "w") as file:
        json.dump(data, file, indent=1, sort_keys=True)
    with open(os.path.join(out, "summary.md"), "w") as file:
        file.write(_markdown(info))
    return ["rung_scatter.png", "learning_curves.png", "best_vs_spent.png", "report.json", "summary.md"]


def _save(figure: Any, out: str, name: str) -> None:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(os.path.join(out, name), dpi=120)
    plt.close(figure)


def _markdown(info: Dict[str, Any]) -> str:
    lines = [
        f"# Study {info['study_name']}",
        "",
        f"{info['direction'].capitalize()} {info['metric']}; {info['algorithm']} in {info['mode']} mode, "
        f"{info['schedule']} schedule, budgets {info['ladder']} {info['budget_unit']}.",
        f"Budget reserved {info['budget_reserved']} of {info['total_budget']}; spent {info['budget_spent']}.",
        "",
        "| rung | budget | complete | pruned | failed | lost | promoted |",
        "|---|---|---|---|---|---|---|",
    ]
    for rung in info["rungs"]:
        lines.append(
            f"| {rung['rung']} | {rung['budget']} | {rung['complete']} | {rung['pruned']} | {rung['failed']} "
            f"| {rung['lost']} | {rung['promoted']} |"
        )
    best = info["best"]
    lines.append("")
    if best is None:
        lines.append("No complete result yet.")
    else:
        lines += [
            f"## Best configuration: {info['metric']} {best['value']:.6g}",
            "",
            f"Trial {best['trial_number']} (configuration {best['config']}) at rung {best['rung']}, budget {best['budget']} {info['budget_unit']}.",
            "",
            "| parameter | value |",
            "|---|---|",
        ]
        lines += [f"| {name} | {value!r} |" for name, value in sorted(best["params"].items())]
    return "\n".join(lines) + "\n"


