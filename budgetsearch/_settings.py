"""Study settings: the defaults a study file declares and the resolved settings a study stores."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from budgetsearch._ladder import Ladder

# Seconds a worker keeps retrying a database it cannot reach before it gives up.
DEFAULT_DB_WAIT = 120.0

DIRECTIONS = ("maximize", "minimize")
BUDGET_UNITS = ("steps", "epochs", "seconds")
ALGORITHMS = ("asha", "hyperband", "fixed")
MODES = ("restart", "resume")
DEFAULT_ARTIFACT_DIR = "budgetsearch-artifacts"
SAMPLERS = ("tpe", "random", "gp", "cmaes", "qmc")
# Kept equal to budgetsearch.schedules.SCHEDULES; checked by a test.
SCHEDULE_NAMES = ("linear", "cosine", "step", "exponential", "polynomial", "wsd", "constant")


def _check_choice(name: str, value: object, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is invalid: choose one of {', '.join(choices)}.")


def _check_optional_positive_int(name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}={value!r} is invalid: it must be a positive integer or unset.")


@dataclass(frozen=True)
class StudySettings:
    """The resolved settings of a study, stored with it and read back by every worker.

    Budgets are integers in ``budget_unit``. ``total_budget`` limits the sum of the
    budgets that trials reserve; ``n_trials`` limits the number of jobs in the whole
    study. Either may be ``None`` (no limit). The base sampler learns from the
    largest rung with at least ``n_min`` results (``None``: the number of
    parameters plus one), or from rung 0 before any rung has that many.
    """

    direction: str
    min_budget: int
    max_budget: int
    reduction_factor: int = 3
    budget_unit: str = "steps"
    total_budget: Optional[int] = None
    n_trials: Optional[int] = None
    algorithm: str = "asha"
    mode: str = "restart"
    schedule: Optional[str] = None
    schedule_options: Dict[str, Any] = field(default_factory=dict)
    warmup: int = 0
    sampler: str = "tpe"
    seed: Optional[int] = None
    max_retries: int = 2
    metric: str = "value"
    n_min: Optional[int] = None
    artifact_dir: Optional[str] = None
    heartbeat_interval: float = 10.0
    grace_period: float = 60.0

    def __post_init__(self) -> None:
        _check_choice("direction", self.direction, DIRECTIONS)
        _check_choice("budget_unit", self.budget_unit, BUDGET_UNITS)
        _check_choice("algorithm", self.algorithm, ALGORITHMS)
        _check_choice("mode", self.mode, MODES)
        if self.schedule is None:
            # Resume mode implies the wsd schedule; restart mode defaults to linear decay.
            object.__setattr__(self, "schedule", "wsd" if self.mode == "resume" else "linear")
        _check_choice("schedule", self.schedule, SCHEDULE_NAMES)
        if self.mode == "resume" and self.schedule != "wsd":
            raise ValueError(
                f"schedule={self.schedule!r} is invalid with mode='resume': resume mode uses the wsd "
                "schedule, whose stable phase every budget shares. Leave the schedule unset or use wsd."
            )
        if self.mode == "resume" and self.budget_unit != "steps":
            raise ValueError(
                f"budget_unit={self.budget_unit!r} is invalid with mode='resume': resume mode "
                "counts trunk steps in optimizer steps. Use budget_unit='steps' or mode='restart'."
            )
        if self.mode == "resume" and self.artifact_dir is None:
            object.__setattr__(self, "artifact_dir", DEFAULT_ARTIFACT_DIR)
        if self.artifact_dir is not None:
            # Local workers started from other folders must find the same checkpoints.
            object.__setattr__(self, "artifact_dir", os.path.abspath(os.path.expanduser(self.artifact_dir)))
        # "custom" records that the study's sampler was passed as an object.
        _check_choice("sampler", self.sampler, SAMPLERS + ("custom",))

        ladder = self.ladder
        _check_optional_positive_int("total_budget", self.total_budget)
        _check_optional_positive_int("n_trials", self.n_trials)
        _check_optional_positive_int("n_min", self.n_min)
        if self.total_budget is not None and self.total_budget < ladder.min_budget:
            raise ValueError(
                f"total_budget={self.total_budget} is invalid: it is below "
                f"min_budget={ladder.min_budget}, so no trial fits. Raise it or lower min_budget."
            )
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup={self.warmup!r} is invalid: it must be a non-negative integer.")
        if self.warmup >= ladder.min_budget:
            raise ValueError(
                f"warmup={self.warmup} is invalid: it must be below min_budget={ladder.min_budget}, "
                "so that every trial's schedule can decay after its warm-up."
            )

        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"seed={self.seed!r} is invalid: it must be an integer of 0 or more, or unset.")
        retries = self.max_retries
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"max_retries={retries!r} is invalid: it must be a non-negative integer.")
        for name in ("heartbeat_interval", "grace_period"):
            seconds = getattr(self, name)
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds < math.inf:
                raise ValueError(f"{name}={seconds!r} is invalid: it must be a positive number of seconds.")
        if self.grace_period <= 2 * self.heartbeat_interval:
            raise ValueError(
                f"grace_period={self.grace_period} is invalid: it must exceed twice heartbeat_interval="
                f"{self.heartbeat_interval}, or a live worker whose heartbeat is late would be declared lost."
            )
        if not isinstance(self.schedule_options, dict):
            raise ValueError(
                f"schedule_options={self.schedule_options!r} is invalid: it must be a dict."
            )
        self._check_schedule()

    def _check_schedule(self) -> None:
        """Raise ValueError if the schedule, its options or the warm-up do not fit every rung."""
        if self.budget_unit != "steps":
            return
        from budgetsearch.schedules import lr_multiplier

        for budget in (self.min_budget, self.max_budget):
            lr_multiplier(0, budget, self.schedule, warmup=self.warmup, **self.schedule_options)
        if self.mode == "resume" and self.trunk_step(self.min_budget) == 0:
            raise ValueError(
                f"min_budget={self.min_budget} is invalid in resume mode: with decay_fraction="
                f"{self.decay_fraction} its stable phase is empty, so it has no trunk to hand on. "
                "Raise min_budget or lower decay_fraction."
            )
        if self.mode == "resume" and self.warmup >= self.trunk_step(self.min_budget):
            raise ValueError(
                f"warmup={self.warmup} is invalid in resume mode: it must end before the stable "
                f"phase of the smallest budget ends, at step {self.trunk_step(self.min_budget)}. "
                "Shorten the warm-up, lower decay_fraction or raise min_budget."
            )

    @property
    def decay_fraction(self) -> float:
        return float(self.schedule_options.get("decay_fraction", 0.2))

    def trunk_step(self, budget: int) -> int:
        """Return the step where the wsd decay of ``budget`` starts (resume mode)."""
        from budgetsearch.schedules import trunk_step

        return trunk_step(budget, self.decay_fraction)

    def schedule_spec(self) -> Dict[str, Any]:
        """Return the schedule description a trial records in ``budgetsearch:schedule``."""
        return {
            "name": self.schedule,
            "options": self.schedule_options,
            "warmup": self.warmup,
            "unit": self.budget_unit,
        }

    @property
    def ladder(self) -> Ladder:
        return Ladder(self.min_budget, self.max_budget, self.reduction_factor)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "StudySettings":
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    def differences(self, other: "StudySettings") -> Dict[str, tuple]:
        """Return ``{name: (self_value, other_value)}`` for each setting that differs."""
        mine = dataclasses.asdict(self)
        theirs = dataclasses.asdict(other)
        return {name: (mine[name], theirs[name]) for name in mine if mine[name] != theirs[name]}


@dataclass(frozen=True)
class StudyDefaults:
    """Defaults that a study file declares for its study; command-line flags override them.

    Example of a study file's declaration::

        DEFAULTS = budgetsearch.StudyDefaults(
            direction="maximize", metric="val_accuracy", budget_unit="steps",
            min_budget=250, max_budget=6000, reduction_factor=3, total_budget=60000,
        )

    ``timeout`` is in seconds of wall-clock time for one ``budgetsearch run``: after
    it, no new trial starts and running trials finish. Every other field is a
    :class:`StudySettings` field of the same name.
    """

    direction: str
    min_budget: int
    max_budget: int
    reduction_factor: int = 3
    budget_unit: str = "steps"
    total_budget: Optional[int] = None
    n_trials: Optional[int] = None
    algorithm: str = "asha"
    mode: str = "restart"
    schedule: Optional[str] = None
    schedule_options: Dict[str, Any] = field(default_factory=dict)
    warmup: int = 0
    sampler: str = "tpe"
    seed: Optional[int] = None
    max_retries: int = 2
    metric: str = "value"
    n_min: Optional[int] = None
    artifact_dir: Optional[str] = None
    heartbeat_interval: float = 10.0
    grace_period: float = 60.0
    timeout: Optional[float] = None

    def __post_init__(self) -> None:
        self.resolve()
        if self.timeout is not None and not (
            isinstance(self.timeout, (int, float)) and math.isfinite(self.timeout) and self.timeout > 0
        ):
            raise ValueError(f"timeout={self.timeout!r} is invalid: it must be a positive number of seconds.")

    def resolve(self, **overrides: Any) -> StudySettings:
        """Return the study settings with ``overrides`` (``None`` values ignored) applied."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(StudySettings)}
        values.update({key: value for key, value in overrides.items() if value is not None})
        return StudySettings(**values)
