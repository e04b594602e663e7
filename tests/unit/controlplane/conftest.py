"""Databases for the state-store tests: an SQLite file and a real PostgreSQL server.

PostgreSQL tests use a database created for this session (and dropped at
its end) on the server named by MODELPORT_TEST_POSTGRES, by default the
local one with trust authentication; they are skipped when it is down.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from modelport.controlplane.store import Database
from tests.unit.controlplane.stores import Stores

POSTGRES_ADMIN_URL = os.environ.get(
    "MODELPORT_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str | None]:
    """A fresh PostgreSQL database for this session (its URL), or None when unreachable."""
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"modelport_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError:
        admin.dispose()
        yield None
        return
    try:
        yield sa.make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _empty_postgres(url: str) -> None:
    """Drop every table, so each test starts from a database never migrated."""
    engine = sa.create_engine(url)
    try:
        reflected = sa.MetaData()
        reflected.reflect(engine)
        reflected.drop_all(engine)
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL with nothing in it, on each backend."""
    if request.param == "sqlite":
        return Database.sqlite_url(tmp_path / "data")
    database: str | None = request.getfixturevalue("postgres_database")
    if database is None:
        pytest.skip(f"PostgreSQL is not reachable at {sa.make_url(POSTGRES_ADMIN_URL)}")
    _empty_postgres(database)
    return database


@pytest.fixture
def store(url: str) -> Iterator[Stores]:
    with Stores.open(url) as opened:
        yield opened
