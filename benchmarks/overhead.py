"""Measure the overhead of budgetsearch's pair next to Optuna's HyperbandPruner.

(a) Decision overhead. For each database and study size, the study is first filled in
bulk with complete trials, then one job is timed many times with a no-op objective:
``ask`` (which claims a job), one ``report`` plus ``should_prune``, and ``tell``.
Three set-ups are timed in the same run, so they share the machine's load: Optuna
with the same base sampler and no pruner (the cost of Optuna's storage alone),
budgetsearch's pair, and Optuna's ``HyperbandPruner``. The overhead of a pair is its
time minus the no-pruner time.

(b) Throughput. Worker processes share one PostgreSQL study and run a zero-cost
objective for a fixed time: ``budgetsearch``'s worker loop (the code behind
``budgetsearch worker``) against ``study.optimize`` with ``HyperbandPruner`` and the
random sampler. The table gives finished trials per second and the number of jobs
that ran more than once.

    python benchmarks/overhead.py --quick              # PostgreSQL, 100 and 10,000 trials, random, 4 workers
    python benchmarks/overhead.py                      # every database, size, sampler and worker count

Server URLs come from BUDGETSEARCH_TEST_POSTGRES_URL and BUDGETSEARCH_TEST_MYSQL_URL;
each measurement uses a database of its own that the script creates and drops.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
import uuid
from contextlib import contextmanager
from typing import Dict, Iterator, List

import optuna

import budgetsearch
from budgetsearch.testing import fill_study, scratch_database

SERVER_VARIABLES = {"postgresql": "BUDGETSEARCH_TEST_POSTGRES_URL", "mysql": "BUDGETSEARCH_TEST_MYSQL_URL"}
SETUPS = ("baseline", "ours", "hyperband")


@contextmanager
def scratch_url(backend: str, folder: str) -> Iterator[str]:
    """Yield the URL of an empty database of ``backend``, removed afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{os.path.join(folder, uuid.uuid4().hex + '.db')}"
        return
    server = os.environ.get(SERVER_VARIABLES[backend])
    if not server:
        raise SystemExit(f"{SERVER_VARIABLES[backend]} is not set: set it to a {backend} server URL.")
    with scratch_database(server, f"bs_bench_{uuid.uuid4().hex[:10]}") as url:
        yield url


def make_study(url: str, setup: str, sampler_name: str) -> optuna.Study:
    """Create the study of one set-up: budgets 1, 3 and 9 with eta 3 for both pairs."""
    if setup == "ours":
        sampler: optuna.samplers.BaseSampler = budgetsearch.BudgetSampler(1, 9, 3, seed=0, base_sampler=sampler_name)
        pruner: optuna.pruners.BasePruner = budgetsearch.BudgetPruner()
    else:
        sampler = optuna.samplers.TPESampler(seed=0) if sampler_name == "tpe" else optuna.samplers.RandomSampler(seed=0)
        if setup == "hyperband":
            pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=9, reduction_factor=3)
        else:
            pruner = optuna.pruners.NopPruner()
    study = optuna.create_study(storage=url, study_name="bench", sampler=sampler, pruner=pruner)
    if setup == "ours":
        sampler.settings_for(study)
    return study


def time_jobs(study: optuna.Study, repeats: int) -> List[float]:
    """Time ``repeats`` jobs of a no-op objective; return each job's seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        trial = study.ask()
        x = trial.suggest_float("x", 0.0, 1.0)
        trial.report(x, 1)
        trial.should_prune()
        study.tell(trial, x)
        times.append(time.perf_counter() - start)
    return times


def measure(backend: str, size: int, sampler_name: str, setup: str, repeats: int, folder: str) -> List[float]:
    with scratch_url(backend, folder) as url:
        study = make_study(url, setup, sampler_name)
        fill_study(study, size, claims=setup == "ours")
        time_jobs(study, 3)  # warm caches and connections
        return time_jobs(study, repeats)


def percentile(values: List[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def decision_table(backends: List[str], sizes: List[int], samplers: List[str], repeats: int) -> None:
    print(
        "| database | trials | sampler | Optuna, no pruner | ours | ours p95 | Optuna Hyperband | Hyperband p95 "
        "| ours overhead | Hyperband overhead |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for backend in backends:
            for size in sizes:
                for sampler_name in samplers:
                    ms = {}
                    for setup in SETUPS:
                        ms[setup] = [t * 1000 for t in measure(backend, size, sampler_name, setup, repeats, folder)]
                    median = {setup: statistics.median(ms[setup]) for setup in SETUPS}
                    print(
                        f"| {backend} | {size} | {sampler_name} | {median['baseline']:.1f} | {median['ours']:.1f} "
                        f"| {percentile(ms['ours'], 0.95):.1f} | {median['hyperband']:.1f} "
                        f"| {percentile(ms['hyperband'], 0.95):.1f} | {median['ours'] - median['baseline']:.1f} "
                        f"| {median['hyperband'] - median['baseline']:.1f} |",
                        flush=True,
                    )


# -- throughput ---------------------------------------------------------------------


def _budget_objective(trial: optuna.Trial) -> float:
    budget = budgetsearch.trial_budget(trial)
    x = trial.suggest_float("x", 0.0, 1.0)
    trial.report(x, budget)
    return x


def _hyperband_objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", 0.0, 1.0)
    # Reports at the rung budgets only, as an efficient objective would.
    for step in (1, 3, 9):
        trial.report(x, step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return x


def _worker(setup: str, url: str, barrier: "multiprocessing.synchronize.Barrier", seconds: float) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # A training worker imports torch anyway; import it before the clock starts in both
    # set-ups, so that neither pays for it in the measurement.
    import budgetsearch.schedules  # noqa: F401
    import torch  # noqa: F401

    if setup == "ours":
        from budgetsearch._worker import run_worker

        barrier.wait()
        run_worker("bench", url, _budget_objective, deadline=time.time() + seconds)
    else:
        sampler = optuna.samplers.RandomSampler()
        pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=9, reduction_factor=3)
        study = optuna.load_study(study_name="bench", storage=url, sampler=sampler, pruner=pruner)
        barrier.wait()
        study.optimize(_hyperband_objective, timeout=seconds)


def throughput(setup: str, workers: int, seconds: float) -> Dict[str, float]:
    """Run ``workers`` processes for ``seconds``; return trials per second and duplicate jobs."""
    from budgetsearch._status import duplicate_jobs

    with scratch_url("postgresql", "") as url:
        make_study(url, setup, "random")
        context = multiprocessing.get_context("spawn")
        barrier = context.Barrier(workers + 1)
        processes = [context.Process(target=_worker, args=(setup, url, barrier, seconds)) for _ in range(workers)]
        for process in processes:
            process.start()
        barrier.wait()
        start = time.time()
        for process in processes:
            process.join()
        trials = optuna.load_study(study_name="bench", storage=url).get_trials(deepcopy=False)
        finished = [
            t for t in trials
            if t.datetime_complete is not None and t.datetime_complete.timestamp() <= start + seconds
        ]
        return {"per_second": len(finished) / seconds, "duplicates": duplicate_jobs(trials)}


def throughput_table(worker_counts: List[int], seconds: float) -> None:
    print("| workers | ours trials/s | Optuna Hyperband trials/s | ratio | ours duplicate jobs |")
    print("|---|---|---|---|---|")
    for workers in worker_counts:
        ours = throughput("ours", workers, seconds)
        theirs = throughput("hyperband", workers, seconds)
        print(
            f"| {workers} | {ours['per_second']:.1f} | {theirs['per_second']:.1f} "
            f"| {ours['per_second'] / theirs['per_second']:.2f} | {ours['duplicates']} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="PostgreSQL, 100 and 10,000 trials, random sampler, 4 workers.")
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql", "mysql"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[100, 1000, 10000])
    parser.add_argument("--samplers", nargs="+", default=["random", "tpe"])
    parser.add_argument("--repeats", type=int, default=30, help="timed jobs per measurement.")
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 4, 16], help="worker process counts for (b).")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each throughput run.")
    parser.add_argument("--parts", nargs="+", choices=["a", "b"], default=["a", "b"], help="which parts to run.")
    args = parser.parse_args()
    if args.quick:
        args.backends, args.sizes, args.samplers, args.workers = ["postgresql"], [100, 10000], ["random"], [4]
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    if "a" in args.parts:
        print("(a) Median and 95th-percentile milliseconds of one job (ask, report, should_prune, tell)\n")
        decision_table(args.backends, args.sizes, args.samplers, args.repeats)
    if "b" in args.parts:
        print(f"\n(b) Finished trials per second on PostgreSQL, zero-cost objective, {args.seconds:.0f} s per run\n")
        throughput_table(args.workers, args.seconds)


if __name__ == "__main__":
    main()
