"""The ``budgetsearch`` command: run, worker, status and db."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List, NoReturn, Optional, Sequence

STORAGE_ENVIRONMENT_VARIABLE = "BUDGETSEARCH_STORAGE"
CPUS_ENVIRONMENT_VARIABLE = "BUDGETSEARCH_CPUS"
DEFAULT_STORAGE = "sqlite:///budgetsearch.db"

logger = logging.getLogger("budgetsearch.cli")


class UsageError(Exception):
    """Bad input from the command line: printed as one line, exit status 2."""


# -- argument types ------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer: give a positive integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not positive: give a positive integer")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer: give 0 or more") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative: give 0 or more")
    return value


def _reduction_factor(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer: give an integer of at least 2") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"{text!r} is below 2: give an integer of at least 2")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not positive: give a positive number of seconds")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0 and 1: give a fraction such as 0.2")
    return value


def _non_negative_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative: give 0 or a positive number of seconds")
    return value


# -- storage -------------------------------------------------------------------------


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        # Hide what would be a password in a URL that SQLAlchemy cannot parse.
        return repr(re.sub(r"(^|/)([^:/@]*):[^@/]*@", r"\1\2:***@", url))
    if parsed.password is None:
        return url
    return parsed.render_as_string(hide_password=True)


def _storage_url(text: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(text)
    except (ArgumentError, ValueError):
        raise argparse.ArgumentTypeError(
            f"{mask_url(text)} (from --storage or ${STORAGE_ENVIRONMENT_VARIABLE}) is not a database URL: "
            f"give one such as {DEFAULT_STORAGE} or postgresql+psycopg://USER@HOST/DATABASE"
        ) from None
    return text


def _mask_in(text: str, url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        password = make_url(url).password
    except (ArgumentError, ValueError):
        return text
    if password:
        text = text.replace(str(password), "***")
    return text


def open_storage(url: str, db_wait: float = 0.0) -> Any:
    """Open the Optuna RDB storage at ``url``, set up for several local processes on SQLite.

    Calls that cannot reach the database are retried for ``db_wait`` seconds.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from budgetsearch._storage import ReconnectingStorage
    from budgetsearch._tables import DatabaseUnavailableError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise UsageError(
            f"storage URL {mask_url(url)} is invalid: use an SQLAlchemy URL such as "
            "sqlite:///budgetsearch.db or postgresql+psycopg://user@host/db."
        ) from None

    engine_kwargs: Dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        engine_kwargs["connect_args"] = {"timeout": 60}
        database = parsed.database
        if database and database != ":memory:":
            folder = os.path.dirname(os.path.abspath(database))
            if not os.path.isdir(folder):
                raise UsageError(f"storage URL {url!r}: folder {folder!r} does not exist; create it first.")
            _enable_sqlite_wal(database)
    try:
        return ReconnectingStorage(url, db_wait=db_wait, engine_kwargs=engine_kwargs)
    except DatabaseUnavailableError:
        raise
    except Exception as error:  # Drivers raise many types for a bad URL or an unreachable server.
        reason = _mask_in(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__, url)
        raise UsageError(
            f"cannot open storage {mask_url(url)}: {reason}. Check the URL, that the server is "
            "running and reachable, and that its driver is installed (pip install 'budgetsearch[postgresql]' or '[mysql]')."
        ) from None


def _enable_sqlite_wal(path: str) -> None:
    import sqlite3

    # WAL lets readers (status, progress) run while a worker writes; the mode is kept in the file.
    connection = sqlite3.connect(path, timeout=60)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
    finally:
        connection.close()


# -- studies -------------------------------------------------------------------------

_SETTING_FLAGS = {
    "algorithm": "algorithm",
    "mode": "mode",
    "schedule": "schedule",
    "sampler": "sampler",
    "seed": "seed",
    "min_budget": "min_budget",
    "max_budget": "max_budget",
    "reduction_factor": "reduction_factor",
    "total_budget": "total_budget",
    "n_trials": "n_trials",
    "warmup": "warmup",
    "budget_unit": "budget_unit",
    "max_retries": "max_retries",
    "n_min": "n_min",
    "heartbeat_interval": "heartbeat_interval",
    "grace_period": "grace_period",
}


def _explicit_settings(args: argparse.Namespace, defaults: Any = None) -> Dict[str, Any]:
    explicit = {name: getattr(args, flag) for flag, name in _SETTING_FLAGS.items() if getattr(args, flag, None) is not None}
    options = {}
    if getattr(args, "decay_fraction", None) is not None:
        options["decay_fraction"] = args.decay_fraction
    if getattr(args, "decay_shape", None) is not None:
        options["decay_shape"] = args.decay_shape
    if options:
        base = dict(defaults.schedule_options) if defaults is not None else {}
        base.update(options)
        explicit["schedule_options"] = base
    if getattr(args, "artifact_dir", None) is not None:
        explicit["artifact_dir"] = os.path.abspath(os.path.expanduser(args.artifact_dir))
    return explicit


def open_study(args: argparse.Namespace, study_file: Any, *, create: bool = True) -> Any:
    """Create the study with its resolved settings, or load it and check the flags against it.

    Without ``create`` (a worker joining), a study that does not exist is an error.
    """
    import optuna

    from budgetsearch._sampler import BudgetSampler, check_settings_match, mismatch_message
    from budgetsearch._status import load_settings
    from budgetsearch._tables import database_for

    if args.study_name is not None and not args.study_name.strip():
        raise UsageError(
            f"--study-name {args.study_name!r} is empty: give a name, or leave the flag out to use the study file's name."
        )
    explicit = _explicit_settings(args, study_file.defaults)
    # Invalid settings are reported before the storage is touched, unless the study
    # exists: then a flag that contradicts its stored settings is the error to report.
    settings = None
    invalid: Optional[str] = None
    try:
        settings = study_file.defaults.resolve(**explicit)
    except ValueError as error:
        invalid = str(error)
        wsd_flags = [flag for flag in ("--decay-fraction", "--decay-shape") if getattr(args, flag[2:].replace("-", "_"), None) is not None]
        if any(f"'{flag[2:].replace('-', '_')}'" in invalid for flag in wsd_flags) and invalid.startswith("unknown option"):
            flags = " and ".join(wsd_flags)
            invalid = (
                f"{flags} {'applies' if len(wsd_flags) == 1 else 'apply'} only to the wsd schedule, which this study "
                f"does not use: add --schedule wsd (or --mode resume, which uses it), or drop {flags}."
            )
    if invalid is not None and not _study_may_exist(args.storage):
        raise UsageError(invalid)

    storage = open_storage(args.storage, args.db_wait)
    study_name = args.study_name or study_file.default_study_name
    try:
        existing = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        existing = None

    if existing is not None:
        database = database_for(existing._storage)
        stored = load_settings(database, existing)
        # A process that created the study at the same moment may not have stored its
        # settings yet. A study that already has trials and no settings is not budgetsearch's.
        deadline = time.monotonic() + 10
        while stored is None and time.monotonic() < deadline and not existing.get_trials(deepcopy=False):
            time.sleep(0.2)
            stored = load_settings(database, existing)
        if stored is None:
            raise UsageError(
                f"study {study_name!r} exists in {mask_url(args.storage)} but was not created by "
                "budgetsearch; pick another --study-name."
            )
        if "schedule_options" in explicit:
            explicit["schedule_options"] = {**stored.schedule_options, **{
                key: explicit["schedule_options"][key]
                for key in ("decay_fraction", "decay_shape")
                if key in explicit["schedule_options"]
            }}
        conflicts = {name: (getattr(stored, name), value) for name, value in explicit.items() if getattr(stored, name) != value}
        if explicit.get("seed") is None:
            conflicts.pop("seed", None)
        if conflicts:
            raise UsageError(mismatch_message(study_name, conflicts))
        try:
            requested = dataclasses.replace(stored, **explicit)
            check_settings_match(stored, requested, study_name)
        except ValueError as error:
            raise UsageError(str(error)) from None
        return existing, stored

    if not create:
        raise UsageError(
            f"study {study_name!r} not found in {mask_url(args.storage)}: create it first with "
            "`budgetsearch create` (or `budgetsearch run`), or check --study-name and --storage."
        )
    if invalid is not None or settings is None:
        raise UsageError(invalid or "invalid study settings")

    sampler = BudgetSampler(settings=settings)
    study = optuna.create_study(
        study_name=study_name, storage=storage, direction=settings.direction, sampler=sampler, load_if_exists=True
    )
    try:
        stored = sampler.settings_for(study)
    except ValueError as error:
        raise UsageError(str(error)) from None
    return study, stored


def _study_may_exist(url: str) -> bool:
    """Return False when ``url`` is a SQLite file that does not exist yet."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return False
    if parsed.get_backend_name() != "sqlite":
        return True
    return bool(parsed.database) and parsed.database != ":memory:" and os.path.exists(parsed.database)


# -- run -----------------------------------------------------------------------------


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # A broken CUDA set-up means CPU workers.
        return 0


def _parse_devices(text: Optional[str]) -> List[str]:
    """Return the devices of ``--devices``: ``cpu``, ``cuda:N`` entries, or ``auto`` (every GPU, else the CPU)."""
    if text is not None and not text.strip():
        raise UsageError("--devices is empty: use auto, cpu or cuda:N, separated by commas.")
    if text and text.strip() != "auto":
        devices = [item.strip() for item in text.split(",") if item.strip()]
        for device in devices:
            if device != "cpu" and not (device.startswith("cuda:") and device[5:].isdigit()):
                raise UsageError(f"--devices entry {device!r} is invalid: use auto, cpu or cuda:N, separated by commas.")
        wanted = [int(device[5:]) for device in devices if device.startswith("cuda:")]
        if wanted:
            count = _gpu_count()
            missing = [index for index in wanted if index >= count]
            if missing:
                present = f"cuda:0 to cuda:{count - 1}" if count else "none"
                raise UsageError(
                    f"--devices entry cuda:{missing[0]} is not on this machine (its CUDA GPUs: {present}): "
                    "pick from those, or use auto or cpu."
                )
        return devices
    return [f"cuda:{index}" for index in range(_gpu_count())] or ["cpu"]


def _cpu_sets(workers: int) -> List[List[int]]:
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if workers >= len(cores):
        return [[cores[index % len(cores)]] for index in range(workers)]
    return [cores[index::workers] for index in range(workers)]


def command_run(args: argparse.Namespace) -> int:
    from budgetsearch._studyfile import load_study_file

    study_file = load_study_file(args.study_file)
    devices = _parse_devices(args.devices)
    study, settings = open_study(args, study_file)
    workers = args.workers or len(devices)
    cpu_sets = _cpu_sets(workers)
    timeout = args.timeout if args.timeout is not None else study_file.defaults.timeout
    deadline = None if timeout is None else time.time() + timeout

    processes = []
    for index in range(workers):
        environment = dict(os.environ)
        environment[STORAGE_ENVIRONMENT_VARIABLE] = args.storage
        environment["BUDGETSEARCH_DEVICE"] = devices[index % len(devices)]
        environment[CPUS_ENVIRONMENT_VARIABLE] = ",".join(str(core) for core in cpu_sets[index])
        threads = str(len(cpu_sets[index]))
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            environment[name] = threads
        if devices[index % len(devices)].startswith("cuda:"):
            environment["CUDA_VISIBLE_DEVICES"] = devices[index % len(devices)].split(":")[1]
            environment["BUDGETSEARCH_DEVICE"] = "cuda:0"
        command = [
            sys.executable, "-m", "budgetsearch", "worker", args.study_file,
            "--study-name", study.study_name, "--worker-id", f"w{index}",
        ]
        if deadline is not None:
            command += ["--deadline", repr(deadline)]
        command += ["--db-wait", repr(args.db_wait)]
        if args.verbose:
            command.append("--verbose")
        processes.append(subprocess.Popen(command, env=environment))

    print(
        f"Study {study.study_name!r} in {mask_url(args.storage)}: {workers} worker(s) on "
        f"{', '.join(sorted(set(devices[:workers])))}; ladder {list(settings.ladder.budgets)} {settings.budget_unit}, "
        f"total budget {settings.total_budget if settings.total_budget is not None else 'unlimited'}.",
        flush=True,
    )
    interactive = sys.stdout.isatty()
    started = time.time()
    stopping = False
    # SIGTERM stops the workers like Ctrl-C does, so that none is left running alone.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while any(process.poll() is None for process in processes):
            if interactive:
                _print_progress(study, started)
            time.sleep(1.0)
    except KeyboardInterrupt:
        stopping = True
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait()
    if interactive:
        sys.stdout.write("\n")

    from budgetsearch._status import summary

    _print_summary(summary(study), time.time() - started)
    codes = [process.returncode for process in processes]
    if stopping:
        return 130
    return 0 if all(code == 0 for code in codes) else 1


def _print_progress(study: Any, started: float) -> None:
    from budgetsearch._status import progress

    snapshot = progress(study)
    total = snapshot["total_budget"]
    rungs = " ".join(f"r{rung}:{count}" for rung, count in snapshot["finished_per_rung"].items())
    best = snapshot["best"]
    best_text = "-" if best is None else f"{best[0]:.4g} (rung {best[1]})"
    line = (
        f"\r[{time.time() - started:6.0f}s] reserved {snapshot['reserved']}"
        f"{'' if total is None else '/' + str(total)}  finished {rungs or '-'}  "
        f"running {snapshot['running']}  best {best_text}"
    )
    sys.stdout.write(line[:200].ljust(100))
    sys.stdout.flush()


# Labels of the summary's trial counts that differ from Optuna's state names.
TRIAL_STATE_LABELS = {"fail": "failed", "no_job": "pruned without a job"}


def _print_summary(data: Dict[str, Any], elapsed: Optional[float] = None) -> None:
    lines = [
        f"Study {data['study_name']!r}: {data['direction']} {data['metric']}, {data['algorithm']} in "
        f"{data['mode']} mode, {data['schedule']} schedule, budgets in {data['budget_unit']}.",
        f"Budget reserved {data['budget_reserved']} of "
        f"{data['total_budget'] if data['total_budget'] is not None else 'unlimited'}; spent {data['budget_spent']}."
        + ("" if elapsed is None else f" Wall-clock time {elapsed:.0f} s."),
        # Optuna's trial states: a lost trial is failed there, and a trial that got no job is pruned.
        "Optuna trials: " + (", ".join(
            f"{count} {TRIAL_STATE_LABELS.get(state, state)}" for state, count in data["trials"].items() if count
        ) or "none"),
        f"{'rung':>4} {'budget':>8} {'complete':>8} {'pruned':>6} {'failed':>6} {'lost':>4} {'running':>7} {'promoted':>8}",
    ]
    for rung in data["rungs"]:
        lines.append(
            f"{rung['rung']:>4} {rung['budget']:>8} {rung['complete']:>8} {rung['pruned']:>6} "
            f"{rung['failed']:>6} {rung['lost']:>4} {rung['running']:>7} {rung['promoted']:>8}"
        )
    if data["algorithm"] == "hyperband":
        for bracket in data["brackets"]:
            results = ", ".join(f"rung {rung}: {count}" for rung, count in bracket["results_per_rung"].items())
            lines.append(f"Bracket {bracket['bracket']}: {bracket['configurations']} configurations; results {results}.")
    if data["mode"] == "resume":
        lines.append(f"Trials that continued a parent's trunk checkpoint: {data['resumed']}.")
    if data["stale_running"]:
        lines.append(
            f"Running trials without a heartbeat for the grace period: {data['stale_running']}. Their workers are "
            "likely gone, and the next worker that requests a job declares them lost."
        )
    best = data["best"]
    if best is None:
        lines.append("Best: no complete trial yet.")
    else:
        lines.append(
            f"Best: {data['metric']} {best['value']:.6g} at rung {best['rung']} (budget {best['budget']}), "
            f"trial {best['trial_number']}, params {json.dumps(best['params'], sort_keys=True)}"
        )
    print("\n".join(lines), flush=True)


# -- worker --------------------------------------------------------------------------


def _limit_cpus() -> None:
    text = os.environ.get(CPUS_ENVIRONMENT_VARIABLE)
    if not text:
        return
    cores = {int(item) for item in text.split(",") if item}
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    # torch reads OMP_NUM_THREADS when it starts; a torch already imported is set directly.
    os.environ["OMP_NUM_THREADS"] = str(len(cores))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(len(cores))


def command_create(args: argparse.Namespace) -> int:
    from budgetsearch._studyfile import load_study_file

    study_file = load_study_file(args.study_file)
    study, settings = open_study(args, study_file)
    print(
        f"Study {study.study_name!r} in {mask_url(args.storage)}: ladder {list(settings.ladder.budgets)} "
        f"{settings.budget_unit}, total budget {settings.total_budget if settings.total_budget is not None else 'unlimited'}, "
        f"{settings.algorithm} in {settings.mode} mode. "
        "Start workers with `budgetsearch worker`."
    )
    return 0


def command_worker(args: argparse.Namespace) -> int:
    import optuna

    from budgetsearch._studyfile import load_study_file
    from budgetsearch._worker import run_worker

    _limit_cpus()
    study_file = load_study_file(args.study_file)
    study, _settings = open_study(args, study_file, create=False)
    deadline = args.deadline
    if args.timeout is not None:
        deadline = time.time() + args.timeout
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    report = run_worker(
        study.study_name,
        study._storage,
        study_file.objective,
        worker_id=args.worker_id or f"{os.uname().nodename}:{os.getpid()}",
        deadline=deadline,
    )
    if report.stopped_by_error:
        print(f"budgetsearch: error: {report.stopped_by_error}", file=sys.stderr)
        return 1
    if report.stopped_by_signal:
        # The shell's convention: 130 after SIGINT, 143 after SIGTERM.
        return 128 + report.stopped_by_signal
    if not (report.complete or report.pruned or report.failed or report.lost) and (
        deadline is None or time.time() < deadline
    ):
        print(
            f"budgetsearch worker: study {study.study_name!r} has no job left that fits its total budget "
            "or trial limit, so this worker ran no trial. `budgetsearch status` shows its progress.",
            file=sys.stderr,
        )
    return 0


# -- compare ------------------------------------------------------------------------


def _make_folder(path: str, flag: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise UsageError(f"{flag} {path!r} cannot be used as a folder: {error.strerror}. Pick a writable folder.") from None


def command_compare(args: argparse.Namespace) -> int:
    # Every module this process uses is imported now, so that a comparison that runs for hours
    # does not mix two versions of the package if its files change meanwhile.
    from budgetsearch import _compare, _objective, _rank, _resume, _sampler, _status, schedules  # noqa: F401
    from budgetsearch._studyfile import load_study_file

    try:
        methods = _compare.parse_methods(args.methods)
        seeds = _compare.parse_seeds(args.seeds, methods)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.rank_correlation is not None and args.rank_correlation < 3:
        raise UsageError(f"--rank-correlation {args.rank_correlation} is too small: a rank correlation needs at least 3 configurations.")
    study_file = load_study_file(args.study_file)
    defaults = study_file.defaults
    total_budget = args.total_budget or (10 * defaults.max_budget)
    if total_budget < defaults.max_budget:
        raise UsageError(
            f"--total-budget {total_budget} is below the study's maximum budget {defaults.max_budget}: "
            "give at least that, and 10 times it for a useful comparison."
        )
    if args.schedule is not None:
        from budgetsearch._settings import SCHEDULE_NAMES

        if args.schedule not in SCHEDULE_NAMES:
            raise UsageError(f"--schedule {args.schedule!r} is invalid: choose one of {', '.join(SCHEDULE_NAMES)}.")
    if getattr(study_file.module, "test_value", None) is None:
        print(
            f"budgetsearch: {args.study_file} defines no test_value(params, budget, *, schedule, seed, device): "
            "incumbents are not retrained, and the test columns stay empty.",
            file=sys.stderr,
        )
    _make_folder(os.path.join(args.out, "runs"), "--out")
    existing = sorted(name for name in os.listdir(os.path.join(args.out, "runs")) if name.endswith((".db", ".json")))
    if existing and not args.resume:
        raise UsageError(
            f"--out {args.out!r} already contains runs ({existing[0]}, ...): pick an empty folder, "
            "or pass --resume to keep its finished runs and run the rest."
        )
    environment = dict(os.environ)
    environment.pop(STORAGE_ENVIRONMENT_VARIABLE, None)
    # A finished run is kept by --resume only if it ran under these conditions.
    conditions = {
        "study_file": os.path.basename(args.study_file),
        "total_budget": total_budget,
        "workers": args.workers,
        "retrain_seeds": args.retrain_seeds,
        "schedule": args.schedule,
    }
    if args.resume:
        try:
            _compare.check_saved_runs(args.out, conditions)
        except ValueError as error:
            raise UsageError(str(error)) from None

    # SIGTERM ends compare as Ctrl-C does: the running run's processes stop first.
    previous_handler = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        _compare_runs(args, study_file, methods, seeds, total_budget, conditions, environment)
    except (KeyboardInterrupt, _Terminated) as interruption:
        signal_number = interruption.signal_number if isinstance(interruption, _Terminated) else signal.SIGINT
        print(
            f"compare: stopped by {signal.Signals(signal_number).name}. Run the same command with --resume "
            "to keep the finished runs and run the rest.",
            file=sys.stderr,
        )
        return 128 + signal_number
    except _rank.MeasurementError as error:
        print(f"budgetsearch: error: {error}. Fix it, then run the same command with --resume.", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    return 0


class _Terminated(Exception):
    """Raised in the main thread when SIGTERM arrives during ``budgetsearch compare``."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal_number)
        self.signal_number = signal_number


def _raise_terminated(signal_number: int, _frame: Any) -> None:
    raise _Terminated(signal_number)


def _compare_runs(
    args: argparse.Namespace, study_file: Any, methods: list, seeds: Dict[str, int], total_budget: int,
    conditions: Dict[str, Any], environment: Dict[str, str],
) -> None:
    from budgetsearch import _compare

    defaults = study_file.defaults
    results = []
    for method in methods:
        for seed in range(seeds[method.name]):
            name = _compare.run_name(method, seed)
            try:
                result = _compare.load_run(args.out, method, seed) if args.resume else None
            except ValueError as error:
                raise UsageError(str(error)) from None
            if result is not None and result.retrained:
                print(f"compare: {name}: kept the finished run from {args.out}", flush=True)
            else:
                if result is None:
                    _compare.discard_partial_run(args.out, name)
                    print(f"compare: {method.name}, seed {seed} ...", flush=True)
                    result = _compare.run_method(
                        args.study_file, study_file, method, seed, total_budget, args.workers, args.out, args.schedule,
                        environment,
                    )
                    # Saved before retraining, so that an interrupted retraining does not repeat the search.
                    _compare.save_run(args.out, result, conditions)
                else:
                    print(f"compare: {name}: kept the finished search, retraining its incumbent ...", flush=True)
                _compare.retrain(args.study_file, study_file, result, args.retrain_seeds, defaults.max_budget, args.workers)
                _compare.save_run(args.out, result, conditions)
                print(f"compare: {method.name}, seed {seed}: {_run_line(result)}", flush=True)
            results.append(result)
            _compare.write_outputs(args.out, results, methods, total_budget, defaults.direction, defaults.metric)
    written = "results.csv, results.md and anytime.png"
    if args.rank_correlation:
        from budgetsearch import _rank

        print(f"compare: rank correlation on {args.rank_correlation} configurations ...", flush=True)
        records = _rank.measure_or_load(study_file, args.rank_correlation, args.out, resume=args.resume)
        ladder = defaults.resolve().ladder.budgets
        _rank.write(
            args.out, records, defaults.direction, defaults.metric,
            f"maximum budget {ladder[-1]} and first rung {ladder[0]} {defaults.budget_unit}",
        )
        written += ", rank_correlation.csv, rank_correlation.md and rank_correlation.png"
    print(f"compare: wrote {written} in {args.out}")


def _run_line(result: Any) -> str:
    """Return the progress line of one finished comparison run."""
    if result.best_value is None:
        return (
            f"no trial reached the maximum budget within the total budget, compute {result.compute:.0f}, "
            f"{result.wall_seconds:.0f} s"
        )
    values = ", ".join(f"{value:.4g}" for value in result.test_values)
    tests = f"test values [{values}]" if values else "no test values (the study file has no test_value)"
    return f"best {result.best_value:.4g}, compute {result.compute:.0f}, {tests}, {result.wall_seconds:.0f} s"


def command_compare_worker(args: argparse.Namespace) -> int:
    from budgetsearch import _compare
    from budgetsearch._studyfile import load_study_file

    _limit_cpus()
    study_file = load_study_file(args.study_file)
    optuna_logging_warnings()
    storage = open_storage(args.storage)
    _compare.run_baseline_worker(study_file, storage, args.study_name, _compare.METHODS[args.method], args.worker_index)
    return 0


def optuna_logging_warnings() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def command_report(args: argparse.Namespace) -> int:
    import optuna

    from budgetsearch._report import write_report

    if not _study_may_exist(args.storage):
        raise UsageError(f"storage {mask_url(args.storage)} not found: pass the --storage URL the study was created with.")
    storage = open_storage(args.storage)
    try:
        study = optuna.load_study(study_name=args.study_name, storage=storage)
    except KeyError:
        raise UsageError(f"study {args.study_name!r} not found in {mask_url(args.storage)}.") from None
    _make_folder(args.out, "--out")
    try:
        names = write_report(study, args.out)
    except ValueError as error:
        raise UsageError(str(error)) from None
    print(f"Wrote {', '.join(names)} in {args.out}")
    return 0


# -- status and db -------------------------------------------------------------------


def command_status(args: argparse.Namespace) -> int:
    import optuna

    from budgetsearch._status import summary

    if not _study_may_exist(args.storage):
        raise UsageError(f"storage {mask_url(args.storage)} not found: pass the --storage URL the study was created with.")
    storage = open_storage(args.storage)
    if args.study_name is None:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
        raise UsageError(f"--study-name is required; studies in {mask_url(args.storage)}: {', '.join(names) or 'none'}.")
    try:
        study = optuna.load_study(study_name=args.study_name, storage=storage)
    except KeyError:
        raise UsageError(f"study {args.study_name!r} not found in {mask_url(args.storage)}.") from None
    try:
        data = summary(study)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        _print_summary(data)
    return 0


def command_db(args: argparse.Namespace) -> int:
    from budgetsearch._tables import SCHEMA_VERSION, database_for

    storage = open_storage(args.storage)
    database_for(storage, upgrade=True)
    print(f"budgetsearch tables in {mask_url(args.storage)} are at schema version {SCHEMA_VERSION}.")
    return 0


# -- parser --------------------------------------------------------------------------


def _add_storage(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage",
        type=_storage_url,
        # An empty variable counts as unset.
        default=os.environ.get(STORAGE_ENVIRONMENT_VARIABLE) or DEFAULT_STORAGE,
        help=f"SQLAlchemy URL of the study database (default: ${STORAGE_ENVIRONMENT_VARIABLE} or {DEFAULT_STORAGE}).",
    )


def _add_study_flags(parser: argparse.ArgumentParser, *, runs_trials: bool = True) -> None:
    from budgetsearch._settings import ALGORITHMS, BUDGET_UNITS, DEFAULT_DB_WAIT, MODES, SAMPLERS, SCHEDULE_NAMES

    parser.add_argument("study_file", help="Python file that defines objective(trial) and DEFAULTS.")
    _add_storage(parser)
    parser.add_argument("--study-name", help="study name (default: the study file's name without .py).")
    group = parser.add_argument_group(
        "study settings", "Override the study file's DEFAULTS when the study is created; for an existing study they must match what it stores."
    )
    group.add_argument(
        "--algorithm",
        choices=ALGORITHMS,
        help="asha: one successive-halving ladder; hyperband: brackets starting at every rung; fixed: every trial at the max budget.",
    )
    group.add_argument(
        "--mode",
        choices=MODES,
        help="restart: every trial trains from scratch for its budget; resume: a promoted trial "
        "continues its parent's trunk checkpoint (wsd schedule).",
    )
    group.add_argument(
        "--decay-fraction", type=_fraction, help="wsd schedule: fraction of each budget spent decaying, in (0, 1); default 0.2."
    )
    group.add_argument("--decay-shape", choices=("linear", "sqrt"), help="wsd schedule: shape of the decay to 0.")
    group.add_argument("--artifact-dir", help="resume mode: folder of the trunk checkpoints (default: ./budgetsearch-artifacts).")
    group.add_argument("--n-min", type=_positive_int, help="results a rung needs before the base sampler learns from it (default: parameters + 1).")
    group.add_argument("--schedule", choices=SCHEDULE_NAMES, help="learning-rate schedule fitted to each trial's budget.")
    group.add_argument("--sampler", choices=SAMPLERS, help="base Optuna sampler for new configurations.")
    group.add_argument("--seed", type=int, help="study seed; each trial's sampler seed derives from it and the trial number.")
    group.add_argument("--min-budget", type=_positive_int, help="budget of rung 0, in the study's budget unit.")
    group.add_argument("--max-budget", type=_positive_int, help="budget of the top rung, in the study's budget unit.")
    group.add_argument("--reduction-factor", type=_reduction_factor, help="integer eta, at least 2.")
    group.add_argument(
        "--total-budget", type=_positive_int, help="limit on the sum of all trials' reserved budgets, in the budget unit."
    )
    group.add_argument(
        "--n-trials",
        type=_positive_int,
        help="limit on the number of jobs (configuration and rung) in the whole study; retries of a job do not count.",
    )
    group.add_argument("--warmup", type=_non_negative_int, help="learning-rate warm-up, in the budget unit.")
    group.add_argument("--budget-unit", choices=BUDGET_UNITS, help="unit of every budget.")
    group.add_argument(
        "--max-retries",
        type=_non_negative_int,
        help="extra attempts of a job whose worker died or stopped heartbeating (default 2); "
        "a job whose worker SIGINT or SIGTERM stopped runs again without counting.",
    )
    group.add_argument("--heartbeat-interval", type=_positive_seconds, help="seconds between a worker's heartbeats (default 10).")
    group.add_argument(
        "--grace-period",
        type=_positive_seconds,
        help="seconds without a heartbeat after which a trial is lost and its job runs again (default 60).",
    )
    if runs_trials:
        parser.add_argument(
            "--timeout", type=_positive_seconds, help="seconds after which no new trial starts; running trials finish."
        )
    parser.add_argument(
        "--db-wait",
        type=_non_negative_seconds,
        default=DEFAULT_DB_WAIT,
        help=f"seconds to keep retrying a study database that cannot be reached before the command stops with an error (default {DEFAULT_DB_WAIT:.0f}).",
    )
    if runs_trials:
        parser.add_argument("--verbose", action="store_true", help="log every job claimed and finished.")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: the problem and where help is."""

    def error(self, message: str) -> "NoReturn":  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="budgetsearch",
        description="Hyperparameter search under a fixed compute budget: budgeted trials with schedules fitted to each budget.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = subparsers.add_parser("run", help="create or continue a study and run local worker processes on it.")
    _add_study_flags(run)
    run.add_argument("--workers", type=_positive_int, help="number of local worker processes (default: one per device).")
    run.add_argument(
        "--devices",
        help="auto (every GPU, else the CPU; the default), cpu, or comma-separated cuda:N devices; workers take them round-robin.",
    )
    run.set_defaults(handler=command_run)

    create = subparsers.add_parser(
        "create", help="create a study with its settings, or check an existing one's, and start no worker."
    )
    # create runs no trial, so it has no --timeout or --verbose.
    _add_study_flags(create, runs_trials=False)
    create.set_defaults(handler=command_create)

    worker = subparsers.add_parser("worker", help="join a study as one worker process, from any machine that reaches its database.")
    _add_study_flags(worker)
    worker.add_argument(
        "--worker-id",
        help="name of this worker in logs and in the warning about a trial it lost (default: HOST:PID).",
    )
    worker.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    worker.set_defaults(handler=command_worker)

    compare = subparsers.add_parser(
        "compare",
        help="compare budgetsearch with Optuna's pruners on a study file at equal compute.",
        description="Run each method on the study file for --seeds seeds, each until its trials used --total-budget "
        "units, retrain each incumbent at the maximum budget on fresh seeds, and write results.csv, results.md "
        "and anytime.png into --out.",
    )
    compare.add_argument("study_file", help="Python file that defines objective(trial), DEFAULTS and test_value(...).")
    compare.add_argument(
        "--methods",
        default="asha,optuna-hyperband",
        help="comma-separated: asha, asha-resume, hyperband, hyperband-resume, optuna-hyperband, optuna-sha, "
        "optuna-median, tpe-full, random-full (default asha,optuna-hyperband).",
    )
    compare.add_argument("--total-budget", type=_positive_int, help="compute per run in the study's unit (default 10 x the maximum budget).")
    compare.add_argument(
        "--seeds",
        default="1",
        help="seeds per method, numbered from 0: N for every method, then METHOD=N entries for exceptions, "
        "for example 3,asha=5 (default 1).",
    )
    compare.add_argument(
        "--workers", type=_positive_int, default=2, help="worker processes per run, and processes that retrain incumbents (default 2)."
    )
    compare.add_argument("--retrain-seeds", type=_positive_int, default=3, help="fresh seeds to retrain each incumbent on (default 3).")
    compare.add_argument("--schedule", help="schedule of the Optuna-pruner and full-budget methods (default: the study's own).")
    compare.add_argument(
        "--rank-correlation",
        type=_positive_int,
        metavar="K",
        help="also train K random configurations at the maximum and at the first rung's budget, and report how well each cheap measurement ranks them.",
    )
    compare.add_argument(
        "--out", required=True, help="folder for the runs and the results; must not hold runs yet, unless --resume is given."
    )
    compare.add_argument(
        "--resume",
        action="store_true",
        help="continue the comparison in --out: keep its finished runs and run the rest from their start. The study "
        "file's name, --total-budget, --workers, --retrain-seeds and --schedule must be those of the saved runs; "
        "--methods and --seeds may add runs.",
    )
    compare.set_defaults(handler=command_compare)

    compare_worker = subparsers.add_parser("compare-worker", help="run one worker of a compare baseline (started by compare).")
    compare_worker.add_argument("study_file")
    _add_storage(compare_worker)
    compare_worker.add_argument("--study-name", required=True)
    compare_worker.add_argument("--method", required=True)
    compare_worker.add_argument("--worker-index", type=int, default=0)
    compare_worker.set_defaults(handler=command_compare_worker)

    report = subparsers.add_parser(
        "report",
        help="write a study's plots (rung scatter, learning curves, best against budget) and a Markdown summary.",
    )
    _add_storage(report)
    report.add_argument("--study-name", required=True, help="name of the study.")
    report.add_argument("--out", required=True, help="folder for the plots, report.json and summary.md.")
    report.set_defaults(handler=command_report)

    status = subparsers.add_parser("status", help="print a study's progress and best result.")
    _add_storage(status)
    status.add_argument("--study-name", help="the study to show (required; without it, the error lists the studies).")
    status.add_argument("--json", action="store_true", help="print a machine-readable JSON summary.")
    status.set_defaults(handler=command_status)

    db = subparsers.add_parser("db", help="manage budgetsearch's tables in a study database.")
    db_commands = db.add_subparsers(dest="db_command", required=True, parser_class=_Parser)
    upgrade = db_commands.add_parser("upgrade", help="create budgetsearch's tables or bring them to this version's schema.")
    _add_storage(upgrade)
    upgrade.set_defaults(handler=command_db)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    import optuna
    import sqlalchemy.exc

    optuna.logging.set_verbosity(optuna.logging.INFO if getattr(args, "verbose", False) else optuna.logging.WARNING)
    from budgetsearch._sampler import SettingsMismatchError
    from budgetsearch._studyfile import StudyFileError
    from budgetsearch._tables import DatabaseUnavailableError, SchemaVersionError

    try:
        return args.handler(args)
    except (UsageError, StudyFileError, SettingsMismatchError, SchemaVersionError) as error:
        print(f"budgetsearch: error: {error}", file=sys.stderr)
        return 2
    except DatabaseUnavailableError as error:
        print(f"budgetsearch: error: {_mask_in(str(error), getattr(args, 'storage', ''))}", file=sys.stderr)
        return 1
    except sqlalchemy.exc.OperationalError as error:
        storage = getattr(args, "storage", "")
        reason = _mask_in(str(error.orig).strip().splitlines()[0] if error.orig else str(error), storage)
        if storage:
            print(
                f"budgetsearch: error: the study database {mask_url(storage)} failed: {reason}. "
                "Check that the server is running and reachable, then run the command again.",
                file=sys.stderr,
            )
        else:
            # compare keeps its runs' SQLite files in its --out folder.
            print(f"budgetsearch: error: a database operation failed: {reason}.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of the output, such as `head`, closed it early.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
