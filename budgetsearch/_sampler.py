"""BudgetSampler: assigns each trial a job (configuration, rung, budget) and its parameters."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import socket
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import optuna
import sqlalchemy as sa
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.samplers._lazy_random_state import LazyRandomState
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._rdb import models as rdb_models
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from budgetsearch import _attrs
from budgetsearch._jobs import COMPLETE, FAILED, LOST, PRUNED, RUNNING, Claim, ClaimIndex, Job
from budgetsearch._resume import check_artifact_dir
from budgetsearch._settings import StudySettings
from budgetsearch._tables import (
    SETTINGS_MARKER,
    StudyDatabase,
    claims_table,
    current_settings_row,
    database_for,
    settings_marker,
    settings_row_is_current,
    studies_table,
)

logger = logging.getLogger(__name__)

BaseSamplerSpec = Union[str, BaseSampler, Callable[[int], BaseSampler]]


class SettingsMismatchError(ValueError):
    """Settings given for a study contradict the settings stored with it."""


class NoJobError(optuna.TrialPruned):
    """No job fits the study's remaining total budget or trial limit.

    It subclasses ``optuna.TrialPruned`` so that ``study.optimize`` ends the jobless
    trial as pruned and stops without an error. The trial has the system attribute
    ``budgetsearch:no_job`` and counts in no rung.
    """


@dataclass
class _TrialPlan:
    job: Job
    config: int
    replay: Optional[FrozenTrial] = None
    base_sampler: Optional[BaseSampler] = None
    # The rung whose results the base sampler learns from.
    model_rung: int = 0
    # The base sampler's view of the study, made once per trial.
    view: Optional["_RungStudy"] = None


_CLAIM_COLUMNS = (
    "config",
    "rung",
    "attempt",
    "bracket",
    "budget",
    "reserved",
    "trial_number",
    "config_trial_id",
    "state",
    "value",
    "parent",
    "start_step",
)


class _ClaimCache:
    """A worker's copy of a study's claims, read in full once and then only as they change.

    A claim changes state only in a transaction that holds the study's lock and takes
    the next number of the study's sequence, and a claim that leaves the running state
    stores that number in ``finished_sequence``. So the finished rows numbered above
    the highest number seen so far are exactly the changes since the last read. Running
    rows are few, and each read returns all of them. Use the cache only while holding
    ``lock``.
    """

    def __init__(self, direction: str) -> None:  # noqa: D107
        self.lock = threading.Lock()
        self._direction = direction
        self.reset()

    def reset(self) -> None:
        """Forget everything, so that the next read reads every row again."""
        self.index = ClaimIndex(self._direction)
        self._finished: Dict[int, Claim] = {}
        self._seen: Optional[int] = None
        # True while a transaction that wrote into the cache has not committed.
        self.dirty = False

    def read(self, connection: sa.engine.Connection, study_id: int) -> List[Any]:
        """Add the finished claims that changed since the last read; return the running rows."""
        columns = [claims_table.c[name] for name in _CLAIM_COLUMNS]
        extra = [
            claims_table.c.id,
            claims_table.c.finished_sequence,
            claims_table.c.trial_id,
            claims_table.c.heartbeat_at,
            claims_table.c.worker,
        ]
        of_study = sa.select(*columns, *extra).where(claims_table.c.study_id == study_id)
        if self._seen is None:
            query = of_study
        else:
            query = sa.union_all(
                of_study.where(claims_table.c.state == RUNNING),
                of_study.where(claims_table.c.finished_sequence > self._seen).where(claims_table.c.state != RUNNING),
            )
        running = []
        seen = self._seen or 0
        for row in connection.execute(query):
            if row.state == RUNNING:
                running.append(row)
                continue
            self.finish(row.id, _claim_from(row))
            seen = max(seen, row.finished_sequence or 0)
        self._seen = seen
        return running

    def finish(self, claim_id: int, claim: Claim) -> None:
        """Put the finished state of one claim into the index, replacing an older one."""
        old = self._finished.get(claim_id)
        if old is not None:
            self.index.remove(old)
        self.index.add(claim)
        self._finished[claim_id] = claim


def _claim_from(row: Any, **changes: Any) -> Claim:
    values = {name: getattr(row, name) for name in _CLAIM_COLUMNS}
    values.update(changes)
    return Claim(**values)


@dataclass
class _Decision:
    job: Optional[Job]
    # Complete results per rung, for the rung the base sampler learns from.
    results: Dict[int, int]
    # The trial id of one configuration with a result, to count the parameters.
    sample_trial_id: Optional[int]


@dataclass
class _Binding:
    database: StudyDatabase
    settings: StudySettings
    claims: _ClaimCache
    plans: Dict[int, _TrialPlan] = field(default_factory=dict)
    parameter_count: Optional[int] = None


def _derive_seed(study_seed: int, trial_number: int) -> int:
    return int(np.random.SeedSequence([study_seed, trial_number]).generate_state(1)[0])


def _reseed(sampler: BaseSampler, seed: int) -> None:
    # Optuna's samplers keep their randomness in LazyRandomState attributes, some of
    # them inside a nested fallback sampler; replace each one with a seeded state.
    for owner in [sampler, *[v for v in vars(sampler).values() if isinstance(v, BaseSampler)]]:
        for name, value in list(vars(owner).items()):
            if isinstance(value, LazyRandomState):
                setattr(owner, name, LazyRandomState(seed))
            elif isinstance(value, np.random.RandomState):
                setattr(owner, name, np.random.RandomState(seed))


def _check_base_sampler(spec: BaseSamplerSpec) -> None:
    """Build the base sampler once, so that one that cannot be used fails before any trial."""
    try:
        make_base_sampler(spec, 0)
    except ValueError:
        raise
    except Exception as error:
        raise ValueError(f"base_sampler={spec!r} cannot be used: {type(error).__name__}: {error}") from error


def make_base_sampler(spec: BaseSamplerSpec, seed: int) -> BaseSampler:
    """Build the base sampler that proposes new configurations, seeded with ``seed``."""
    if isinstance(spec, BaseSampler):
        sampler = copy.deepcopy(spec)
        _reseed(sampler, seed)
        return sampler
    if callable(spec):
        sampler = spec(seed)
        if not isinstance(sampler, BaseSampler):
            raise ValueError(
                f"base_sampler factory returned {sampler!r}, which is not an optuna sampler."
            )
        return sampler
    if spec == "tpe":
        # NOTE: TPE samples at random until its view contains 10 trials (Optuna's n_startup_trials),
        # while the view moves to a higher rung once that rung has n_min results, parameters + 1
        # by default. In a small study with few parameters TPE may therefore never leave its
        # random start.
        return optuna.samplers.TPESampler(seed=seed)
    if spec == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if spec == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if spec == "qmc":
        return optuna.samplers.QMCSampler(seed=seed)
    raise ValueError(
        f"base_sampler={spec!r} is invalid: choose one of tpe, random, gp, cmaes, qmc, "
        "or pass an optuna sampler instance."
    )


class _RungStudy(Study):
    """A view of a study that shows the base sampler the results of one rung only.

    It contains the complete trials of that rung, one per configuration, and the
    running trials that started a new configuration, which samplers with a
    constant liar use to avoid proposing the same point twice.
    """

    def __init__(self, study: Study, rung: int, sampler: BaseSampler) -> None:  # noqa: D107
        # No Study.__init__: the view shares the original's storage, id and caches.
        self.__dict__.update(study.__dict__)
        self._original = study
        self._rung = rung
        self.sampler = sampler
        self._filtered: Dict[Any, list] = {}

    def _keep(self, trial: FrozenTrial) -> bool:
        attrs = trial.user_attrs
        if trial.state == TrialState.COMPLETE:
            # Optuna completes a trial that returned infinity; budgetsearch counts it as failed.
            return attrs.get(_attrs.RUNG) == self._rung and math.isfinite(trial.value)
        return trial.state == TrialState.RUNNING and attrs.get(_attrs.CONFIG) == trial.number

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list:
        # The filtered list is kept for the view's lifetime, one trial's sampling, because
        # samplers such as TPE read the trials several times per trial.
        if deepcopy:
            trials = self._original._get_trials(deepcopy=True, states=states, use_cache=use_cache)
            return [t for t in trials if self._keep(t)]
        key = None if states is None else tuple(states)
        if key not in self._filtered:
            trials = self._original._get_trials(deepcopy=False, states=states, use_cache=use_cache)
            self._filtered[key] = [t for t in trials if self._keep(t)]
        return self._filtered[key]

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list:
        return self._get_trials(deepcopy=deepcopy, states=states)

    def stop(self) -> None:
        self._original.stop()


class BudgetSampler(BaseSampler):
    """An Optuna sampler that gives each trial a budget from a successive-halving ladder.

    Before each trial starts, the sampler claims a job for it in budgetsearch's claims
    table, in one transaction under a per-study lock. The job is the next attempt of
    a job whose worker was lost, else the best promotable configuration from the
    highest rung down, else a new configuration at rung 0. A configuration is
    promotable when it is among the best ``n // reduction_factor`` of the n finished
    trials of its rung and not yet claimed one rung up. Each candidate must fit the
    total budget left. A promoted trial replays its configuration's parameters
    exactly. A new configuration comes from the base sampler, which sees the results
    of one rung only, each configuration once: the largest rung with at least
    ``n_min`` results, or rung 0 before any rung has that many. The base sampler is
    seeded from the study's seed and the trial number, so worker processes draw
    different points.

    The trial's job is written to its user attributes (``budgetsearch:budget``,
    ``budgetsearch:rung``, ``budgetsearch:config``, ...); the objective reads them with
    :func:`budgetsearch.trial_budget` and :func:`budgetsearch.schedule_for`. When no
    job fits, the trial gets none, ``trial_budget`` raises :class:`NoJobError` and, inside
    ``study.optimize``, the study stops.

    Use it with :class:`budgetsearch.BudgetPruner`::

        sampler = budgetsearch.BudgetSampler(250, 6000, 3, total_budget=60000, seed=0)
        study = optuna.create_study(direction="maximize", sampler=sampler,
                                    pruner=budgetsearch.BudgetPruner(), storage=url)
        study.optimize(objective)

    Args:
        min_budget: Budget of rung 0, in ``budget_unit``.
        max_budget: Budget of the top rung.
        reduction_factor: The integer eta, at least 2.
        total_budget: Limit on the sum of the budgets that trials reserve, or ``None``.
        n_trials: Limit on the number of jobs in the whole study, or ``None``.
        budget_unit: ``"steps"``, ``"epochs"`` or ``"seconds"``.
        algorithm: ``"asha"`` (one ladder), ``"hyperband"`` (brackets starting at
            every rung) or ``"fixed"`` (every trial at ``max_budget``).
        mode: ``"restart"`` (every trial trains from scratch) or ``"resume"`` (a
            promoted trial continues its parent's trunk checkpoint, see
            :func:`budgetsearch.resume_for`).
        schedule: Learning-rate schedule fitted to each trial's budget: ``"linear"``
            by default, ``"wsd"`` in resume mode.
        schedule_options: Options of that schedule, such as ``{"power": 2.0}``.
        warmup: Warm-up length in ``budget_unit``, below ``min_budget``.
        base_sampler: ``"tpe"`` (default), ``"random"``, ``"gp"``, ``"cmaes"``,
            ``"qmc"``, an Optuna sampler (copied and reseeded for each trial) or a
            function from a seed to a sampler.
        seed: The study's seed; ``None`` draws one when the study is created.
        max_retries: How many times a job whose worker died or stopped heartbeating runs
            again. A job whose worker SIGINT or SIGTERM stopped runs again without counting.
        n_min: The base sampler learns from the largest rung with at least this many
            results; ``None`` means the number of parameters plus one.
        artifact_dir: Folder of the trunk checkpoints in resume mode (default
            ``budgetsearch-artifacts`` in the current folder).
        heartbeat_interval: Seconds between the heartbeats of ``budgetsearch worker``.
        grace_period: Seconds without a heartbeat after which a trial is lost and its
            job goes to the next attempt.
        settings: Resolved :class:`StudySettings`; replaces the arguments above.
        use_stored_settings: Take the settings stored with the study, whatever they
            are (how workers join a study); the arguments above are then ignored.
        send_heartbeats: The caller sends heartbeats for its trials (as
            ``budgetsearch worker`` does), so a trial whose heartbeat stops for the
            study's grace period is declared lost and its job runs again. Trials
            claimed without heartbeats are never declared lost.

    Raises:
        SettingsMismatchError: The study already stores other settings.
    """

    def __init__(
        self,
        min_budget: Optional[int] = None,
        max_budget: Optional[int] = None,
        reduction_factor: int = 3,
        *,
        total_budget: Optional[int] = None,
        n_trials: Optional[int] = None,
        budget_unit: str = "steps",
        algorithm: str = "asha",
        mode: str = "restart",
        schedule: Optional[str] = None,
        schedule_options: Optional[Dict[str, Any]] = None,
        warmup: int = 0,
        base_sampler: BaseSamplerSpec = "tpe",
        seed: Optional[int] = None,
        max_retries: int = 2,
        n_min: Optional[int] = None,
        artifact_dir: Optional[str] = None,
        heartbeat_interval: float = 10.0,
        grace_period: float = 60.0,
        settings: Optional[StudySettings] = None,
        use_stored_settings: bool = False,
        send_heartbeats: bool = False,
    ) -> None:
        self._use_stored = use_stored_settings
        self._send_heartbeats = send_heartbeats
        if not isinstance(base_sampler, (str, BaseSampler)) and not callable(base_sampler):
            raise ValueError(
                f"base_sampler={base_sampler!r} is invalid: pass tpe, random, gp, cmaes or qmc, an "
                "optuna sampler instance, or a function from a seed to a sampler."
            )
        if isinstance(base_sampler, str):
            sampler_name = base_sampler
        else:
            sampler_name = "custom"
        self._base_spec: BaseSamplerSpec = base_sampler
        if settings is not None:
            self._requested: Optional[Dict[str, Any]] = None
            self._given_settings: Optional[StudySettings] = settings
            if settings.sampler != "custom" and isinstance(base_sampler, str):
                self._base_spec = settings.sampler
        elif use_stored_settings:
            self._requested = None
            self._given_settings = None
        else:
            if min_budget is None or max_budget is None:
                raise ValueError(
                    "min_budget and max_budget are required: pass them, or pass settings=, "
                    "or use_stored_settings=True to join an existing study."
                )
            self._requested = dict(
                min_budget=min_budget,
                max_budget=max_budget,
                reduction_factor=reduction_factor,
                total_budget=total_budget,
                n_trials=n_trials,
                budget_unit=budget_unit,
                algorithm=algorithm,
                mode=mode,
                schedule=schedule,
                schedule_options=dict(schedule_options or {}),
                warmup=warmup,
                sampler=sampler_name,
                seed=seed,
                max_retries=max_retries,
                n_min=n_min,
                artifact_dir=artifact_dir,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
            )
            # Validate now, so that bad arguments fail before any study is touched.
            StudySettings(direction="minimize", **self._requested)
            self._given_settings = None
        if not use_stored_settings:
            _check_base_sampler(self._base_spec)
        # Keyed by study id and name: a study re-created under another name may get a deleted study's id.
        self._bindings: Dict[Tuple[int, str], _Binding] = {}
        self._lock = threading.Lock()
        self._worker = f"{socket.gethostname()}:{os.getpid()}"

    # -- study binding ---------------------------------------------------------------

    def settings_for(self, study: Study) -> StudySettings:
        """Return the settings of ``study``, storing them if the study has none yet."""
        return self._bind(study).settings

    def _bind(self, study: Study) -> _Binding:
        study_id = study._study_id
        with self._lock:
            binding = self._bindings.get((study_id, study.study_name))
        if binding is not None:
            return binding

        database = database_for(study._storage)
        direction = "maximize" if study.direction == optuna.study.StudyDirection.MAXIMIZE else "minimize"
        if study._is_multi_objective():
            raise ValueError("budgetsearch supports single-objective studies only.")
        requested = self._requested_settings(direction)

        marker = settings_marker(study)

        def stored_text(connection: sa.engine.Connection) -> Optional[Tuple[str, float]]:
            row = current_settings_row(connection, study, marker)
            return None if row is None else (row.settings, row.created_at)

        def bind(connection: sa.engine.Connection) -> Tuple[Union[str, StudySettings], float]:
            # Stored settings are returned as text and parsed after the transaction: parsing
            # may import torch, which takes seconds, and the study's row stays locked until
            # the transaction ends.
            row = database.lock_study(connection, study_id)
            if settings_row_is_current(connection, study, row, marker):
                return row.settings, row.created_at
            if requested is None:
                raise ValueError(
                    f"study {study.study_name!r} has no budgetsearch settings stored: create it "
                    "with `budgetsearch run` or a BudgetSampler given its budgets."
                )
            if row is not None:
                # Optuna's delete_study leaves budgetsearch's rows behind, and SQLite may give
                # the next new study the deleted study's id.
                removed = connection.execute(claims_table.delete().where(claims_table.c.study_id == study_id))
                connection.execute(studies_table.delete().where(studies_table.c.study_id == study_id))
                logger.warning(
                    "Study %r reuses id %d of the deleted study %r: removed that study's budgetsearch "
                    "settings and %d claims.",
                    study.study_name, study_id, row.study_name, removed.rowcount,
                )
            settings = requested
            if settings.seed is None:
                settings = dataclasses.replace(settings, seed=_fresh_seed())
            created_at = _now()
            connection.execute(
                studies_table.insert().values(
                    study_id=study_id,
                    study_name=study.study_name,
                    settings=settings.to_json(),
                    created_at=created_at,
                    sequence=0,
                )
            )
            return settings, created_at

        # Joining a study reads its settings without the lock; only creating them locks.
        stored = database.run(stored_text)
        if stored is None:
            stored = database.run(bind)
        found, created_at = stored
        if marker is None:
            study._storage.set_study_system_attr(study_id, SETTINGS_MARKER, created_at)
        if isinstance(found, str):
            settings = StudySettings.from_json(found)
            if requested is not None:
                check_settings_match(settings, requested, study.study_name)
        else:
            settings = found
        if self._use_stored and isinstance(self._base_spec, str) and settings.sampler != "custom":
            self._base_spec = settings.sampler
            _check_base_sampler(self._base_spec)
        if settings.mode == "resume" and settings.artifact_dir is not None:
            check_artifact_dir(settings.artifact_dir)
        if settings.direction != direction:
            raise SettingsMismatchError(
                f"study {study.study_name!r} stores direction {settings.direction!r} but the "
                f"Optuna study is set to {direction!r}."
            )
        binding = _Binding(database=database, settings=settings, claims=_ClaimCache(settings.direction))
        with self._lock:
            self._bindings.setdefault((study_id, study.study_name), binding)
            return self._bindings[(study_id, study.study_name)]

    def _requested_settings(self, direction: str) -> Optional[StudySettings]:
        if self._use_stored:
            return None
        if self._given_settings is not None:
            return self._given_settings
        assert self._requested is not None
        return StudySettings(direction=direction, **self._requested)

    # -- job claims ------------------------------------------------------------------

    def peek_job(self, study: Study) -> Optional[Job]:
        """Return the job the next trial would get now, without claiming it."""
        return self._peek(study).job

    def _peek(self, study: Study) -> _Decision:
        decision = self._decide_and(study, None, lock=False)
        if decision is None:  # A running trial's heartbeat stopped: release it under the lock.
            decision = self._decide_and(study, None)
        assert decision is not None
        return decision

    def _decide_and(
        self,
        study: Study,
        claim: Optional[Callable[[sa.engine.Connection, Job, int], Job]],
        lock: bool = True,
    ) -> Optional[_Decision]:
        """Decide the next job in one transaction under the study's lock, then ``claim`` it if given.

        Running claims whose heartbeat stopped are declared lost first, and their trials
        are failed after the transaction commits. Without ``lock`` (a peek that claims
        nothing), the decision reads without the study's lock. That read is exact,
        because claims change only in locked transactions, which commit in sequence
        order. It returns ``None`` if a running claim's heartbeat stopped, because only a
        locked transaction may release that claim.
        """
        binding = self._bind(study)
        settings = binding.settings
        study_id = study._study_id
        cache = binding.claims
        released: List[int] = []

        def decide(connection: sa.engine.Connection) -> Optional[_Decision]:
            if cache.dirty:
                cache.reset()  # An earlier transaction wrote into the cache and did not commit.
            cache.dirty = True

            sequence = binding.database.next_sequence(connection, study_id) if lock else 0
            running = cache.read(connection, study_id)
            if lock:
                running, released[:] = _release_lost(
                    connection, binding.database, cache, study, settings, running, sequence
                )
            elif any(_is_stale(row, settings) for row in running):
                return None

            # The running claims join the index for this decision only.
            index = cache.index
            added = [_claim_from(row) for row in running]
            for item in added:
                index.add(item)
            try:
                job = index.next_job(
                    settings.ladder,
                    total_budget=settings.total_budget,
                    algorithm=settings.algorithm,
                    n_trials=settings.n_trials,
                    max_retries=settings.max_retries,
                    trunk=settings.trunk_step if settings.mode == "resume" else None,
                )
            finally:
                for item in added:
                    index.remove(item)

            sample = index.some_complete()
            if job is not None and claim is not None:
                job = claim(connection, job, sequence)
            return _Decision(job, index.complete_per_rung(), None if sample is None else sample.config_trial_id)

        with cache.lock:
            decision = binding.database.run(decide)
            cache.dirty = False
        _fail_lost_trials(study, released)
        return decision

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        binding = self._bind(study)
        settings = binding.settings
        study_id = study._study_id

        def claim(connection: sa.engine.Connection, job: Job, sequence: int) -> Job:
            config = trial.number if job.config is None else job.config
            config_trial_id = trial._trial_id if job.config_trial_id is None else job.config_trial_id
            connection.execute(
                claims_table.insert().values(
                    study_id=study_id,
                    config=config,
                    rung=job.rung,
                    attempt=job.attempt,
                    bracket=job.bracket,
                    budget=job.budget,
                    start_step=job.start_step,
                    reserved=job.reserved,
                    trial_number=trial.number,
                    trial_id=trial._trial_id,
                    config_trial_id=config_trial_id,
                    parent=job.parent,
                    state=RUNNING,
                    worker=self._worker,
                    claimed_at=_now(),
                    claimed_sequence=sequence,
                    heartbeat_at=_now() if self._send_heartbeats else None,
                )
            )
            return dataclasses.replace(job, config=config, config_trial_id=config_trial_id)

        decision = self._decide_and(study, claim)
        assert decision is not None
        job = decision.job
        storage = study._storage
        if job is None:
            storage.set_trial_system_attr(trial._trial_id, _attrs.NO_JOB, True)
            trial.system_attrs[_attrs.NO_JOB] = True
            logger.info("Trial %d got no job: none fits the study's limits.", trial.number)
            try:
                study.stop()
            except RuntimeError:
                pass  # Not inside study.optimize: the caller sees NoJobError from trial_budget.
            return

        assert job.config is not None
        attrs = {
            _attrs.BUDGET: job.budget,
            _attrs.RUNG: job.rung,
            _attrs.BRACKET: job.bracket,
            _attrs.CONFIG: job.config,
            _attrs.ATTEMPT: job.attempt,
            _attrs.SCHEDULE: settings.schedule_spec(),
        }
        if job.parent is not None:
            attrs[_attrs.PARENT] = job.parent
        if job.start_step:
            attrs[_attrs.START_STEP] = job.start_step
        _add_user_attrs(storage, trial._trial_id, attrs)
        # ``trial`` is the Trial's cached copy, which ``Trial.user_attrs`` reads.
        trial.user_attrs.update(attrs)

        plan = _TrialPlan(job=job, config=job.config)
        if job.config != trial.number:
            plan.replay = storage.get_trial(job.config_trial_id)
        else:
            self._prepare_new_configuration(binding, study, trial, plan, decision)
        with self._lock:
            binding.plans[trial._trial_id] = plan
        logger.info(
            "Worker %s: trial %d claimed configuration %d at rung %d (budget %d, attempt %d).",
            self._worker, trial.number, job.config, job.rung, job.budget, job.attempt,
        )

    def _plan(self, study: Study, trial: FrozenTrial) -> Optional[_TrialPlan]:
        binding = self._bind(study)
        with self._lock:
            plan = binding.plans.get(trial._trial_id)
        if plan is not None:
            return plan

        # The trial was claimed by another process or sampler object: rebuild its plan.
        attrs = study._storage.get_trial_user_attrs(trial._trial_id)
        if _attrs.CONFIG not in attrs:
            return None
        config = attrs[_attrs.CONFIG]
        job = Job(
            config=config,
            rung=attrs[_attrs.RUNG],
            attempt=attrs[_attrs.ATTEMPT],
            bracket=attrs[_attrs.BRACKET],
            budget=attrs[_attrs.BUDGET],
            reserved=attrs[_attrs.BUDGET],
            parent=attrs.get(_attrs.PARENT),
        )

        plan = _TrialPlan(job=job, config=config)
        if config != trial.number:
            config_trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, config)
            plan.replay = study._storage.get_trial(config_trial_id)
        else:
            self._prepare_new_configuration(binding, study, trial, plan, self._peek(study))
        with self._lock:
            binding.plans[trial._trial_id] = plan
        return plan

    def _prepare_new_configuration(
        self, binding: _Binding, study: Study, trial: FrozenTrial, plan: _TrialPlan, decision: _Decision
    ) -> None:
        """Seed a base sampler for this trial and pick the rung it learns from."""
        seed = binding.settings.seed
        plan.base_sampler = make_base_sampler(
            self._base_spec, seed if self._base_spec == "qmc" else _derive_seed(seed, trial.number)
        )
        n_min = binding.settings.n_min
        if n_min is None:
            if binding.parameter_count is None and decision.sample_trial_id is not None:
                binding.parameter_count = len(study._storage.get_trial(decision.sample_trial_id).distributions)
            n_min = (binding.parameter_count or 0) + 1
        plan.model_rung = max((rung for rung, count in decision.results.items() if count >= n_min), default=0)

    # -- parameters ------------------------------------------------------------------

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> Dict[str, BaseDistribution]:
        plan = self._plan(study, trial)
        if plan is None or plan.base_sampler is None:
            return {}
        return plan.base_sampler.infer_relative_search_space(_view(plan, study), trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: Dict[str, BaseDistribution]
    ) -> Dict[str, Any]:
        plan = self._plan(study, trial)
        if plan is None or plan.base_sampler is None or not search_space:
            return {}
        return plan.base_sampler.sample_relative(_view(plan, study), trial, search_space)

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        plan = self._plan(study, trial)
        if plan is None:
            raise NoJobError(f"trial {trial.number} has no budgetsearch job, so it cannot sample parameters.")
        if plan.replay is not None:
            return _replayed_value(plan, self._bind(study), study, trial, param_name, param_distribution)
        assert plan.base_sampler is not None
        view = _view(plan, study)
        return plan.base_sampler.sample_independent(view, trial, param_name, param_distribution)

    # -- results ---------------------------------------------------------------------

    def after_trial(
        self, study: Study, trial: FrozenTrial, state: TrialState, values: Optional[Sequence[float]]
    ) -> None:
        binding = self._bind(study)
        with self._lock:
            plan = binding.plans.pop(trial._trial_id, None)
        if plan is not None and plan.base_sampler is not None:
            plan.base_sampler.after_trial(_view(plan, study), trial, state, values)
        record_result(binding.database, study._study_id, trial, state, values)

    def reseed_rng(self) -> None:
        # Per-trial base samplers derive their seeds from the study seed and trial number.
        pass


def _view(plan: _TrialPlan, study: Study) -> "_RungStudy":
    if plan.view is None:
        assert plan.base_sampler is not None
        plan.view = _RungStudy(study, plan.model_rung, plan.base_sampler)
    return plan.view


def _replayed_value(
    plan: _TrialPlan, binding: _Binding, study: Study, trial: FrozenTrial, name: str, distribution: BaseDistribution
) -> Any:
    replay = plan.replay
    assert replay is not None
    if name not in replay.distributions:
        # A first trial that failed or was lost may have ended before it asked for this
        # parameter. A first trial with a result asked for every parameter it uses.
        if replay.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            return _unsampled_value(plan, binding, study, trial, name, distribution)
        raise ValueError(
            f"trial {trial.number} replays configuration {plan.config}, which has no parameter "
            f"{name!r}: a promoted trial must ask for the same parameters as the configuration's "
            f"first trial ({sorted(replay.distributions)})."
        )
    stored = replay.distributions[name]
    if stored != distribution:
        raise ValueError(
            f"trial {trial.number} asks for parameter {name!r} with {distribution}, but configuration "
            f"{plan.config} was sampled with {stored}: keep the search space unchanged within a study."
        )
    return replay.params[name]


def _unsampled_value(
    plan: _TrialPlan, binding: _Binding, study: Study, trial: FrozenTrial, name: str, distribution: BaseDistribution
) -> Any:
    """Return a value for a parameter that the configuration's first trial never sampled.

    That trial failed, or was lost, before it asked for the parameter. A later trial of
    the configuration that has the parameter gives its value, after the same check of the
    distribution as a replay. Otherwise the value is drawn at random from a seed of the
    study seed (or name), the configuration and the parameter's name, so every trial of
    the configuration, in any worker, gets the same one.
    """
    claims = claims_table.c
    query = (
        sa.select(claims.trial_id)
        .where(claims.study_id == study._study_id)
        .where(claims.config == plan.config)
        .where(claims.trial_id != trial._trial_id)
        .order_by(claims.trial_number)
    )
    trial_ids = binding.database.run(lambda connection: connection.execute(query).scalars().all())
    for trial_id in trial_ids:
        earlier = study._storage.get_trial(trial_id)
        if name in earlier.distributions:
            if earlier.distributions[name] != distribution:
                raise ValueError(
                    f"trial {trial.number} asks for parameter {name!r} with {distribution}, but configuration "
                    f"{plan.config} was sampled with {earlier.distributions[name]} (trial {earlier.number}): "
                    "keep the search space unchanged within a study."
                )
            return earlier.params[name]

    logger.warning(
        "Trial %d: configuration %d's first trial ended before it sampled %r, so the parameter is "
        "drawn at random, the same for every trial of the configuration.",
        trial.number, plan.config, name,
    )
    study_seed = binding.settings.seed
    if study_seed is None:
        study_seed = zlib.crc32(study.study_name.encode("utf-8"))
    name_seed = zlib.crc32(name.encode("utf-8"))
    sampler = optuna.samplers.RandomSampler(
        seed=int(np.random.SeedSequence([study_seed, plan.config, name_seed]).generate_state(1)[0])
    )
    return sampler.sample_independent(study, trial, name, distribution)


def _is_stale(row: Any, settings: StudySettings) -> bool:
    """Return whether a running claim's heartbeat stopped for longer than the grace period."""
    return row.heartbeat_at is not None and row.heartbeat_at < _now() - settings.grace_period


def _release_lost(
    connection: sa.engine.Connection,
    database: StudyDatabase,
    cache: _ClaimCache,
    study: Study,
    settings: StudySettings,
    running: List[Any],
    sequence: int,
) -> Tuple[List[Any], List[int]]:
    """Mark running claims whose heartbeat is older than the grace period as lost.

    A lost claim keeps only the budget its trial spent, so the job's next attempt can
    reserve it again. Return the rows still running and the Optuna trial ids to fail
    once the transaction commits.

    Nothing is released until this process has reached the database for two heartbeat
    intervals: after an outage every heartbeat is old, and the live workers' heartbeat
    threads need one interval to stamp their claims again.
    """
    if database.reachable_for() < 2 * settings.heartbeat_interval:
        return running, []
    still_running = []
    released = []
    for row in running:
        if not _is_stale(row, settings):
            still_running.append(row)
            continue
        try:
            last_step = max(study._storage.get_trial(row.trial_id).intermediate_values, default=row.start_step)
        except KeyError:
            last_step = row.start_step
        spent = max(0, min(int(last_step), row.budget) - row.start_step)
        connection.execute(
            claims_table.update()
            .where(claims_table.c.id == row.id)
            .values(state=LOST, spent=spent, reserved=spent, finished_at=_now(), finished_sequence=sequence)
        )
        cache.finish(row.id, _claim_from(row, state=LOST, reserved=spent))
        logger.warning(
            "Trial %d of worker %s sent no heartbeat for %.0f s: it is lost, and its job goes to the next attempt.",
            row.trial_number, row.worker, _now() - row.heartbeat_at,
        )
        released.append(row.trial_id)
    return still_running, released


def _add_user_attrs(storage: BaseStorage, trial_id: int, attrs: Dict[str, Any]) -> None:
    """Write a new trial's user attributes, in one transaction on an RDB storage.

    Optuna's storage API writes one attribute per transaction, and each commit costs a
    round trip. So on an RDB storage the attributes go in together, through Optuna's
    own session and model. Elsewhere, or when an attribute exists already, they go one
    by one through the public API.
    """
    backend = getattr(storage, "_backend", storage)
    if isinstance(backend, RDBStorage):
        session = backend.scoped_session()
        try:
            session.add_all(
                [
                    rdb_models.TrialUserAttributeModel(trial_id=trial_id, key=key, value_json=json.dumps(value))
                    for key, value in attrs.items()
                ]
            )
            session.commit()
            return
        except sa.exc.IntegrityError:
            session.rollback()
        finally:
            session.close()
    for key, value in attrs.items():
        storage.set_trial_user_attr(trial_id, key, value)


def _fail_lost_trials(study: Study, trial_ids: List[int]) -> None:
    for trial_id in trial_ids:
        try:
            study._storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except (RuntimeError, ValueError) as error:  # The trial ended meanwhile.
            logger.info("Lost trial id %d was not failed: %s", trial_id, error)


def record_result(
    database: StudyDatabase,
    study_id: int,
    trial: FrozenTrial,
    state: TrialState,
    values: Optional[Sequence[float]],
) -> None:
    """Write a finished trial's outcome and the budget it spent to its claim.

    The claim keeps its whole reservation even when the trial stopped early, so each
    job uses up at least the budget of rung 0 and a study whose trials all fail at
    once still reaches its total budget and ends.
    """
    if state == TrialState.COMPLETE and values is not None and math.isfinite(values[0]):
        claim_state, value = COMPLETE, float(values[0])
    elif state == TrialState.PRUNED:
        claim_state, value = PRUNED, None
    else:
        claim_state, value = FAILED, None

    claims = claims_table.c
    last_step = max(trial.intermediate_values, default=None)
    spent: Any
    if claim_state == COMPLETE:
        spent = claims.reserved
    elif last_step is None:
        spent = 0
    else:
        # max(0, min(last_step, budget) - start_step), computed by the database in the update.
        reached = sa.case((claims.budget < int(last_step), claims.budget), else_=int(last_step))
        spent = sa.case((reached > claims.start_step, reached - claims.start_step), else_=0)

    def update(connection: sa.engine.Connection) -> None:
        sequence = database.next_sequence(connection, study_id)
        connection.execute(
            claims_table.update()
            .where(claims.study_id == study_id)
            .where(claims.trial_number == trial.number)
            .values(state=claim_state, value=value, spent=spent, finished_at=_now(), finished_sequence=sequence)
        )

    database.run(update)


def check_settings_match(stored: StudySettings, requested: StudySettings, study_name: str) -> None:
    """Raise SettingsMismatchError naming each setting of ``requested`` that contradicts ``stored``."""
    differences = stored.differences(requested)
    if requested.seed is None:
        differences.pop("seed", None)
    if differences:
        raise SettingsMismatchError(mismatch_message(study_name, differences))


def mismatch_message(study_name: str, differences: Dict[str, tuple]) -> str:
    """Return the error text for settings ``{name: (stored, given)}`` that contradict a stored study."""
    listed = "; ".join(f"{name}: stored {a!r}, given {b!r}" for name, (a, b) in sorted(differences.items()))
    return (
        f"study {study_name!r} already exists with other settings ({listed}). Leave these "
        "flags out to use the stored settings, or pick a new --study-name."
    )


def _fresh_seed() -> int:
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF


def _now() -> float:
    return time.time()
