"""A database URL → a configured SQLAlchemy Engine, and error text safe to show.

Two backends, one schema: an SQLite file (the default, under the data
directory) and PostgreSQL through psycopg 3 (``postgresql://…`` is read as
``postgresql+psycopg://…``). Anything else is refused at open, with the URL
in the message and its password masked.

SQLite detail: Python's ``sqlite3`` starts transactions on its own, lazily,
and a transaction that reads before it writes cannot wait for another
writer (SQLite answers "database is locked" at once to avoid a deadlock).
So the driver's transaction handling is switched off and every transaction
begins explicitly: ``BEGIN IMMEDIATE`` (take the write lock, waiting up to
the busy timeout) for connections marked with :data:`WRITE`, a plain
``BEGIN`` for reads. Writers then queue instead of failing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from modelport.errors import ConfigError
from modelport.private_dirs import make_private_dirs

#: Execution option that marks a connection's transactions as writes.
WRITE = "modelport_write"

#: Seconds a writer waits for another writer before giving up.
SQLITE_BUSY_TIMEOUT_S = 30.0

#: Seconds to wait for PostgreSQL to accept a connection.
POSTGRES_CONNECT_TIMEOUT_S = 10

_SQLITE_DRIVERS = {"sqlite", "sqlite+pysqlite"}
_POSTGRES_DRIVERS = {"postgresql", "postgres", "postgresql+psycopg"}


def sqlite_url(path: Path) -> str:
    """The URL of an SQLite database file (``sqlite:///…``), for any path."""
    return URL.create("sqlite", database=str(path)).render_as_string()


def describe(url: URL) -> str:
    """The URL as error messages show it: the password replaced by ``***``."""
    return url.render_as_string(hide_password=True)


def scrub(message: str, url: URL) -> str:
    """Remove the URL's password from a driver message that may quote it."""
    if url.password:
        return message.replace(str(url.password), "***")
    return message


def driver_message(exc: BaseException, url: URL) -> str:
    """The database's own words, without SQLAlchemy's statement dump or link."""
    original = exc.orig if isinstance(exc, DBAPIError) else exc
    text = " ".join(str(original).split()) or type(original).__name__
    return scrub(text, url)


def parse_url(url: str) -> URL:
    """Parse and normalise a state-store URL, refusing what the store cannot use."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        # The text may hold a password in a shape make_url could not find.
        raise ConfigError(
            "state store", "url", "not a database URL (expected sqlite:///PATH or postgresql://…)"
        ) from None
    where = f"state store {describe(parsed)}"
    if parsed.drivername in _POSTGRES_DRIVERS:
        return parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername not in _SQLITE_DRIVERS:
        raise ConfigError(
            where, "", f"unsupported database {parsed.drivername!r}; use sqlite or postgresql"
        )
    if parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory":
        raise ConfigError(
            where, "", "an in-memory SQLite database would not survive a restart; give a file"
        )
    return parsed.set(drivername="sqlite")


def open_engine(url: URL) -> Engine:
    """An Engine for a URL from :func:`parse_url`; nothing is connected yet."""
    where = f"state store {describe(url)}"
    if url.drivername == "sqlite":
        _make_private_file(url, where)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
        _take_over_sqlite_transactions(engine)
        return engine
    try:
        return create_engine(
            url,
            pool_pre_ping=True,
            connect_args={"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S},
        )
    except (ImportError, NoSuchModuleError):
        raise ConfigError(
            where, "", "the PostgreSQL driver is missing; install modelport[postgres]"
        ) from None


def _make_private_file(url: URL, where: str) -> None:
    """Create the database file, and its directory if missing, for the owner only.

    The store holds key hashes, policies and the audit log, so a new file is
    made 0600 (and a new directory 0700) before SQLite opens it; SQLite gives
    its ``-wal``, ``-shm`` and journal files the database file's permissions.
    An existing file or directory keeps the mode its owner chose.
    """
    if url.query.get("uri") in ("true", "1"):
        return  # a file: URI; SQLite resolves it, and we cannot
    database = Path(str(url.database)).expanduser()
    parent = database.parent
    try:
        make_private_dirs(parent)
    except OSError as exc:
        raise ConfigError(
            where, "", f"cannot create the directory {parent}: {exc.strerror}"
        ) from None
    if database.exists():
        return
    try:
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass  # created meanwhile by another process
    except OSError as exc:
        raise ConfigError(where, "", f"cannot create {database}: {exc.strerror}") from None


def _take_over_sqlite_transactions(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the driver no longer emits BEGIN
        cursor = dbapi_connection.cursor()
        try:
            # Readers keep reading while one writer commits; the mode is stored
            # in the file, so this is a no-op after the first connection.
            cursor.execute("PRAGMA journal_mode=WAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection: Connection) -> None:
        write = connection.get_execution_options().get(WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
