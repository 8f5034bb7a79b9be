import os
import sys
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SYNTHETIC_STUDY = os.path.join(HERE, "studies", "synthetic.py")

SERVER_VARIABLES = {
    "postgresql": ("BUDGETSEARCH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    "mysql": ("BUDGETSEARCH_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test"),
}


def server_url(backend):
    """Return the test server URL for ``backend`` from its environment variable, or skip."""
    variable, example = SERVER_VARIABLES[backend]
    url = os.environ.get(variable)
    if not url and os.environ.get("BUDGETSEARCH_REQUIRE_SERVERS"):
        pytest.fail(f"{variable} is not set but BUDGETSEARCH_REQUIRE_SERVERS is: set it to a {backend} database, for example {example}")
    if not url:
        pytest.skip(f"{variable} is not set: set it to a {backend} database for tests, for example {example}")
    return url


@pytest.fixture(scope="session")
def server_databases():
    """Create one empty database per test server for this test session, and drop it after."""
    import sqlalchemy as sa

    created = {}
    name = f"budgetsearch_tests_{os.getpid()}"

    def database_url(backend):
        if backend not in created:
            admin = sa.create_engine(server_url(backend), isolation_level="AUTOCOMMIT")
            with admin.connect() as connection:
                connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
                connection.exec_driver_sql(f"CREATE DATABASE {name}")
            created[backend] = admin
        return sa.engine.make_url(server_url(backend)).set(database=name).render_as_string(hide_password=False)

    yield database_url
    for admin in created.values():
        with admin.connect() as connection:
            if admin.dialect.name == "postgresql":
                connection.exec_driver_sql(
                    f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                )
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def storage_url(request, tmp_path, server_databases):
    """A storage URL on each database kind: a fresh SQLite file or a fresh database on a test server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    return server_databases(request.param)


@pytest.fixture
def study_name():
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def cli_environment():
    """Environment for budgetsearch subprocesses: the package importable from this checkout."""
    environment = dict(os.environ)
    root = os.path.dirname(HERE)
    environment["PYTHONPATH"] = root + os.pathsep + environment.get("PYTHONPATH", "")
    environment.pop("BUDGETSEARCH_STORAGE", None)
    return environment


def budgetsearch_command(*args):
    return [sys.executable, "-m", "budgetsearch", *args]
