"""budgetsearch's own tables, kept in the same database as the Optuna study.

Three tables, all prefixed ``budgetsearch_`` so they cannot clash with Optuna's
tables or with Alembic's version table:

* ``budgetsearch_schema``: one row with the schema version of these tables.
* ``budgetsearch_studies``: one row per study with its resolved settings. Claims of
  a study are decided while this row is locked, so decisions are serialized.
* ``budgetsearch_claims``: one row per job a worker reserved, unique on
  (study, configuration, rung, attempt).
"""

from __future__ import annotations

import logging
import random
import threading
import time
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, Optional, TypeVar

import sqlalchemy as sa
from optuna.storages import BaseStorage, InMemoryStorage, RDBStorage
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.pool import StaticPool

from budgetsearch._settings import DEFAULT_DB_WAIT

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 3

# Floating-point columns are DOUBLE: MySQL's FLOAT keeps 24 bits, which rounds
# timestamps to minutes and can merge distinct rung results into ties.
Double = sa.Double

metadata = sa.MetaData()

schema_table = sa.Table(
    "budgetsearch_schema",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("version", sa.Integer, nullable=False),
)

studies_table = sa.Table(
    "budgetsearch_studies",
    metadata,
    sa.Column("study_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("study_name", sa.String(512), nullable=False),
    sa.Column("settings", sa.Text, nullable=False),
    sa.Column("created_at", Double, nullable=False),
    # Counts the study's locked transactions: claims and results get a number from it,
    # which orders them exactly across processes whatever their clocks.
    sa.Column("sequence", sa.Integer, nullable=False, default=0),
)

claims_table = sa.Table(
    "budgetsearch_claims",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study_id", sa.Integer, nullable=False),
    sa.Column("config", sa.Integer, nullable=False),
    sa.Column("rung", sa.Integer, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("bracket", sa.Integer, nullable=False),
    sa.Column("budget", sa.Integer, nullable=False),
    sa.Column("start_step", sa.Integer, nullable=False),
    sa.Column("reserved", sa.Integer, nullable=False),
    sa.Column("spent", sa.Integer, nullable=True),
    sa.Column("trial_number", sa.Integer, nullable=False),
    sa.Column("trial_id", sa.Integer, nullable=False),
    sa.Column("config_trial_id", sa.Integer, nullable=False),
    sa.Column("parent", sa.Integer, nullable=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("value", Double, nullable=True),
    sa.Column("worker", sa.String(128), nullable=True),
    sa.Column("claimed_at", Double, nullable=False),
    sa.Column("finished_at", Double, nullable=True),
    # time.time() of the worker's last heartbeat; NULL for trials run without a
    # heartbeat thread (study.optimize), which are never declared lost.
    sa.Column("heartbeat_at", Double, nullable=True),
    sa.Column("claimed_sequence", sa.Integer, nullable=False),
    sa.Column("finished_sequence", sa.Integer, nullable=True),
    sa.UniqueConstraint("study_id", "config", "rung", "attempt", name="uq_budgetsearch_job"),
    sa.Index("ix_budgetsearch_claims_study", "study_id"),
    # A decision reads the running claims and the claims finished since its last read;
    # a result and a heartbeat find their claim by trial number.
    sa.Index("ix_budgetsearch_claims_state", "study_id", "state"),
    sa.Index("ix_budgetsearch_claims_finished", "study_id", "finished_sequence"),
    sa.Index("ix_budgetsearch_claims_trial", "study_id", "trial_number"),
)

# Indexes added by schema version 3.
_VERSION_3_INDEXES = ("ix_budgetsearch_claims_state", "ix_budgetsearch_claims_finished", "ix_budgetsearch_claims_trial")

T = TypeVar("T")

# A study system attribute that ties an Optuna study to its budgetsearch settings row, holding
# the row's created_at. SQLite gives a re-created study the id of a deleted one, often with the
# same name, so only this attribute distinguishes the new study from the deleted one.
SETTINGS_MARKER = "budgetsearch:settings_created_at"


def settings_marker(study: Any) -> Optional[float]:
    """Return the study's SETTINGS_MARKER attribute, or None if it has none."""
    return study._storage.get_study_system_attrs(study._study_id).get(SETTINGS_MARKER)


def current_settings_row(connection: Connection, study: Any, marker: Optional[float]) -> Any:
    """Return the study's budgetsearch_studies row, or None if it has none or the row is a deleted study's."""
    row = connection.execute(sa.select(studies_table).where(studies_table.c.study_id == study._study_id)).first()
    return row if settings_row_is_current(connection, study, row, marker) else None


def settings_row_is_current(connection: Connection, study: Any, row: Any, marker: Optional[float]) -> bool:
    """Return whether ``row`` of budgetsearch_studies belongs to ``study``, not to a deleted study with its id.

    ``marker`` is the study's SETTINGS_MARKER attribute, or None if it has none.
    """
    if row is None or row.study_name != study.study_name:
        return False
    if marker is not None:
        return marker == row.created_at
    # The row was stored before the marker existed, or its creator stopped before setting it.
    # It is the study's own if every claim names one of the study's trials.
    claims = connection.execute(
        sa.select(claims_table.c.trial_id, claims_table.c.trial_number).where(claims_table.c.study_id == row.study_id)
    ).all()
    if not claims:
        return True
    numbers = {trial._trial_id: trial.number for trial in study._storage.get_all_trials(study._study_id, deepcopy=False)}
    return all(numbers.get(claim.trial_id) == claim.trial_number for claim in claims)


def retry_table_creation(create: Callable[[], T], tries: int = 5) -> T:
    """Call ``create`` and retry it when it fails with a database error.

    Processes started together on an empty database race to create the same tables.
    The loser's statement fails (a duplicate type on PostgreSQL, "table already exists"
    on MySQL), and its next try finds the tables in place.
    """
    for attempt in range(1, tries + 1):
        try:
            return create()
        except DBAPIError as error:
            if attempt == tries:
                raise
            logger.info(
                "Creating tables failed (%s); another process may be creating them, so retrying.",
                str(error.orig).strip().splitlines()[0] if error.orig else error,
            )
            time.sleep(0.05 * attempt * (0.5 + random.random()))
    raise AssertionError("unreachable")


class SchemaVersionError(RuntimeError):
    """The budgetsearch tables in the database have another schema version."""


class DatabaseUnavailableError(RuntimeError):
    """The study's database stayed unreachable for longer than the wait allowed."""


class StudyDatabase:
    """budgetsearch's tables for one Optuna storage, with serialized claim transactions."""

    def __init__(
        self,
        engine: Engine,
        *,
        single_connection: bool = False,
        upgrade: bool = False,
        db_wait: float = DEFAULT_DB_WAIT,
    ) -> None:
        self.engine = engine
        # How long run() retries a database it cannot reach.
        self.db_wait = db_wait
        # One shared connection (in-memory SQLite) needs a lock across threads.
        self._lock = threading.RLock() if single_connection else None
        # time.monotonic() of the last failed connection, or of the creation of this object.
        self._last_outage = time.monotonic()
        self._ensure_schema(upgrade)

    def reachable_for(self) -> float:
        """Return the seconds since this process last failed to reach the database, or since it started."""
        return time.monotonic() - self._last_outage

    def _ensure_schema(self, upgrade: bool) -> None:
        def create(connection: Connection) -> None:
            metadata.create_all(connection)
            row = connection.execute(sa.select(schema_table.c.version)).first()
            if row is None:
                connection.execute(schema_table.insert().values(id=1, version=SCHEMA_VERSION))
            elif row.version < SCHEMA_VERSION and upgrade:
                _upgrade(connection, row.version)
            elif row.version > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"The budgetsearch tables in this database have schema version {row.version}, "
                    f"newer than version {SCHEMA_VERSION} of this budgetsearch {_package_version()}: "
                    "upgrade budgetsearch to use this database."
                )
            elif row.version < SCHEMA_VERSION:
                message = (
                    f"The budgetsearch tables in this database have schema version {row.version}, "
                    f"but this budgetsearch uses version {SCHEMA_VERSION}. "
                    "Run `budgetsearch db upgrade --storage URL` to upgrade them."
                )
                # Reading a column the old schema lacks gives the database's own error,
                # kept as the cause so that its text is in the traceback.
                try:
                    connection.execute(sa.select(claims_table.c.heartbeat_at).limit(1)).all()
                except DBAPIError as error:
                    raise SchemaVersionError(message) from error
                raise SchemaVersionError(message)

        retry_table_creation(lambda: self.run(create))

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        if self._lock is not None:
            with self._lock, self.engine.begin() as connection:
                yield connection
        else:
            with self.engine.begin() as connection:
                yield connection

    def run(self, work: Callable[[Connection], T], *, attempts: int = 20, wait: bool = True) -> T:
        """Run ``work`` in one transaction and return its result.

        Lock timeouts, deadlocks and serialization failures are retried up to ``attempts``
        times. A database that cannot be reached is retried with backoff for up to
        ``db_wait`` seconds (with ``wait``), after which :class:`DatabaseUnavailableError`
        is raised.
        """
        attempt = 0
        outage = Outage(self.engine.url, self.db_wait if wait else 0.0)
        while True:
            try:
                with self._transaction() as connection:
                    return work(connection)
            except DBAPIError as error:
                if is_disconnect(error):
                    self._last_outage = time.monotonic()
                    outage.retry_or_raise(error)
                    continue
                attempt += 1
                if isinstance(error, IntegrityError) or not _is_transient(error) or attempt == attempts:
                    raise
                delay = min(2.0, 0.05 * 2 ** (attempt - 1)) * (0.5 + random.random())
                logger.info("Retrying a budgetsearch transaction after %s (attempt %d).", type(error.orig).__name__, attempt)
                time.sleep(delay)

    def lock_study(self, connection: Connection, study_id: int) -> Any:
        """Lock and return the study's settings row for the rest of the transaction."""
        query = sa.select(studies_table).where(studies_table.c.study_id == study_id)
        if connection.dialect.name in ("postgresql", "mysql", "mariadb"):
            query = query.with_for_update()
        return connection.execute(query).first()

    def next_sequence(self, connection: Connection, study_id: int) -> int:
        """Lock the study's row and return the next number of its sequence."""
        row = self.lock_study(connection, study_id)
        if row is None:
            raise RuntimeError(f"study id {study_id} has no budgetsearch settings row.")
        sequence = row.sequence + 1
        connection.execute(
            studies_table.update().where(studies_table.c.study_id == study_id).values(sequence=sequence)
        )
        return sequence


def _upgrade(connection: Connection, version: int) -> None:
    """Bring budgetsearch's tables from schema ``version`` to SCHEMA_VERSION, one step at a time."""
    if version == 1:
        double = Double().compile(dialect=connection.dialect)
        connection.exec_driver_sql(f"ALTER TABLE budgetsearch_claims ADD COLUMN heartbeat_at {double}")
        if connection.dialect.name in ("mysql", "mariadb"):
            for table, column, null in (
                ("budgetsearch_claims", "value", "NULL"),
                ("budgetsearch_claims", "claimed_at", "NOT NULL"),
                ("budgetsearch_claims", "finished_at", "NULL"),
                ("budgetsearch_studies", "created_at", "NOT NULL"),
            ):
                connection.exec_driver_sql(f"ALTER TABLE {table} MODIFY {column} {double} {null}")
        version = 2
    if version == 2:
        for index in claims_table.indexes:
            if index.name in _VERSION_3_INDEXES:
                index.create(connection)
        # Version 2 left finished_sequence empty on lost claims; the sequence orders
        # every change of a claim's state from version 3 on.
        connection.execute(
            claims_table.update()
            .where(claims_table.c.state == "lost")
            .where(claims_table.c.finished_sequence.is_(None))
            .values(finished_sequence=claims_table.c.claimed_sequence)
        )
        version = 3
    connection.execute(schema_table.update().values(version=version))
    logger.info("Upgraded the budgetsearch tables to schema version %d.", version)


def _package_version() -> str:
    from budgetsearch import __version__

    return __version__


class Outage:
    """Backoff between retries of an unreachable database, up to a total wait."""

    def __init__(self, url: Any, seconds: float) -> None:  # noqa: D107
        self._url = url
        self._seconds = seconds
        self._started: float = 0.0
        self._tries = 0

    def retry_or_raise(self, error: BaseException) -> None:
        """Sleep before the next try, or raise DatabaseUnavailableError once the wait is over."""
        now = time.monotonic()
        if self._tries == 0:
            self._started = now
        waited = now - self._started
        if waited >= self._seconds:
            reason = str(getattr(error, "orig", error)).strip().splitlines()
            advice = "check that the server is running and reachable"
            if self._seconds > 0:
                advice += ", or wait longer with --db-wait SECONDS"
            raise DatabaseUnavailableError(
                f"database {_safe_url(self._url)} unreachable for {waited:.0f} s "
                f"({reason[0] if reason else type(error).__name__}): {advice}."
            ) from error
        if self._tries == 0:
            logger.warning(
                "Database %s unreachable (%s); retrying for up to %.0f s.",
                _safe_url(self._url), type(error).__name__, self._seconds,
            )
        self._tries += 1
        delay = min(5.0, 0.2 * 2 ** (self._tries - 1)) * (0.5 + random.random())
        time.sleep(min(delay, max(0.0, self._seconds - waited)))


def _safe_url(url: Any) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # An unparsable URL is shown as it was given.
        return str(url)


_DISCONNECT_MARKERS = (
    "connection refused",
    "could not connect",
    "server closed the connection",
    "terminating connection",
    "connection reset",
    "connection is closed",
    "connection already closed",
    "the connection is lost",
    "consuming input failed",
    "database system is shutting down",
    "database system is starting up",
    "the database system is in recovery mode",
    "lost connection",
    "server has gone away",
    "can't connect",
    "broken pipe",
)


def is_disconnect(error: BaseException) -> bool:
    """Return whether ``error`` (or the database error it wraps) means the server cannot be reached."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, DBAPIError):
            if error.connection_invalidated:
                return True
            text = str(error.orig).lower()
            if any(marker in text for marker in _DISCONNECT_MARKERS):
                return True
        error = error.__cause__ or error.__context__
    return False


def _is_transient(error: DBAPIError) -> bool:
    text = str(error.orig).lower()
    markers = (
        "database is locked",
        "deadlock",
        "could not serialize",
        "lock wait timeout",
        "serialization failure",
        "try restarting transaction",
    )
    return any(marker in text for marker in markers)


def _configure_sqlite(engine: Engine) -> None:
    # pysqlite starts transactions lazily; BEGIN IMMEDIATE takes the write lock at
    # the start, so two processes never decide a claim from the same snapshot.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout = 60000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


_databases_by_url: Dict[str, StudyDatabase] = {}
_databases_by_memory_storage: "weakref.WeakKeyDictionary[BaseStorage, StudyDatabase]" = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


def _rdb_backend(storage: BaseStorage) -> BaseStorage:
    return getattr(storage, "_backend", storage)


def database_for(storage: BaseStorage, *, upgrade: bool = False) -> StudyDatabase:
    """Return budgetsearch's tables in the database behind an Optuna storage.

    With ``upgrade``, tables of an older schema version are upgraded; without it,
    they raise :class:`SchemaVersionError`.
    """
    backend = _rdb_backend(storage)
    with _registry_lock:
        if isinstance(backend, RDBStorage):
            url = backend.engine.url
            key = url.render_as_string(hide_password=False)
            db_wait = getattr(backend, "db_wait", DEFAULT_DB_WAIT)
            database = _databases_by_url.get(key)
            if database is None:
                database = StudyDatabase(create_engine_for(key), upgrade=upgrade, db_wait=db_wait)
                _databases_by_url[key] = database
            database.db_wait = db_wait
            return database
        if isinstance(backend, InMemoryStorage):
            database = _databases_by_memory_storage.get(backend)
            if database is None:
                engine = sa.create_engine(
                    "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
                )
                database = StudyDatabase(engine, single_connection=True)
                _databases_by_memory_storage[backend] = database
            return database
    raise ValueError(
        f"storage {type(backend).__name__} is not supported: budgetsearch needs an RDB storage "
        "(a SQLite, PostgreSQL or MySQL URL) to share a study between processes, or "
        "optuna.storages.InMemoryStorage for one process."
    )


def network_connect_args(url: Any) -> Dict[str, Any]:
    """Return driver options that turn a dead network path into an error instead of a hang.

    Without them, a query on a connection whose network link was cut waits for the
    operating system's TCP timeout, which takes many minutes.
    """
    backend = sa.engine.make_url(url).get_backend_name()
    if backend == "postgresql":
        # libpq: TCP keepalives, and an error when sent data stays unacknowledged for 30 s.
        return {
            "connect_timeout": 10,
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "tcp_user_timeout": 30000,
        }
    if backend in ("mysql", "mariadb") and sa.engine.make_url(url).get_driver_name() == "pymysql":
        return {"connect_timeout": 10, "read_timeout": 120, "write_timeout": 120}
    return {}


def create_engine_for(url: str) -> Engine:
    """Create an engine for budgetsearch's tables at ``url``."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 60})
        _configure_sqlite(engine)
        return engine
    return sa.create_engine(
        url, pool_pre_ping=True, pool_size=2, max_overflow=2, connect_args=network_connect_args(url)
    )
