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
from typing import Any, Callable, Dict, Iterator, TypeVar

import sqlalchemy as sa
from optuna.storages import BaseStorage, InMemoryStorage, RDBStorage
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.pool import StaticPool

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2

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
)

T = TypeVar("T")


class SchemaVersionError(RuntimeError):
    """The budgetsearch tables in the database have another schema version."""


class StudyDatabase:
    """budgetsearch's tables for one Optuna storage, with serialized claim transactions."""

    def __init__(self, engine: Engine, *, single_connection: bool = False, upgrade: bool = False) -> None:
        self.engine = engine
        # One shared connection (in-memory SQLite) needs a lock across threads.
        self._lock = threading.RLock() if single_connection else None
        self._ensure_schema(upgrade)

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

        self.run(create)

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        if self._lock is not None:
            with self._lock, self.engine.begin() as connection:
                yield connection
        else:
            with self.engine.begin() as connection:
                yield connection

    def run(self, work: Callable[[Connection], T], *, attempts: int = 20) -> T:
        """Run ``work`` in one transaction, retrying lock timeouts, deadlocks and serialization failures."""
        for attempt in range(attempts):
            try:
                with self._transaction() as connection:
                    return work(connection)
            except (OperationalError, DBAPIError) as error:
                if isinstance(error, IntegrityError) or not _is_transient(error) or attempt == attempts - 1:
                    raise
                delay = min(2.0, 0.05 * 2**attempt) * (0.5 + random.random())
                logger.info("Retrying a budgetsearch transaction after %s (attempt %d).", type(error.orig).__name__, attempt + 1)
                time.sleep(delay)
        raise AssertionError("unreachable")

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
    connection.execute(schema_table.update().values(version=version))
    logger.info("Upgraded the budgetsearch tables to schema version %d.", version)


def _package_version() -> str:
    from budgetsearch import __version__

    return __version__


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
            database = _databases_by_url.get(key)
            if database is None:
                database = StudyDatabase(create_engine_for(key), upgrade=upgrade)
                _databases_by_url[key] = database
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


def create_engine_for(url: str) -> Engine:
    """Create an engine for budgetsearch's tables at ``url``."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 60})
        _configure_sqlite(engine)
        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2)
