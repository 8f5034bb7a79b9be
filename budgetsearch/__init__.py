"""budgetsearch: hyperparameter search under a fixed compute budget.

Each trial gets a budget from a successive-halving ladder and a learning-rate
schedule that ends exactly at that budget; good configurations are promoted to
larger budgets. The pair :class:`BudgetSampler` and :class:`BudgetPruner` plugs into
``optuna.create_study``.
"""

from budgetsearch._jobs import Job
from budgetsearch._ladder import Ladder
from budgetsearch._objective import schedule_for, trial_budget, trial_device
from budgetsearch._pruner import BudgetPruner
from budgetsearch._resume import CheckpointError, NoBudgetForRestartError, ResumePoint, resume_for
from budgetsearch._sampler import BudgetSampler, NoJobError, SettingsMismatchError
from budgetsearch._settings import StudyDefaults, StudySettings
from budgetsearch._storage import ReconnectingStorage
from budgetsearch._tables import DatabaseUnavailableError, SchemaVersionError

__version__ = "0.1.0"

__all__ = [
    "BudgetPruner",
    "BudgetSampler",
    "CheckpointError",
    "DatabaseUnavailableError",
    "Job",
    "Ladder",
    "NoBudgetForRestartError",
    "NoJobError",
    "ReconnectingStorage",
    "ResumePoint",
    "SchemaVersionError",
    "SettingsMismatchError",
    "StudyDefaults",
    "StudySettings",
    "resume_for",
    "schedule_for",
    "trial_budget",
    "trial_device",
]
