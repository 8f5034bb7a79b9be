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
    from budgetsearch.testing import create_scratch_database, drop_scratch_database

    created = {}
    name = f"budgetsearch_tests_{os.getpid()}"

    def database_url(backend):
        if backend not in created:
            created[backend] = create_scratch_database(server_url(backend), name)
        return created[backend]

    yield database_url
    for backend in created:
        drop_scratch_database(server_url(backend), name)


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
