"""One state-store database: its engine, its clock, and the transaction every store uses.

The policy, canary, key and audit stores (``policies.py``, ``canaries.py``,
``keys.py``, ``audit.py``) each own one aggregate and share one
:class:`Database`, so a write and the audit event it appends commit in
the same transaction and one connection pool serves them all.

The stores are synchronous and thread-safe (one pooled connection per
call); the API layer calls them through ``asyncio.to_thread``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from modelport.controlplane.store.connect import (
    WRITE,
    describe,
    driver_message,
    open_engine,
    parse_url,
    sqlite_url,
)
from modelport.controlplane.store.migrate import upgrade_to_head
from modelport.errors import ConfigError, Unavailable


def utc_now() -> datetime:
    return datetime.now(UTC)


class Database:
    """The control plane's durable state over one database (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine, where: str, clock: Callable[[], datetime]) -> None:
        """Use :meth:`open`; this assumes the schema is already current."""
        self._engine = engine
        self.where = where
        self._clock = clock

    @classmethod
    def open(cls, url: str, *, clock: Callable[[], datetime] = utc_now) -> Database:
        """Connect, migrate the schema to the newest revision, and return the database.

        ``clock`` stamps every stored change. Raises ConfigError (naming the
        URL, password masked) when the URL is unusable, the database cannot
        be reached or opened, or its schema is newer than this code.
        """
        parsed = parse_url(url)
        where = f"state store {describe(parsed)}"
        engine = open_engine(parsed)
        try:
            upgrade_to_head(engine, where)
        except DBAPIError as exc:
            engine.dispose()
            problem = f"cannot open the database: {driver_message(exc, parsed)}"
            raise ConfigError(where, "", problem) from None
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, where, clock)

    @staticmethod
    def sqlite_url(data_dir: Path) -> str:
        """The default store: ``state.db`` in the server's data directory."""
        return sqlite_url(data_dir / "state.db")

    def close(self) -> None:
        """Close the pooled connections; no store over it may be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def now(self) -> datetime:
        """The clock's time in UTC; a naive clock is a bug, refused loudly."""
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the store's clock must return aware datetimes")
        return now.astimezone(UTC)

    @contextmanager
    def transaction(self, *, write: bool = False) -> Iterator[Connection]:
        """One transaction; a database that is down or locked surfaces as Unavailable."""
        try:
            with self._engine.connect() as conn:
                if write:
                    conn.execution_options(**{WRITE: True})
                with conn.begin():
                    yield conn
        except (OperationalError, InterfaceError) as exc:
            message = driver_message(exc, self._engine.url)
            raise Unavailable(f"{self.where}: {message}") from None
