"""The ledger's two backends for tests: a SQLite file, or a PostgreSQL database made for the test session.

The PostgreSQL server is the one on 127.0.0.1:5432 (trust authentication). Each session creates a throw-away
database `scm_test_<random>` from the `postgres` database and drops it at the end; each test gets its own schema in
it (the URL's search_path), so that tests never see each other's ledgers. With CI=true a missing server fails the
tests that need it; elsewhere they are skipped with a line saying why.
"""

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = os.environ.get("SCM_TEST_PG_USER", "postgres")


def _admin_conninfo(dbname: str) -> str:
    return f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={dbname} connect_timeout=3"


@contextmanager
def throwaway_database() -> Iterator[str]:
    """Create a database `scm_test_<random>` on the server, yield its URL (no password: trust), drop it after.

    Skips (or with CI=true fails) when the server cannot be reached."""
    import psycopg

    try:
        admin = psycopg.connect(_admin_conninfo("postgres"), autocommit=True)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0]
        reason = f"cannot connect to PostgreSQL at {PG_HOST}:{PG_PORT} as {PG_USER} ({first})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: the PostgreSQL tests must run, but {reason}")
        pytest.skip(f"PostgreSQL ledger tests skipped: {reason}; start it (see .ci/run) or set CI=true to fail")
    name = f"scm_test_{secrets.token_hex(6)}"
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """The URL (no password: trust) of a database that lives as long as the test session."""
    with throwaway_database() as url:
        yield url


@pytest.fixture
def pg_own_database() -> Iterator[str]:
    """The URL of a database of the test's own, dropped after it: for a test that cuts the database off (ALTER
    DATABASE ... ALLOW_CONNECTIONS false), which must not touch the session's database other tests use."""
    with throwaway_database() as url:
        yield url


@contextmanager
def pg_admin() -> Iterator[Any]:
    """An autocommit connection to the server's `postgres` database (for ALTER DATABASE, pg_terminate_backend)."""
    import psycopg

    with psycopg.connect(_admin_conninfo("postgres"), autocommit=True) as conn:
        yield conn


@pytest.fixture
def pg_ledger(pg_database: str) -> str:
    """A paths.ledger URL naming an empty schema of its own in the session's database."""
    import psycopg

    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(_admin_conninfo(pg_database.rsplit("/", 1)[1]), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return f"{pg_database}?options={quote(f'-csearch_path={schema}')}"


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_location(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where a new ledger goes, once per backend: a file path, or a postgresql:// URL."""
    if request.param == "sqlite":
        return tmp_path / "ledger.sqlite3"
    return str(request.getfixturevalue("pg_ledger"))
