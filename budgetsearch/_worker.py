"""The worker loop: claim a job, run the objective, record the result, repeat."""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import optuna
import sqlalchemy as sa
from optuna.trial import TrialState

from budgetsearch import _attrs
from budgetsearch._jobs import FAILED, INTERRUPTED, RUNNING
from budgetsearch._pruner import BudgetPruner
from budgetsearch._sampler import BudgetSampler
from budgetsearch._tables import DatabaseUnavailableError, claims_table, database_for

logger = logging.getLogger(__name__)


class WorkerStopped(BaseException):
    """Raised inside a running objective when the worker receives SIGINT or SIGTERM."""


@dataclass
class WorkerReport:
    """Counts of the trials one worker ran, by outcome."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    lost: int = 0
    # The number of the signal (SIGINT or SIGTERM) that stopped the worker, if one did.
    stopped_by_signal: Optional[int] = None
    # Set when the worker stopped because its last trials failed with one error.
    stopped_by_error: Optional[str] = None
    # The errors of the trials that failed before their first report, since the last
    # trial that did not.
    recent_errors: list = field(default_factory=list)


# A worker stops when this many trials in a row fail with the same error before they
# report anything (missing data, say), so that a broken set-up does not use up the
# study's budget on failed trials.
REPEATED_FAILURES = 3


class _SignalStop:
    """Turn the first SIGINT or SIGTERM into a clean stop of the running trial."""

    def __init__(self) -> None:
        # A plain flag: a signal handler must not take locks, as Event.set() does, or a
        # second signal arriving during the first handler could deadlock the worker.
        self.requested = False
        self.signal_number: Optional[int] = None
        # The signal interrupts only a running objective; elsewhere (claims, tell) it
        # lets the step finish and the loop ends at the next check.
        self.in_objective = False
        self._previous: dict = {}

    def __enter__(self) -> "_SignalStop":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.requested:
            return
        self.requested = True
        self.signal_number = signum
        if self.in_objective:
            raise WorkerStopped(signal.Signals(signum).name)


class _Heartbeat:
    """A thread that stamps the running trial's claim every ``interval`` seconds.

    PyTorch releases the GIL in its kernels and CPython switches threads every few
    milliseconds otherwise, so long training steps do not stop the beat.
    """

    def __init__(self, database: Any, study_id: int, trial_number: int, interval: float, worker_id: str) -> None:
        self._database = database
        self._study_id = study_id
        self._trial_number = trial_number
        self._interval = interval
        self._worker_id = worker_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial_number}", daemon=True)

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        failures = 0
        while not self._stop.wait(self._interval):
            try:
                # No waiting for an unreachable database: the next beat tries again.
                self._database.run(self._beat, attempts=3, wait=False)
                failures = 0
            except (sa.exc.SQLAlchemyError, DatabaseUnavailableError) as error:
                failures += 1
                # Logged once per run of failures, so an outage does not flood the log.
                if failures == 1:
                    logger.warning(
                        "Worker %s: heartbeat of trial %d failed: %s", self._worker_id, self._trial_number, error
                    )

    # NOTE: heartbeats are time.time() of the worker's machine, compared with the clock
    # of the worker that checks them: machines whose clocks differ by more than the
    # grace period minus the interval would declare live trials lost.
    def _beat(self, connection: sa.engine.Connection) -> None:
        connection.execute(
            claims_table.update()
            .where(claims_table.c.study_id == self._study_id)
            .where(claims_table.c.trial_number == self._trial_number)
            .where(claims_table.c.state == RUNNING)
            .values(heartbeat_at=time.time())
        )


def run_worker(
    study_name: str,
    storage: Any,
    objective: Callable[[optuna.trial.Trial], Any],
    *,
    worker_id: str = "worker",
    deadline: Optional[float] = None,
    max_jobs: Optional[int] = None,
) -> WorkerReport:
    """Run jobs of an existing study until no job fits, ``deadline`` passes or a signal arrives.

    ``deadline`` is a ``time.time()`` value after which no new trial starts. An objective
    that raises or returns a value that is not a finite number fails its own trial for
    good and the worker goes on. A trial interrupted by SIGINT or SIGTERM is failed
    and its job is released to the next attempt, so another worker runs it again.
    """
    sampler = BudgetSampler(use_stored_settings=True, send_heartbeats=True)
    # Claims carry the worker's log name, so a lost trial's warning names the worker that ran
    # it. The host and process id stay in the name because two hosts may use the same name.
    if worker_id != sampler._worker:
        sampler._worker = f"{worker_id} ({sampler._worker})"[:128]
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler, pruner=BudgetPruner())
    settings = sampler.settings_for(study)
    database = database_for(study._storage)
    report = WorkerReport()
    logger.info("Worker %s started on study %r.", worker_id, study_name)

    with _SignalStop() as stop:
        while not stop.requested:
            if deadline is not None and time.time() >= deadline:
                logger.info("Worker %s reached its timeout; no new trial starts.", worker_id)
                break
            if max_jobs is not None and report.complete + report.pruned + report.failed >= max_jobs:
                break
            if sampler.peek_job(study) is None:
                # Budget held by running trials may come back if one of them is lost,
                # so the worker waits for them before it stops.
                if _running_claims(database, study._study_id) == 0:
                    logger.info("Worker %s stops: no job fits the study's limits.", worker_id)
                    break
                # Check often: a running trial's end can free budget or end the study.
                _sleep_unless_stopped(stop, min(1.0, settings.heartbeat_interval))
                continue
            trial = study.ask()

            if trial.user_attrs.get(_attrs.BUDGET) is None:
                # Another worker took the last job that fitted between the check and the claim.
                study.tell(trial, state=TrialState.PRUNED)
                break

            with _Heartbeat(database, study._study_id, trial.number, settings.heartbeat_interval, worker_id):
                outcome, error = _run_trial(study, trial, objective, worker_id, stop)
            if outcome == "failed" and error is not None and not study._storage.get_trial(trial._trial_id).intermediate_values:
                report.recent_errors = report.recent_errors + [error]
            else:
                report.recent_errors = []
            repeated = report.recent_errors[-REPEATED_FAILURES:]
            if len(repeated) == REPEATED_FAILURES and repeated[0] is not None and len(set(repeated)) == 1:
                report.failed += 1
                report.stopped_by_error = (
                    f"worker {worker_id} stopped: its last {REPEATED_FAILURES} trials failed with the same error: "
                    f"{repeated[0]}"
                )
                logger.error("%s", report.stopped_by_error)
                break
            if outcome == "lost":
                _mark_interrupted(database, study._study_id, trial.number)
                report.lost += 1
                report.stopped_by_signal = stop.signal_number
                break
            if outcome == "discarded":
                report.lost += 1
                continue
            setattr(report, outcome, getattr(report, outcome) + 1)

    if stop.requested:
        report.stopped_by_signal = stop.signal_number
    logger.info(
        "Worker %s stopped: %d complete, %d pruned, %d failed, %d lost.",
        worker_id, report.complete, report.pruned, report.failed, report.lost,
    )
    return report


def _run_trial(
    study: optuna.Study, trial: optuna.trial.Trial, objective: Callable, worker_id: str, stop: _SignalStop
) -> tuple:
    """Run the objective on ``trial`` and tell Optuna its end; return the outcome and the error text, if any."""
    try:
        stop.in_objective = True
        if stop.requested:
            # The signal arrived while the trial was claimed, before its objective started.
            raise WorkerStopped(signal.Signals(stop.signal_number).name if stop.signal_number else "a stop request")
        try:
            value = objective(trial)
        finally:
            stop.in_objective = False
    except optuna.TrialPruned:
        return ("pruned" if _tell(study, trial, worker_id, state=TrialState.PRUNED) is not None else "discarded"), None
    except WorkerStopped as interruption:
        logger.warning(
            "Worker %s stopped by %s during trial %d; its job goes to the next attempt.",
            worker_id, interruption, trial.number,
        )
        _tell(study, trial, worker_id, state=TrialState.FAIL)
        return "lost", None
    except DatabaseUnavailableError:
        raise  # The worker stops; its trial's heartbeat stops too, so another worker runs the job again.
    except (Exception, SystemExit, KeyboardInterrupt) as error:  # An objective's error fails its own trial only.
        logger.warning("Worker %s: trial %d failed: %s: %s", worker_id, trial.number, type(error).__name__, error, exc_info=True)
        outcome = "failed" if _tell(study, trial, worker_id, state=TrialState.FAIL) is not None else "discarded"
        return outcome, f"{type(error).__name__}: {error}"

    if not _is_finite_number(value):
        logger.warning(
            "Worker %s: trial %d failed: the objective returned %r, not a finite number.", worker_id, trial.number, value
        )
        outcome = "failed" if _tell(study, trial, worker_id, state=TrialState.FAIL) is not None else "discarded"
        # The same text for every such value of one type, so that a repeated wrong return stops the worker.
        returned = repr(value) if isinstance(value, float) else f"a {type(value).__name__}"
        return outcome, f"the objective returned {returned}, not a finite number"
    frozen = _tell(study, trial, worker_id, value)
    if frozen is None:
        return "discarded", None
    if frozen.state == TrialState.COMPLETE:
        logger.info("Worker %s: trial %d finished with value %r.", worker_id, trial.number, frozen.value)
        return "complete", None
    logger.warning("Worker %s: trial %d failed: the objective returned %r, not a finite number.", worker_id, trial.number, value)
    return "failed", None


def _tell(study: optuna.Study, trial: optuna.trial.Trial, worker_id: str, *args: Any, **kwargs: Any) -> Any:
    """Tell Optuna a trial's end; return None if the trial was already failed as lost."""
    try:
        return study.tell(trial, *args, **kwargs)
    except ValueError as error:
        if "Cannot tell" not in str(error):
            raise
        logger.warning(
            "Worker %s: trial %d was declared lost (its heartbeat was late), so its result is discarded.",
            worker_id, trial.number,
        )
        return None


def _is_finite_number(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _sleep_unless_stopped(stop: _SignalStop, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not stop.requested and time.monotonic() < deadline:
        time.sleep(min(0.1, seconds))


def _running_claims(database: Any, study_id: int) -> int:
    """Count the running claims whose budget may come back: those with heartbeats.

    A claim without heartbeats (a trial of ``study.optimize``) is never declared lost,
    so waiting for it could last forever.
    """

    def count(connection: sa.engine.Connection) -> int:
        return int(
            connection.execute(
                sa.select(sa.func.count())
                .select_from(claims_table)
                .where(claims_table.c.study_id == study_id)
                .where(claims_table.c.state == RUNNING)
                .where(claims_table.c.heartbeat_at.is_not(None))
            ).scalar()
        )

    return database.run(count)


def _mark_interrupted(database: Any, study_id: int, trial_number: int) -> None:
    def update(connection: sa.engine.Connection) -> None:
        sequence = database.next_sequence(connection, study_id)
        connection.execute(
            claims_table.update()
            .where(claims_table.c.study_id == study_id)
            .where(claims_table.c.trial_number == trial_number)
            # A claim another worker already declared lost stays lost, so it still counts as a retry.
            .where(claims_table.c.state.in_((RUNNING, FAILED)))
            # The next attempt reserves the job's budget again, so this one keeps only what it trained.
            .values(state=INTERRUPTED, reserved=sa.func.coalesce(claims_table.c.spent, 0), finished_sequence=sequence)
        )

    database.run(update)
