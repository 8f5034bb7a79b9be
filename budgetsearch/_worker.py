"""The worker loop: claim a job, run the objective, record the result, repeat."""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import optuna
import sqlalchemy as sa
from optuna.trial import TrialState

from budgetsearch import _attrs
from budgetsearch._jobs import LOST
from budgetsearch._pruner import BudgetPruner
from budgetsearch._sampler import BudgetSampler
from budgetsearch._tables import claims_table, database_for

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
    stopped_by_signal: bool = False


class _SignalStop:
    """Turn the first SIGINT or SIGTERM into a clean stop of the running trial."""

    def __init__(self) -> None:
        self.requested = threading.Event()
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
        if self.requested.is_set():
            return
        self.requested.set()
        if self.in_objective:
            raise WorkerStopped(signal.Signals(signum).name)


# NOTE: a worker killed with SIGKILL, or whose machine dies, leaves its trial RUNNING
# and its claim unfinished; no heartbeat fails such a trial or releases its job yet.
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
    sampler = BudgetSampler(use_stored_settings=True)
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler, pruner=BudgetPruner())
    sampler.settings_for(study)
    database = database_for(study._storage)
    report = WorkerReport()
    logger.info("Worker %s started on study %r.", worker_id, study_name)

    with _SignalStop() as stop:
        while not stop.requested.is_set():
            if deadline is not None and time.time() >= deadline:
                logger.info("Worker %s reached its timeout; no new trial starts.", worker_id)
                break
            if max_jobs is not None and report.complete + report.pruned + report.failed >= max_jobs:
                break
            if sampler.peek_job(study) is None:
                logger.info("Worker %s stops: no job fits the study's limits.", worker_id)
                break
            trial = study.ask()

            if trial.user_attrs.get(_attrs.BUDGET) is None:
                # Another worker took the last job that fitted between the check and the claim.
                study.tell(trial, state=TrialState.PRUNED)
                break

            outcome = _run_trial(study, trial, objective, worker_id, stop)
            if outcome == "lost":
                _mark_lost(database, study._study_id, trial.number)
                report.lost += 1
                report.stopped_by_signal = True
                break
            setattr(report, outcome, getattr(report, outcome) + 1)

    if stop.requested.is_set():
        report.stopped_by_signal = True
    logger.info(
        "Worker %s stopped: %d complete, %d pruned, %d failed, %d lost.",
        worker_id, report.complete, report.pruned, report.failed, report.lost,
    )
    return report


def _run_trial(
    study: optuna.Study, trial: optuna.trial.Trial, objective: Callable, worker_id: str, stop: _SignalStop
) -> str:
    try:
        stop.in_objective = True
        if stop.requested.is_set():
            raise WorkerStopped("a stop request")
        try:
            value = objective(trial)
        finally:
            stop.in_objective = False
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
        return "pruned"
    except WorkerStopped as interruption:
        logger.warning(
            "Worker %s stopped by %s during trial %d; its job goes to the next attempt.",
            worker_id, interruption, trial.number,
        )
        study.tell(trial, state=TrialState.FAIL)
        return "lost"
    except Exception as error:  # An objective's error fails its own trial only.
        logger.warning("Worker %s: trial %d failed: %s: %s", worker_id, trial.number, type(error).__name__, error, exc_info=True)
        study.tell(trial, state=TrialState.FAIL)
        return "failed"

    frozen = study.tell(trial, value)
    if frozen.state == TrialState.COMPLETE:
        logger.info("Worker %s: trial %d finished with value %r.", worker_id, trial.number, frozen.value)
        return "complete"
    logger.warning("Worker %s: trial %d failed: the objective returned %r, not a finite number.", worker_id, trial.number, value)
    return "failed"


def _mark_lost(database: Any, study_id: int, trial_number: int) -> None:
    def update(connection: sa.engine.Connection) -> None:
        connection.execute(
            claims_table.update()
            .where(claims_table.c.study_id == study_id)
            .where(claims_table.c.trial_number == trial_number)
            # The next attempt reserves the job's budget again, so this one keeps only what it trained.
            .values(state=LOST, reserved=sa.func.coalesce(claims_table.c.spent, 0))
        )

    database.run(update)
