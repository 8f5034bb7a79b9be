"""``budgetsearch compare``: budgetsearch against Optuna's pruners on one study file at equal compute.

Every method runs the same study file with the same search space, base sampler family
and seeds. Each run has its own SQLite storage in the output folder, and it starts no
new trial once the compute its trials used reaches the total budget B. Compute is counted in the
study's budget unit: a complete trial counts its budget, a stopped one the units it
trained (its last reported step), and in resume mode only the units after the step it
resumed from. A method's incumbent is its best result at the maximum budget among the
trials that finished within compute B. It is trained again at the maximum budget with
the method's own schedule on fresh seeds, and the study file's ``test_value`` evaluates
it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import optuna
import sqlalchemy as sa
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from budgetsearch import _attrs
from budgetsearch._sampler import _add_user_attrs
from budgetsearch._settings import StudySettings
from budgetsearch._tables import claims_table, database_for

# Seeds of the incumbent's retraining, far from the seeds the methods use.
RETRAIN_SEED_BASE = 10_000


@dataclass(frozen=True)
class Method:
    """One way to tune: budgetsearch's pair, an Optuna pruner over one schedule, or no early stopping."""

    name: str
    kind: str  # "ours", "pruner" or "full"
    algorithm: str = "asha"
    mode: str = "restart"
    pruner: Optional[str] = None
    sampler: Optional[str] = None  # None: the study's own sampler


METHODS: Dict[str, Method] = {
    method.name: method
    for method in (
        Method("asha", "ours", algorithm="asha"),
        Method("asha-resume", "ours", algorithm="asha", mode="resume"),
        Method("hyperband", "ours", algorithm="hyperband"),
        Method("hyperband-resume", "ours", algorithm="hyperband", mode="resume"),
        Method("optuna-hyperband", "pruner", pruner="hyperband"),
        Method("optuna-sha", "pruner", pruner="sha"),
        Method("optuna-median", "pruner", pruner="median"),
        Method("tpe-full", "full", sampler="tpe"),
        Method("random-full", "full", sampler="random"),
    )
}


def parse_methods(text: str) -> List[Method]:
    """Return the methods named in a comma-separated list, or raise ValueError naming a bad one."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METHODS]
    if unknown or not names:
        raise ValueError(
            f"--methods {text!r} is invalid{': unknown ' + ', '.join(unknown) if unknown else ''}; "
            f"choose from {', '.join(METHODS)}."
        )
    return [METHODS[name] for name in dict.fromkeys(names)]


def parse_seeds(text: str, methods: Sequence[Method]) -> Dict[str, int]:
    """Return the number of seeds of each method from ``--seeds``, or raise ValueError naming the bad part.

    ``text`` is a number for every method, optionally followed by ``METHOD=N`` entries
    that override it, for example ``3,asha=5,optuna-hyperband=5``. A list of only
    overrides gives the other methods one seed.
    """
    default: Optional[int] = None
    counts: Dict[str, int] = {}
    named = {method.name for method in methods}
    for part in (part.strip() for part in text.split(",")):
        name, equals, number = part.rpartition("=")
        name = name.strip()
        if not part or (equals and not name):
            raise ValueError(
                f"--seeds {text!r} is invalid: it has an empty entry or a method name missing before '='; "
                "give N or METHOD=N entries, for example 3,asha=5."
            )
        if equals and name not in named:
            raise ValueError(
                f"--seeds {text!r} is invalid: {name!r} is not one of the compared methods "
                f"({', '.join(method.name for method in methods)}); add it to --methods or remove it from --seeds."
            )
        if (equals and name in counts) or (not equals and default is not None):
            raise ValueError(
                f"--seeds {text!r} is invalid: {part!r} repeats an earlier entry; give N once and each METHOD=N once."
            )
        try:
            count = int(number)
        except ValueError:
            count = 0
        if count <= 0:
            raise ValueError(
                f"--seeds {text!r} is invalid: {part!r} is not a positive number of seeds; "
                "give N or METHOD=N entries, for example 3,asha=5."
            )
        if equals:
            counts[name] = count
        else:
            default = count
    return {method.name: counts.get(method.name, default or 1) for method in methods}


class FixedBudgetSampler(BaseSampler):
    """A base sampler whose trials all get one budget of the ladder and the schedule fitted to it.

    Each trial gets budgetsearch's user attributes for that rung (by default the top
    one), so a study file's objective reads its budget and schedule with
    ``trial_budget`` and ``schedule_for`` as it does under budgetsearch's own pair.
    Optuna's pruners then decide when to stop it.
    """

    def __init__(self, base: BaseSampler, settings: StudySettings, budget: Optional[int] = None) -> None:  # noqa: D107
        self._base = base
        self._settings = settings
        self._budget = settings.max_budget if budget is None else budget
        self._rung = list(settings.ladder.budgets).index(self._budget)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        settings = self._settings
        attrs = {
            _attrs.BUDGET: self._budget,
            _attrs.RUNG: self._rung,
            _attrs.BRACKET: self._rung,
            _attrs.CONFIG: trial.number,
            _attrs.ATTEMPT: 0,
            _attrs.SCHEDULE: settings.schedule_spec(),
        }
        _add_user_attrs(study._storage, trial._trial_id, attrs)
        trial.user_attrs.update(attrs)
        self._base.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> Dict[str, Any]:
        return self._base.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: Dict[str, Any]) -> Dict[str, Any]:
        return self._base.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, name: str, distribution: Any) -> Any:
        return self._base.sample_independent(study, trial, name, distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        self._base.after_trial(study, trial, state, values)


def method_settings(defaults: Any, method: Method, total_budget: int, seed: int, schedule: Optional[str], artifact_dir: str) -> StudySettings:
    """Return the study settings of one method's run."""
    overrides: Dict[str, Any] = {"total_budget": total_budget, "seed": seed}
    if method.sampler is not None:
        overrides["sampler"] = method.sampler
    if method.kind == "ours":
        overrides.update(algorithm=method.algorithm, mode=method.mode)
        if method.mode == "resume":
            overrides.update(artifact_dir=artifact_dir, schedule=None)
    else:
        # Every trial runs at the maximum budget on one schedule (default: the study's own).
        overrides.update(algorithm="fixed", mode="restart")
        if schedule is not None:
            overrides["schedule"] = schedule
    return defaults.resolve(**overrides)


def make_pruner(method: Method, settings: StudySettings) -> optuna.pruners.BasePruner:
    if method.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=settings.min_budget, max_resource=settings.max_budget, reduction_factor=settings.reduction_factor
        )
    if method.pruner == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=settings.min_budget, reduction_factor=settings.reduction_factor
        )
    if method.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=settings.min_budget)
    return optuna.pruners.NopPruner()


def trial_compute(trial: FrozenTrial) -> float:
    """Return the units a baseline trial trained: its budget if complete, else its last reported step."""
    budget = trial.user_attrs.get(_attrs.BUDGET, 0)
    if trial.state == TrialState.COMPLETE:
        return float(budget)
    return float(min(max(trial.intermediate_values, default=0), budget))


def compute_used(study: optuna.Study) -> float:
    """Return the compute a baseline study used so far, running trials included."""
    return sum(trial_compute(t) for t in study.get_trials(deepcopy=False))


def run_baseline_worker(study_file: Any, storage: Any, study_name: str, method: Method, worker_index: int) -> None:
    """Run trials of a baseline study until its compute reaches the total budget."""
    from budgetsearch._status import load_settings

    plain = optuna.load_study(study_name=study_name, storage=storage)
    settings = load_settings(database_for(plain._storage), plain)
    assert settings is not None and settings.total_budget is not None
    from budgetsearch._sampler import make_base_sampler

    base = make_base_sampler(settings.sampler, settings.seed * 1000 + worker_index)
    study = optuna.load_study(
        study_name=study_name, storage=storage,
        sampler=FixedBudgetSampler(base, settings), pruner=make_pruner(method, settings),
    )
    failures = 0
    while compute_used(study) < settings.total_budget:
        study.optimize(study_file.objective, n_trials=1, catch=(Exception,))
        last = study.get_trials(deepcopy=False)[-1]
        failures = failures + 1 if last.state == TrialState.FAIL and trial_compute(last) == 0 else 0
        if failures >= 20:
            raise RuntimeError(f"20 trials in a row of {study_name} failed before training: see the log above.")


@dataclass
class RunResult:
    """One method's run on one seed."""

    method: str
    seed: int
    storage: str
    wall_seconds: float
    best_value: Optional[float] = None
    incumbent: Optional[Dict[str, Any]] = None
    compute: float = 0.0
    examples: Optional[float] = None
    # (compute used, best maximum-budget value so far), in the order trials finished.
    anytime: List[Tuple[float, Optional[float]]] = dataclasses.field(default_factory=list)
    test_values: List[float] = dataclasses.field(default_factory=list)
    schedule: Dict[str, Any] = dataclasses.field(default_factory=dict)
    # Whether the incumbent's retraining finished (it has nothing to do without an incumbent).
    retrained: bool = False


def run_method(
    study_path: str, study_file: Any, method: Method, seed: int, total_budget: int, workers: int,
    out: str, schedule: Optional[str], environment: Dict[str, str],
) -> RunResult:
    """Run one method on one seed with ``workers`` processes; return its result without retraining."""
    from budgetsearch._sampler import BudgetSampler

    name = run_name(method, seed)
    storage = f"sqlite:///{os.path.join(out, 'runs', name + '.db')}"
    settings = method_settings(
        study_file.defaults, method, total_budget, seed, schedule, os.path.join(out, "runs", name + "-artifacts")
    )
    started = time.monotonic()
    if method.kind == "ours":
        command = [
            sys.executable, "-m", "budgetsearch", "run", study_path, "--storage", storage, "--study-name", name,
            "--workers", str(workers), "--algorithm", settings.algorithm, "--mode", settings.mode,
            "--total-budget", str(total_budget), "--seed", str(seed), "--sampler", settings.sampler,
        ]
        if settings.mode == "resume":
            command += ["--artifact-dir", settings.artifact_dir]
        _check_call(command, environment, name, out)
    else:
        from budgetsearch.cli import open_storage

        study = optuna.create_study(study_name=name, storage=open_storage(storage), direction=settings.direction)
        BudgetSampler(settings=settings).settings_for(study)
        commands = [
            [
                sys.executable, "-m", "budgetsearch", "compare-worker", study_path, "--storage", storage,
                "--study-name", name, "--method", method.name, "--worker-index", str(index),
            ]
            for index in range(workers)
        ]
        _check_calls(commands, environment, name, out)
    result = RunResult(method.name, seed, storage, time.monotonic() - started, schedule=settings.schedule_spec())
    analyze(result, method, settings)
    return result


def run_name(method: Method, seed: int) -> str:
    return f"{method.name}-seed{seed}"


# The flags whose values a finished run must share with a command that resumes it.
CONDITION_FLAGS = {
    "study_file": "the study file",
    "total_budget": "--total-budget",
    "workers": "--workers",
    "retrain_seeds": "--retrain-seeds",
    "schedule": "--schedule",
}


def _run_path(out: str, name: str) -> str:
    return os.path.join(out, "runs", name + ".json")


def save_run(out: str, result: RunResult, conditions: Dict[str, Any]) -> None:
    """Write a run's result and the conditions it ran under to ``runs/NAME.json``."""
    path = _run_path(out, f"{result.method}-seed{result.seed}")
    write_json(path, {"conditions": conditions, "result": dataclasses.asdict(result)})


def write_json(path: str, data: Any) -> None:
    """Write ``data`` to ``path`` through a temporary file, so a kill leaves the old file or the new one."""
    with open(path + ".tmp", "w") as file:
        json.dump(data, file, indent=1)
    os.replace(path + ".tmp", path)


def _read_saved_run(path: str) -> Dict[str, Any]:
    try:
        with open(path) as file:
            saved = json.load(file)
        problem = None
        if not isinstance(saved, dict) or not isinstance(saved.get("conditions"), dict):
            problem = "no conditions"
        elif not isinstance(saved.get("result"), dict) or "method" not in saved["result"]:
            problem = "no result"
    except (OSError, ValueError) as error:
        problem = f"{type(error).__name__}: {error}"
    if problem is not None:
        raise ValueError(
            f"--resume: the saved run {path!r} is invalid ({problem}): delete it to run that method and seed again."
        )
    return saved


def check_saved_runs(out: str, conditions: Dict[str, Any]) -> None:
    """Raise ValueError if a run saved in ``out`` ran under other conditions, or cannot be read.

    This checks every saved run before anything runs, so a resumed comparison never
    mixes runs made under different settings.
    """
    runs = os.path.join(out, "runs")
    for name in sorted(os.listdir(runs)):
        if not name.endswith(".json") or name == "rank-correlation.json":
            continue
        saved = _read_saved_run(os.path.join(runs, name))
        differences = [
            f"{CONDITION_FLAGS.get(key, key)} {_condition_text(saved['conditions'].get(key))} (now {_condition_text(value)})"
            for key, value in conditions.items()
            if saved["conditions"].get(key) != value
        ]
        if differences:
            raise ValueError(
                f"--resume: run {name[:-len('.json')]} in {out!r} was made with {', '.join(differences)}: "
                "resume with the same values, or pick an empty --out folder."
            )


def _condition_text(value: Any) -> str:
    return "unset" if value is None else repr(value)


def load_run(out: str, method: Method, seed: int) -> Optional[RunResult]:
    """Return the saved result of a run whose search finished, or None if it did not finish."""
    path = _run_path(out, run_name(method, seed))
    if not os.path.exists(path):
        return None
    fields = dict(_read_saved_run(path)["result"])
    fields["anytime"] = [tuple(point) for point in fields.get("anytime", [])]
    return RunResult(**fields)


def discard_partial_run(out: str, name: str) -> None:
    """Remove the storage, log and checkpoints of a run (or measurement) interrupted before it finished."""
    runs = os.path.join(out, "runs")
    for suffix in (".db", ".db-shm", ".db-wal", ".db-journal", ".log"):
        path = os.path.join(runs, name + suffix)
        if os.path.exists(path):
            os.remove(path)
    shutil.rmtree(os.path.join(runs, name + "-artifacts"), ignore_errors=True)


def _log_path(out: str, name: str) -> str:
    return os.path.join(out, "runs", name + ".log")


def _check_call(command: List[str], environment: Dict[str, str], name: str, out: str) -> None:
    _check_calls([command], environment, name, out)


def _check_calls(commands: List[List[str]], environment: Dict[str, str], name: str, out: str) -> None:
    from budgetsearch.cli import CPUS_ENVIRONMENT_VARIABLE, _cpu_sets

    cpu_sets = _cpu_sets(len(commands))
    with open(_log_path(out, name), "a") as log:
        processes = []
        for index, command in enumerate(commands):
            env = dict(environment)
            if len(commands) > 1:
                env[CPUS_ENVIRONMENT_VARIABLE] = ",".join(str(core) for core in cpu_sets[index])
                env["OMP_NUM_THREADS"] = str(len(cpu_sets[index]))
            processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
        try:
            codes = [process.wait() for process in processes]
        except BaseException:
            # Interrupted (SIGINT, SIGTERM): stop the run's processes before compare exits.
            _stop_processes(processes)
            raise
    if any(codes):
        raise RuntimeError(f"run {name} failed (exit status {max(codes)}): see {_log_path(out, name)}.")


def _stop_processes(processes: List[subprocess.Popen]) -> None:
    """Send SIGTERM to the processes still running, wait up to 60 s for them, then kill the rest."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 60
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def analyze(result: RunResult, method: Method, settings: StudySettings) -> None:
    """Fill in a run's compute, anytime curve and incumbent from its storage."""
    study = optuna.load_study(study_name=run_name(method, result.seed), storage=result.storage)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    finished = []  # (finish time, compute, trial)
    if method.kind == "ours":
        with database_for(study._storage).engine.connect() as connection:
            rows = connection.execute(
                sa.select(claims_table.c.trial_number, claims_table.c.spent, claims_table.c.finished_sequence)
                .where(claims_table.c.study_id == study._study_id)
                .where(claims_table.c.finished_sequence.is_not(None))
                .order_by(claims_table.c.finished_sequence)
            ).all()
        for row in rows:
            finished.append((row.finished_sequence, float(row.spent or 0), trials[row.trial_number]))
    else:
        for trial in trials.values():
            if trial.state.is_finished() and trial.datetime_complete is not None:
                finished.append((trial.datetime_complete.timestamp(), trial_compute(trial), trial))
        finished.sort(key=lambda item: item[0])

    sign = 1.0 if settings.direction == "maximize" else -1.0
    top = settings.ladder.top_rung
    used = 0.0
    examples = 0.0
    best: Optional[FrozenTrial] = None
    for _, compute, trial in finished:
        used += compute
        batch_size = trial.params.get("batch_size")
        if isinstance(batch_size, (int, float)) and settings.budget_unit == "steps":
            examples += compute * batch_size
        at_top = trial.user_attrs.get(_attrs.RUNG) == top
        if used <= result_budget(settings) and at_top and trial.state == TrialState.COMPLETE and math.isfinite(trial.value):
            if best is None or sign * trial.value > sign * best.value:
                best = trial
        result.anytime.append((used, None if best is None else best.value))
    result.compute = used
    result.examples = examples or None
    if best is not None:
        result.best_value = best.value
        result.incumbent = {"trial": best.number, "params": best.params}


def result_budget(settings: StudySettings) -> float:
    return float(settings.total_budget or math.inf)


def retrain(study_path: str, study_file: Any, result: RunResult, seeds: int, max_budget: int, processes: int = 1) -> None:
    """Train the run's incumbent again at the maximum budget on fresh seeds and record its test values.

    With several ``processes``, the seeds train in parallel worker processes that share
    the machine's CPU cores.
    """
    if getattr(study_file.module, "test_value", None) is None or result.incumbent is None:
        result.retrained = True
        return
    calls = [
        (study_path, result.incumbent["params"], max_budget, result.schedule, RETRAIN_SEED_BASE + 100 * result.seed + index)
        for index in range(seeds)
    ]
    processes = max(1, min(processes, seeds))
    if processes == 1:
        _loaded_study_files[study_path] = study_file
        values = [_test_value(*call) for call in calls]
    else:
        import multiprocessing

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        context = multiprocessing.get_context("spawn")
        # Leaving the block terminates the processes, also when an interrupt ends the retraining.
        with context.Pool(processes, initializer=_set_torch_threads, initargs=(max(1, cores // processes),)) as pool:
            values = pool.starmap(_test_value, calls)
    result.test_values = [float(value) for value in values]
    result.retrained = True


# The study files this process has loaded, by path, so that each is imported once.
_loaded_study_files: Dict[str, Any] = {}


def _set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _test_value(study_path: str, params: Dict[str, Any], budget: int, schedule: Dict[str, Any], seed: int) -> float:
    """Call the study file's ``test_value`` on this process's device."""
    from budgetsearch._objective import trial_device
    from budgetsearch._studyfile import load_study_file

    if study_path not in _loaded_study_files:
        _loaded_study_files[study_path] = load_study_file(study_path)
    test_value = _loaded_study_files[study_path].module.test_value
    return float(test_value(params, budget, schedule=schedule, seed=seed, device=trial_device()))


def write_outputs(out: str, results: Sequence[RunResult], methods: Sequence[Method], total_budget: int, direction: str, metric: str) -> None:
    """Write results.csv, results.md and anytime.png into ``out``."""
    with open(os.path.join(out, "results.csv"), "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(
            ["method", "seed", "best_validation_value", "incumbent_median_test_value", "retrains", "diverged_retrains",
             "compute_used", "examples_processed", "wall_seconds", "incumbent_params"]
        )
        for r in results:
            finite = [v for v in r.test_values if math.isfinite(v)]
            writer.writerow([
                r.method, r.seed, _cell(r.best_value), _cell(statistics.median(finite) if finite else None),
                len(r.test_values), len(r.test_values) - len(finite), _cell(r.compute), _cell(r.examples),
                f"{r.wall_seconds:.1f}", json.dumps(r.incumbent["params"] if r.incumbent else None, sort_keys=True),
            ])
    _write_markdown(out, results, methods, total_budget, direction, metric)
    _plot_anytime(out, results, methods, total_budget, metric)


def _cell(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.6g}"


def _mean_and_error(values: List[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values) / math.sqrt(len(values)):.4f}"


def first_reach(anytime: List[Tuple[float, Optional[float]]], target: float, direction: str) -> Optional[float]:
    """Return the compute at which a run's best maximum-budget value first reached ``target``."""
    for used, best in anytime:
        if best is not None and (best >= target if direction == "maximize" else best <= target):
            return used
    return None


def _write_markdown(out: str, results: Sequence[RunResult], methods: Sequence[Method], total_budget: int, direction: str, metric: str) -> None:
    by_method = {m.name: [r for r in results if r.method == m.name] for m in methods}
    reference = [r.best_value for r in by_method.get("optuna-hyperband", []) if r.best_value is not None]
    target = statistics.mean(reference) if reference else None
    lines = [
        f"# Comparison at equal compute: B = {total_budget} units per run",
        "",
        f"Mean ± standard error over seeds of the best validation {metric} at the maximum budget among the trials "
        "that finished within compute B, and of the median test value (the study file's test_value) of that "
        "incumbent retrained on fresh seeds. "
        "Compute used counts every trial a run trained; no trial starts once B is reached, so trials that were "
        "running then may take a run past B. The last column is the compute at which a run's best value first "
        "reached the mean of optuna-hyperband's final values, averaged over the seeds that reached it"
        + ("." if target is not None else "; optuna-hyperband has no result here, so that column is n/a."),
        "",
        f"| method | seeds | best validation {metric} | incumbent median test value | diverged retrains | compute used | compute to reach optuna-hyperband's final value |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in methods:
        runs = by_method[method.name]
        if not runs:
            continue  # Not run yet.
        best = [r.best_value for r in runs if r.best_value is not None]
        tests = [statistics.median(f) for f in ([v for v in r.test_values if math.isfinite(v)] for r in runs) if f]
        diverged = sum(sum(1 for v in r.test_values if not math.isfinite(v)) for r in runs)
        retrains = sum(len(r.test_values) for r in runs)
        reach = "n/a"
        if target is not None:
            fractions = [first_reach(r.anytime, target, direction) for r in runs]
            reached = [f / total_budget for f in fractions if f is not None]
            reach = f"{statistics.mean(reached):.2f} of B ({len(reached)}/{len(runs)} seeds)" if reached else "not reached"
        lines.append(
            f"| {method.name} | {len(runs)} | {_mean_and_error(best)} | {_mean_and_error(tests)} | {diverged}/{retrains} "
            f"| {statistics.mean(r.compute for r in runs):.0f} | {reach} |"
        )
    with open(os.path.join(out, "results.md"), "w") as file:
        file.write("\n".join(lines) + "\n")


def anytime_grid(anytime: List[Tuple[float, Optional[float]]], grid: Sequence[float]) -> List[Optional[float]]:
    """Return the best value found by each compute of ``grid`` (None before the first result)."""
    values = []
    position = 0
    best = None
    for point in grid:
        while position < len(anytime) and anytime[position][0] <= point:
            best = anytime[position][1]
            position += 1
        values.append(best)
    return values


def _plot_anytime(out: str, results: Sequence[RunResult], methods: Sequence[Method], total_budget: int, metric: str) -> None:
    """Plot the best value against compute, over all of B on the left and from B/4 on the right.

    The right panel's value axis is fitted to the means there, so that differences of a few
    thousandths between methods show.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = [total_budget * index / 200 for index in range(1, 201)]
    figure, (whole, late) = plt.subplots(1, 2, figsize=(12, 4.5))
    late_start = total_budget / 4
    late_values: List[float] = []
    for method in methods:
        curves = [anytime_grid(r.anytime, grid) for r in results if r.method == method.name]
        points = []
        for column in range(len(grid)):
            values = [curve[column] for curve in curves if curve[column] is not None]
            if len(values) == len(curves) and values:
                points.append((grid[column], statistics.mean(values), min(values), max(values)))
        if not points:
            continue
        xs, means, lows, highs = zip(*points)
        for axes, alpha in ((whole, 0.2), (late, 0.1)):
            (line,) = axes.plot(xs, means, label=method.name, drawstyle="steps-post")
            axes.fill_between(xs, lows, highs, step="post", alpha=alpha, color=line.get_color())
        late_values += [value for x, value in zip(xs, means) if x >= late_start]
    for axes in (whole, late):
        axes.set_xlabel("compute spent (study budget units)")
        axes.set_ylabel(f"best validation {metric} at the maximum budget")
        axes.grid(alpha=0.3)
    whole.set_xlim(0, total_budget)
    late.set_xlim(late_start, total_budget)
    if late_values and max(late_values) > min(late_values):
        margin = (max(late_values) - min(late_values)) * 0.15
        late.set_ylim(min(late_values) - margin, max(late_values) + margin)
    late.set_title("compute from B/4 to B, value axis fitted to the means")
    if whole.get_lines():
        whole.legend()
    else:
        whole.text(0.5, 0.5, "no method has a result at the maximum budget", ha="center", transform=whole.transAxes)
    figure.tight_layout()
    figure.savefig(os.path.join(out, "anytime.png"), dpi=120)
    plt.close(figure)
