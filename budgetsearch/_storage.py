"""An Optuna RDB storage that waits for its database to come back instead of failing."""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Optional

import sqlalchemy as sa
from optuna.exceptions import StorageInternalError
from optuna.storages import RDBStorage

from budgetsearch._tables import DEFAULT_DB_WAIT, Outage, is_disconnect, network_connect_args, retry_table_creation

# The storage calls that reach the database, including the private ones that Optuna's
# cache (_CachedStorage, which wraps every RDB storage of a study) calls directly.
_RETRIED = (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "set_trial_param",
    "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id",
    "get_trial_param",
    "get_trial_params",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "get_trial",
    "get_all_trials",
    "get_n_trials",
    "get_best_trial",
    "record_heartbeat",
    "_get_trials",
    "_create_new_trial",
    "_set_trial_param",
    "_get_best_trial_id",
    "_get_stale_trial_ids",
)


class ReconnectingStorage(RDBStorage):
    """Optuna's RDB storage, retrying each call while the database cannot be reached.

    When the server restarts or the network drops, each storage call is retried with
    backoff for up to ``db_wait`` seconds. After that the call raises
    :class:`budgetsearch.DatabaseUnavailableError`, which names the database. Other
    errors pass through at once. budgetsearch's own transactions on the same database
    wait for the same ``db_wait``.

    Example::

        storage = budgetsearch.ReconnectingStorage("postgresql+psycopg://tuner@db/studies", db_wait=300)
        study = optuna.load_study(study_name="resnet", storage=storage, sampler=..., pruner=...)

    Args:
        url: The SQLAlchemy URL of the database.
        db_wait: Seconds to keep retrying an unreachable database.
        engine_kwargs: Passed to :func:`sqlalchemy.create_engine`. On a server database,
            ``pool_pre_ping`` is on unless set here, so that connections the server
            closed are replaced. The driver also gets TCP keepalives and timeouts, so
            that a cut network link gives an error instead of a hang. On PostgreSQL
            that error comes after 30 s of unacknowledged data.
        **kwargs: Other arguments of :class:`optuna.storages.RDBStorage`.

    Note:
        A call that creates something (a trial, a study) and loses its connection
        after the server committed it is run again, so in that rare case the database
        keeps one extra running trial that no job owns.
    """

    def __init__(
        self, url: str, *, db_wait: float = DEFAULT_DB_WAIT, engine_kwargs: Optional[Dict[str, Any]] = None, **kwargs: Any
    ) -> None:  # noqa: D107
        if db_wait < 0:
            raise ValueError(f"db_wait={db_wait!r} is invalid: pass a number of seconds, 0 or more.")
        self.db_wait = db_wait
        engine_kwargs = dict(engine_kwargs or {})
        if not url.startswith("sqlite"):
            engine_kwargs.setdefault("pool_pre_ping", True)
            engine_kwargs["connect_args"] = {**network_connect_args(url), **engine_kwargs.get("connect_args", {})}
        def initialize() -> None:
            # A failed try leaves an engine behind; its pooled connections are closed first.
            if getattr(self, "engine", None) is not None:
                self.engine.dispose()
            RDBStorage.__init__(self, url, engine_kwargs=engine_kwargs, **kwargs)

        retry_table_creation(lambda: _with_retries(initialize, url, db_wait))


def _with_retries(call: Callable[[], Any], url: Any, seconds: float) -> Any:
    outage = Outage(url, seconds)
    while True:
        try:
            return call()
        except (sa.exc.DBAPIError, StorageInternalError) as error:
            if not is_disconnect(error):
                raise
            outage.retry_or_raise(error)


def _retrying(name: str) -> Callable[..., Any]:
    method = getattr(RDBStorage, name)

    @functools.wraps(method)
    def call(self: ReconnectingStorage, *args: Any, **kwargs: Any) -> Any:
        return _with_retries(lambda: method(self, *args, **kwargs), self.url, self.db_wait)

    return call


for _name in _RETRIED:
    setattr(ReconnectingStorage, _name, _retrying(_name))
