"""Loading study files: Python files that define ``objective`` and ``DEFAULTS``."""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

from budgetsearch._settings import StudyDefaults


class StudyFileError(ValueError):
    """A study file is missing, cannot be imported, or lacks ``objective`` or ``DEFAULTS``."""


@dataclass(frozen=True)
class StudyFile:
    path: str
    module: ModuleType
    objective: Callable[[Any], Any]
    defaults: StudyDefaults

    @property
    def default_study_name(self) -> str:
        return os.path.splitext(os.path.basename(self.path))[0]


def load_study_file(path: str) -> StudyFile:
    """Import the study file at ``path`` and check that it defines ``objective`` and ``DEFAULTS``."""
    if os.path.isdir(path):
        raise StudyFileError(f"study file {path!r} is a folder: pass the path of a Python file such as studies/mnist1d_cnn.py.")
    if not os.path.isfile(path):
        raise StudyFileError(f"study file {path!r} not found: pass the path of a Python file such as studies/mnist1d_cnn.py.")
    absolute = os.path.abspath(path)
    name = "budgetsearch_study_" + os.path.splitext(os.path.basename(absolute))[0].replace("-", "_")
    spec = importlib.util.spec_from_file_location(name, absolute)
    if spec is None or spec.loader is None:
        raise StudyFileError(f"study file {path!r} cannot be imported: it must be a Python source file.")
    # A study file may import helper modules that lie next to it, as it could when run
    # as a script.
    folder = os.path.dirname(absolute)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module = importlib.util.module_from_spec(spec)
    # Registered so that pickling and multiprocessing can find the study's functions.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        sys.modules.pop(name, None)
        raise StudyFileError(f"study file {path!r} failed to import: {type(error).__name__}: {error}") from error

    objective = getattr(module, "objective", None)
    if not callable(objective):
        raise StudyFileError(f"study file {path!r} defines no objective(trial) function: add one.")
    defaults = getattr(module, "DEFAULTS", None)
    if defaults is None:
        raise StudyFileError(f"study file {path!r} defines no DEFAULTS: add DEFAULTS = budgetsearch.StudyDefaults(...).")
    if not isinstance(defaults, StudyDefaults):
        raise StudyFileError(
            f"study file {path!r}: DEFAULTS is a {type(defaults).__name__}, not a budgetsearch.StudyDefaults."
        )
    return StudyFile(path=path, module=module, objective=objective, defaults=defaults)
