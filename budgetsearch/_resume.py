"""Resume mode: trunk checkpoints saved by one trial and continued by the trial promoted from it."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, Optional

import optuna
import sqlalchemy as sa
from optuna.artifacts import FileSystemArtifactStore, download_artifact, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound

from budgetsearch import _attrs
from budgetsearch._tables import claims_table, database_for

logger = logging.getLogger(__name__)

_CHECKPOINT_FORMAT = 1


class CheckpointError(RuntimeError):
    """A parent's trunk checkpoint cannot be used: corrupt, or saved for another job."""


class NoBudgetForRestartError(RuntimeError):
    """A resumed trial whose parent checkpoint is missing cannot reserve the rest of its budget."""


def check_artifact_dir(path: str) -> None:
    """Raise ValueError unless ``path`` is a folder where checkpoints can be written."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as error:
        raise ValueError(
            f"artifact_dir={path!r} is not writable ({error.strerror or error}): resume mode saves "
            "trunk checkpoints there. Pass a writable folder with --artifact-dir."
        ) from None


@dataclass
class ResumePoint:
    """Where a trial's training starts and where it saves its trunk checkpoint.

    ``start_step`` is 0 for a trial that starts from scratch. For a trial promoted in
    resume mode it is the parent's trunk step, and ``state`` is the object the
    parent passed to :meth:`save`. ``trunk_step`` is the step at which this trial
    saves its own trunk (``None`` in restart mode, where nothing is saved).

    Example, in an objective::

        resume = budgetsearch.resume_for(trial)
        if resume.state is not None:
            model.load_state_dict(resume.state["model"])
            optimizer.load_state_dict(resume.state["optimizer"])
        scheduler = budgetsearch.schedule_for(trial, optimizer)   # positioned at start_step
        for step in range(resume.start_step, budgetsearch.trial_budget(trial)):
            train_one_step(model, optimizer); scheduler.step()
            if step + 1 == resume.trunk_step:
                resume.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    """

    trial: Any
    start_step: int
    trunk_step: Optional[int]
    parent: Optional[int]
    state: Any
    artifact_store: Any
    config: int

    @property
    def resumed(self) -> bool:
        """Whether this trial continues its parent's trunk."""
        return self.state is not None

    def save(self, state: Any) -> Optional[str]:
        """Save ``state`` as this trial's trunk checkpoint and return its artifact id.

        ``state`` may contain tensors, numbers, strings, lists and dicts (what
        ``torch.load(..., weights_only=True)`` reads back). In restart mode this does
        nothing and returns ``None``.
        """
        if self.trunk_step is None or self.artifact_store is None:
            return None
        import torch

        payload = {
            "budgetsearch": {
                "format": _CHECKPOINT_FORMAT,
                "study": self.trial.study.study_name,
                "trial": self.trial.number,
                "config": self.config,
                "trunk_step": self.trunk_step,
            },
            "state": state,
        }
        folder = tempfile.mkdtemp(prefix="budgetsearch-trunk-")
        path = os.path.join(folder, f"trunk-trial-{self.trial.number}.pt")
        try:
            torch.save(payload, path)
            artifact_id = upload_artifact(
                artifact_store=self.artifact_store, file_path=path, study_or_trial=self.trial
            )
        finally:
            if os.path.exists(path):
                os.remove(path)
            os.rmdir(folder)
        self.trial.set_user_attr(_attrs.TRUNK_ARTIFACT, artifact_id)
        logger.info("Trial %d saved its trunk checkpoint at step %d.", self.trial.number, self.trunk_step)
        return artifact_id


def _settings_for(trial: Any) -> Any:
    from budgetsearch._status import load_settings

    study = trial.study
    settings = load_settings(database_for(study._storage), study)
    if settings is None:
        raise ValueError(
            f"trial {trial.number}'s study has no budgetsearch settings: create it with budgetsearch.BudgetSampler."
        )
    return settings


def resume_for(trial: "optuna.Trial", *, artifact_store: Any = None) -> ResumePoint:
    """Return where ``trial`` starts: from scratch, or from its parent's trunk checkpoint.

    In resume mode a promoted trial downloads its parent's trunk checkpoint from the
    artifact store (``artifact_store``, else a ``FileSystemArtifactStore`` on the study's
    ``artifact_dir``). When the checkpoint is missing, the trial reserves the rest of
    its budget, starts from scratch and records why in the user attribute
    ``budgetsearch:resume_fallback``.

    Raises:
        CheckpointError: The parent's checkpoint is corrupt or belongs to another job.
        NoBudgetForRestartError: The checkpoint is missing and the rest of the budget
            does not fit the study's total budget.
    """
    from budgetsearch._objective import trial_budget

    trial_budget(trial)
    settings = _settings_for(trial)
    attrs = trial.user_attrs
    config = attrs[_attrs.CONFIG]
    if settings.mode != "resume":
        return ResumePoint(trial, 0, None, None, None, None, config)

    store = artifact_store if artifact_store is not None else FileSystemArtifactStore(settings.artifact_dir)
    budget = attrs[_attrs.BUDGET]
    own_trunk = settings.trunk_step(budget)
    start_step = int(attrs.get(_attrs.START_STEP, 0))
    parent = attrs.get(_attrs.PARENT)
    if start_step == 0 or parent is None:
        return ResumePoint(trial, 0, own_trunk, parent, None, store, config)

    study = trial.study
    parent_trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, parent)
    parent_attrs = study._storage.get_trial_user_attrs(parent_trial_id)
    artifact_id = parent_attrs.get(_attrs.TRUNK_ARTIFACT)
    if artifact_id is None:
        reason = f"parent trial {parent} saved no trunk checkpoint"
        return _restart_from_scratch(trial, settings, store, own_trunk, parent, config, reason)

    folder = tempfile.mkdtemp(prefix="budgetsearch-trunk-")
    path = os.path.join(folder, "trunk.pt")
    try:
        try:
            download_artifact(artifact_store=store, file_path=path, artifact_id=artifact_id)
        except (ArtifactNotFound, FileNotFoundError) as error:
            reason = f"parent trial {parent}'s trunk checkpoint {artifact_id} is missing ({error})"
            return _restart_from_scratch(trial, settings, store, own_trunk, parent, config, reason)
        payload = _load_checkpoint(path, trial.number, parent)
    finally:
        if os.path.exists(path):
            os.remove(path)
        os.rmdir(folder)

    header = payload.get("budgetsearch", {}) if isinstance(payload, dict) else {}
    expected = {"config": config, "trunk_step": start_step, "trial": parent, "study": study.study_name}
    found = {key: header.get(key) for key in expected}
    if found != expected:
        mismatches = ", ".join(f"{key} {found[key]!r} (expected {expected[key]!r})" for key in expected if found[key] != expected[key])
        raise CheckpointError(
            f"trial {trial.number} cannot resume from parent trial {parent}: its trunk checkpoint "
            f"{artifact_id} was saved for another job: {mismatches}."
        )
    trial.set_user_attr(_attrs.RESUMED_FROM_STEP, start_step)
    logger.info("Trial %d resumes parent trial %d's trunk at step %d.", trial.number, parent, start_step)
    return ResumePoint(trial, start_step, own_trunk, parent, payload["state"], store, config)


def _load_checkpoint(path: str, trial_number: int, parent: int) -> Dict[str, Any]:
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file.
        raise CheckpointError(
            f"trial {trial_number} cannot resume from parent trial {parent}: its trunk checkpoint "
            f"is corrupt or unreadable ({type(error).__name__}: {error})."
        ) from error
    if not isinstance(payload, dict) or "state" not in payload:
        raise CheckpointError(
            f"trial {trial_number} cannot resume from parent trial {parent}: its trunk checkpoint "
            "is not a budgetsearch checkpoint."
        )
    return payload


def _restart_from_scratch(
    trial: Any, settings: Any, store: Any, own_trunk: int, parent: int, config: int, reason: str
) -> ResumePoint:
    """Reserve the rest of the trial's budget and start it from step 0, or fail with the reason."""
    study = trial.study
    database = database_for(study._storage)

    def reserve(connection: sa.engine.Connection) -> Optional[int]:
        database.next_sequence(connection, study._study_id)
        row = connection.execute(
            sa.select(claims_table.c.id, claims_table.c.start_step, claims_table.c.reserved)
            .where(claims_table.c.study_id == study._study_id)
            .where(claims_table.c.trial_number == trial.number)
        ).first()
        if settings.total_budget is not None:
            reserved = connection.execute(
                sa.select(sa.func.coalesce(sa.func.sum(claims_table.c.reserved), 0)).where(
                    claims_table.c.study_id == study._study_id
                )
            ).scalar()
            if int(reserved) + row.start_step > settings.total_budget:
                return None
        connection.execute(
            claims_table.update()
            .where(claims_table.c.id == row.id)
            .values(start_step=0, reserved=row.reserved + row.start_step)
        )
        return row.start_step

    added = database.run(reserve)
    if added is None:
        raise NoBudgetForRestartError(
            f"trial {trial.number} cannot start: {reason}, and starting from scratch needs more "
            "budget than the study's total budget has left."
        )
    trial.set_user_attr(_attrs.RESUME_FALLBACK, reason)
    logger.warning("Trial %d starts from scratch: %s; it reserved %d more units.", trial.number, reason, added)
    return ResumePoint(trial, 0, own_trunk, parent, None, store, config)
