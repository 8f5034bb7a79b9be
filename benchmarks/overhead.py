"""Measure the decision overhead of budgetsearch's pair next to Optuna's HyperbandPruner.

For each database and study size, the study is first filled in bulk with complete
trials, then one job is timed many times with a no-op objective: ``ask`` (which
claims a job), one ``report`` plus ``should_prune``, and ``tell``. Optuna's
``HyperbandPruner`` with the same base sampler is measured in the same run, so the
two columns share the machine's load.

    python benchmarks/overhead.py --quick              # PostgreSQL, 100 and 10,000 trials, random sampler
    python benchmarks/overhead.py --sizes 100 1000 10000 --samplers random tpe

Server URLs come from BUDGETSEARCH_TEST_POSTGRES_URL and BUDGETSEARCH_TEST_MYSQL_URL;
each measurement uses a database of its own that the script creates and drops.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from typing import Dict, List

import optuna
import sqlalchemy as sa
from optuna.distributions import FloatDistribution

import budgetsearch
from budgetsearch._tables import claims_table, database_for

ATTR = "budgetsearch:"
SERVER_VARIABLES = {"postgresql": "BUDGETSEARCH_TEST_POSTGRES_URL", "mysql": "BUDGETSEARCH_TEST_MYSQL_URL"}


def scratch_url(backend: str, folder: str) -> tuple:
    """Return (url, cleanup) for an empty database of ``backend``."""
    if backend == "sqlite":
        return f"sqlite:///{os.path.join(folder, uuid.uuid4().hex + '.db')}", lambda: None
    base = os.environ.get(SERVER_VARIABLES[backend])
    if not base:
        raise SystemExit(f"{SERVER_VARIABLES[backend]} is not set: set it to a {backend} server URL.")
    name = f"bs_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name}")

    def drop() -> None:
        with admin.connect() as connection:
            if admin.dialect.name == "postgresql":
                connection.exec_driver_sql(
                    f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                )
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        admin.dispose()

    return sa.engine.make_url(base).set(database=name).render_as_string(hide_password=False), drop


def base_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=seed) if name == "tpe" else optuna.samplers.RandomSampler(seed=seed)


def fill(study: optuna.Study, size: int, ours: bool) -> None:
    """Add ``size`` complete trials at the lowest budget, and for ours their claims."""
    distribution = FloatDistribution(0.0, 1.0)
    values = [((number * 7919) % size) / size for number in range(size)]
    trials = []
    for number, value in enumerate(values):
        attrs = {ATTR + "config": number, ATTR + "rung": 0, ATTR + "budget": 1, ATTR + "attempt": 0} if ours else {}
        trials.append(
            optuna.trial.create_trial(
                params={"x": value}, distributions={"x": distribution}, value=value,
                intermediate_values={1: value}, user_attrs=attrs,
            )
        )
    study.add_trials(trials)
    if not ours:
        return
    database = database_for(study._storage)
    ids = {t.number: t._trial_id for t in study.get_trials(deepcopy=False)}
    rows = [
        dict(
            study_id=study._study_id, config=n, rung=0, attempt=0, bracket=0, budget=1, start_step=0,
            reserved=1, spent=1, trial_number=n, trial_id=ids[n], config_trial_id=ids[n], state="complete",
            value=v, claimed_at=0.0, finished_at=0.0, claimed_sequence=2 * n + 1, finished_sequence=2 * n + 2,
        )
        for n, v in enumerate(values)
    ]
    # Every promotable configuration already has a finished claim one rung up, so each
    # timed job starts a new configuration, as most jobs of a large study do.
    rows += [dict(row, rung=1, budget=3, reserved=3, state="failed", value=None, trial_number=size + row["config"]) for row in rows]
    with database.engine.begin() as connection:
        connection.execute(claims_table.insert(), rows)


def time_jobs(study: optuna.Study, repeats: int) -> Dict[str, List[float]]:
    times: Dict[str, List[float]] = {"ask": [], "should_prune": [], "tell": []}
    for _ in range(repeats):
        start = time.perf_counter()
        trial = study.ask()
        asked = time.perf_counter()
        x = trial.suggest_float("x", 0.0, 1.0)
        trial.report(x, 1)
        before_prune = time.perf_counter()
        trial.should_prune()
        pruned = time.perf_counter()
        study.tell(trial, x)
        told = time.perf_counter()
        times["ask"].append(asked - start)
        times["should_prune"].append(pruned - before_prune)
        times["tell"].append(told - pruned)
    return times


def measure(backend: str, size: int, sampler_name: str, ours: bool, repeats: int, folder: str) -> Dict[str, List[float]]:
    url, drop = scratch_url(backend, folder)
    try:
        if ours:
            sampler = budgetsearch.BudgetSampler(1, 9, 3, seed=0, base_sampler=sampler_name)
            pruner: optuna.pruners.BasePruner = budgetsearch.BudgetPruner()
        else:
            sampler = base_sampler(sampler_name, 0)
            pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=9, reduction_factor=3)
        study = optuna.create_study(storage=url, study_name="bench", sampler=sampler, pruner=pruner)
        if ours:
            sampler.settings_for(study)
        fill(study, size, ours)
        time_jobs(study, 3)  # warm caches and connections
        return time_jobs(study, repeats)
    finally:
        drop()


def percentile(values: List[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="PostgreSQL, 100 and 10,000 trials, random sampler.")
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql", "mysql"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[100, 1000, 10000])
    parser.add_argument("--samplers", nargs="+", default=["random", "tpe"])
    parser.add_argument("--repeats", type=int, default=30, help="timed jobs per measurement.")
    args = parser.parse_args()
    if args.quick:
        args.backends, args.sizes, args.samplers = ["postgresql"], [100, 10000], ["random"]
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    print("| database | trials | sampler | ours median ms | ours p95 ms | Optuna median ms | Optuna p95 ms | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for backend in args.backends:
            for size in args.sizes:
                for sampler_name in args.samplers:
                    totals = {}
                    for ours in (True, False):
                        times = measure(backend, size, sampler_name, ours, args.repeats, folder)
                        totals[ours] = [sum(parts) * 1000 for parts in zip(*times.values())]
                    ours_median = statistics.median(totals[True])
                    theirs_median = statistics.median(totals[False])
                    print(
                        f"| {backend} | {size} | {sampler_name} | {ours_median:.1f} | {percentile(totals[True], 0.95):.1f} "
                        f"| {theirs_median:.1f} | {percentile(totals[False], 0.95):.1f} | {ours_median / theirs_median:.2f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
