"""budgetsearch's own tables: creation on an empty database and schema versions."""

import pytest
import sqlalchemy as sa

from budgetsearch import SchemaVersionError
from budgetsearch._tables import SCHEMA_VERSION, StudyDatabase, create_engine_for, schema_table


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
