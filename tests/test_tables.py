"""budgetsearch's own tables: creation on an empty database and schema versions."""

import threading

import pytest
import sqlalchemy as sa

from budgetsearch import ReconnectingStorage, SchemaVersionError
from budgetsearch._tables import SCHEMA_VERSION, StudyDatabase, claims_table, create_engine_for, schema_table
from budgetsearch.testing import scratch_database


def test_empty_database_gets_every_table(tmp_path):
    engine = create_engine_for(f"sqlite:///{tmp_path / 'empty.db'}")
    StudyDatabase(engine)
    names = set(sa.inspect(engine).get_table_names())
    assert {"budgetsearch_schema", "budgetsearch_studies", "budgetsearch_claims"} <= names
    with engine.connect() as connection:
        assert connection.execute(sa.select(schema_table.c.version)).scalar() == SCHEMA_VERSION


@pytest.mark.parametrize(
    "stored,named",
    [(SCHEMA_VERSION - 1, "budgetsearch db upgrade"), (SCHEMA_VERSION + 1, "upgrade budgetsearch")],
)
def test_other_schema_version_is_rejected(tmp_path, stored, named):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    StudyDatabase(create_engine_for(url))
    engine = create_engine_for(url)
    with engine.begin() as connection:
        connection.execute(schema_table.update().values(version=stored))
    with pytest.raises(SchemaVersionError) as raised:
        StudyDatabase(create_engine_for(url))
    message = str(raised.value)
    assert f"schema version {stored}" in message
    assert f"version {SCHEMA_VERSION}" in message
    assert named in message


def version_1_tables(engine):
    """Create budgetsearch's tables as schema version 1 made them."""
    old = sa.MetaData()
    sa.Table("budgetsearch_schema", old, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
             sa.Column("version", sa.Integer, nullable=False))
    sa.Table("budgetsearch_studies", old, sa.Column("study_id", sa.Integer, primary_key=True, autoincrement=False),
             sa.Column("study_name", sa.String(512), nullable=False), sa.Column("settings", sa.Text, nullable=False),
             sa.Column("created_at", sa.Float, nullable=False), sa.Column("sequence", sa.Integer, nullable=False))
    columns = [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        *(sa.Column(name, sa.Integer, nullable=False) for name in (
            "study_id", "config", "rung", "attempt", "bracket", "budget", "start_step", "reserved",
            "trial_number", "trial_id", "config_trial_id", "claimed_sequence")),
        sa.Column("spent", sa.Integer), sa.Column("parent", sa.Integer), sa.Column("finished_sequence", sa.Integer),
        sa.Column("state", sa.String(16), nullable=False), sa.Column("value", sa.Float),
        sa.Column("worker", sa.String(128)), sa.Column("claimed_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float),
    ]
    sa.Table("budgetsearch_claims", old, *columns)
    old.create_all(engine)
    with engine.begin() as connection:
        connection.execute(old.tables["budgetsearch_schema"].insert().values(id=1, version=1))
        connection.execute(old.tables["budgetsearch_claims"].insert().values(
            study_id=1, config=0, rung=0, attempt=0, bracket=0, budget=1, start_step=0, reserved=1,
            trial_number=0, trial_id=1, config_trial_id=1, claimed_sequence=1, state="complete",
            value=0.5, claimed_at=1.0))
        connection.execute(old.tables["budgetsearch_claims"].insert().values(
            study_id=1, config=0, rung=1, attempt=0, bracket=0, budget=3, start_step=0, reserved=1,
            trial_number=1, trial_id=2, config_trial_id=1, claimed_sequence=2, state="lost", claimed_at=2.0))


@pytest.fixture
def scratch_database_url(request, tmp_path):
    """A URL of an empty database of each kind, dropped after the test."""
    from conftest import server_url

    kind = request.param
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'scratch.db'}"
        return
    with scratch_database(server_url(kind)) as url:
        yield url
        sa.create_engine(url).dispose()


@pytest.mark.parametrize("scratch_database_url", ["sqlite", "postgresql", "mysql"], indirect=True)
def test_upgrade_from_version_1(scratch_database_url):
    engine = create_engine_for(scratch_database_url)
    version_1_tables(engine)
    with pytest.raises(SchemaVersionError, match="schema version 1, but this budgetsearch uses version 3") as raised:
        StudyDatabase(engine)
    assert "budgetsearch db upgrade" in str(raised.value)
    assert isinstance(raised.value.__cause__, sa.exc.DBAPIError)
    assert "heartbeat_at" in str(raised.value.__cause__)
    StudyDatabase(engine, upgrade=True)
    StudyDatabase(engine)
    inspector = sa.inspect(engine)
    assert "heartbeat_at" in {column["name"] for column in inspector.get_columns("budgetsearch_claims")}
    indexes = {index["name"] for index in inspector.get_indexes("budgetsearch_claims")}
    assert {"ix_budgetsearch_claims_state", "ix_budgetsearch_claims_finished", "ix_budgetsearch_claims_trial"} <= indexes
    with engine.connect() as connection:
        assert connection.execute(sa.select(schema_table.c.version)).scalar() == SCHEMA_VERSION == 3
        rows = connection.execute(
            sa.select(claims_table.c.state, claims_table.c.value, claims_table.c.finished_sequence)
            .order_by(claims_table.c.id)
        ).all()
    # Data survives, and the lost claim now carries a sequence number like every finished claim.
    assert [tuple(row) for row in rows] == [("complete", 0.5, None), ("lost", None, 2)]
    engine.dispose()


def create_budgetsearch_tables(url):
    engine = create_engine_for(url)
    try:
        StudyDatabase(engine)
    finally:
        engine.dispose()


def create_optuna_tables(url):
    ReconnectingStorage(url).engine.dispose()


@pytest.mark.parametrize("create", [create_budgetsearch_tables, create_optuna_tables])
@pytest.mark.parametrize("scratch_database_url", ["sqlite", "postgresql", "mysql"], indirect=True)
def test_concurrent_table_creation_succeeds(scratch_database_url, create):
    # Workers started together on an empty database all create the tables at once.
    count = 8
    barrier = threading.Barrier(count)
    errors = []

    def create_after_barrier():
        barrier.wait()
        try:
            create(scratch_database_url)
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=create_after_barrier) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    create(scratch_database_url)
