"""StateStore: traffic policies, canaries, API keys and their history, kept across restarts.

Every write is optimistic. The caller names the revision it read (``None``
to create), and the write happens only if that is still the stored one:
an ``INSERT … ON CONFLICT DO NOTHING`` for a create, an
``UPDATE … WHERE revision = :expected`` otherwise, and the affected row
count says who won. Two writers holding the same revision cannot both
succeed: on PostgreSQL the second ``UPDATE`` waits for the first to commit
and then no longer matches; on SQLite writers are serialised by
``BEGIN IMMEDIATE``. The loser gets a RevisionConflict carrying the row as
it stands now.

Each policy or canary write appends its Event in the same transaction, so
the history never shows a change that did not happen, nor misses one that
did. Events form a hash chain (``chain.py``, ``audit.py``): an edit, removal
or insertion made behind the store's back shows up in :meth:`verify_audit`.

The methods are synchronous and thread-safe (one pooled connection per
call); the API layer calls them through ``asyncio.to_thread``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from sqlalchemy import Connection, Engine, Row, Table, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.sql.dml import Insert, Update

from modelport.controlplane.store import audit, checks
from modelport.controlplane.store.chain import find_problems
from modelport.controlplane.store.connect import (
    WRITE,
    describe,
    driver_message,
    open_engine,
    parse_url,
    sqlite_url,
)
from modelport.controlplane.store.migrate import upgrade_to_head
from modelport.controlplane.store.records import (
    AuditReport,
    Event,
    RevisionConflict,
    StoredCanary,
    StoredPolicy,
)
from modelport.controlplane.store.tables import (
    ACTOR_MAX,
    KEY_ID_MAX,
    api_keys,
    canaries,
    events,
    policies,
)
from modelport.errors import ConfigError, Unavailable

#: The action recorded for every traffic policy write, and for its removal.
TRAFFIC_UPDATE = "traffic.update"
TRAFFIC_DELETE = "traffic.delete"

#: Actions recorded when an API key is created or revoked.
KEY_CREATE = "key.create"
KEY_REVOKE = "key.revoke"

#: The ``model`` column of events about no model in particular (keys, auth).
SERVER_WIDE = "*"

_POLICY = "traffic policy"
_CANARY = "canary"


@dataclass(frozen=True, slots=True)
class StoredKey:
    """One API key as stored: everything but the secret, which only its hash stands for."""

    id: str
    name: str
    role: str
    models: tuple[str, ...]
    tenant: str | None
    salt: str
    secret_hash: str
    rate: float | None
    burst: int | None
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None


def utc_now() -> datetime:
    return datetime.now(UTC)


class StateStore:
    """The control plane's durable state over one database (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine, where: str, clock: Callable[[], datetime]) -> None:
        """Use :meth:`open`; this assumes the schema is already current."""
        self._engine = engine
        self._where = where
        self._clock = clock

    @classmethod
    def open(cls, url: str, *, clock: Callable[[], datetime] = utc_now) -> StateStore:
        """Connect, migrate the schema to the newest revision, and return the store.

        Raises ConfigError (naming the URL, password masked) when the URL is
        unusable, the database cannot be reached or opened, or its schema is
        newer than this code.
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
        """Close the pooled connections; the store must not be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------ policies

    def get_policy(self, model: str) -> StoredPolicy | None:
        model = checks.check_model(model)
        with self._connection() as conn:
            return _read_policy(conn, model)

    def list_policies(self) -> list[StoredPolicy]:
        with self._connection() as conn:
            rows = conn.execute(select(policies).order_by(policies.c.model))
            return [_policy(row) for row in rows]

    def put_policy(
        self,
        model: str,
        body: dict[str, Any],
        *,
        expected_revision: int | None,
        actor: str,
        reason: str | None = None,
    ) -> StoredPolicy:
        """Create (``expected_revision=None``) or replace a model's traffic policy.

        Raises RevisionConflict when ``expected_revision`` is not the stored
        revision (or a policy exists although None was given).
        """
        model = checks.check_model(model)
        body = checks.to_json(body, f"traffic policy of model {model!r}")
        expected = _check_expected(expected_revision)
        actor = checks.check_actor(actor)
        reason = checks.check_reason(reason)
        now = self._now()
        values = {"body": body, "updated_at": now, "updated_by": actor}
        with self._connection(write=True) as conn:
            revision = _write_revision(
                conn, policies, model, values, expected, _POLICY, _read_policy
            )
            detail = {"revision": revision, "policy": body}
            _append_event(conn, model, now, actor, TRAFFIC_UPDATE, detail, reason)
        return StoredPolicy(model, body, revision, now, actor)

    def delete_policy(
        self, model: str, *, expected_revision: int, actor: str, reason: str | None = None
    ) -> None:
        """Remove a model's traffic policy, if it is still at ``expected_revision``.

        Raises RevisionConflict when it is not, or when there is no policy
        (``current`` is then None).
        """
        model = checks.check_model(model)
        expected = checks.check_revision(expected_revision, "expected_revision")
        actor = checks.check_actor(actor)
        reason = checks.check_reason(reason)
        now = self._now()
        with self._connection(write=True) as conn:
            deleted = conn.execute(
                delete(policies).where(policies.c.model == model, policies.c.revision == expected)
            )
            if deleted.rowcount != 1:
                raise _conflict(model, _POLICY, expected, _read_policy(conn, model))
            detail = {"revision": expected}
            _append_event(conn, model, now, actor, TRAFFIC_DELETE, detail, reason)

    # ------------------------------------------------------------ canaries

    def get_canary(self, model: str) -> StoredCanary | None:
        model = checks.check_model(model)
        with self._connection() as conn:
            return _read_canary(conn, model)

    def list_canaries(self, states: Collection[str] | None = None) -> list[StoredCanary]:
        """Every model's canary, or only those in one of ``states``."""
        wanted = checks.check_states(states)
        query = select(canaries).order_by(canaries.c.model)
        if wanted is not None:
            if not wanted:
                return []
            query = query.where(canaries.c.state.in_(wanted))
        with self._connection() as conn:
            return [_canary(row) for row in conn.execute(query)]

    def put_canary(
        self,
        model: str,
        body: dict[str, Any],
        state: str,
        *,
        expected_revision: int | None,
        actor: str,
        action: str,
        reason: str | None = None,
    ) -> StoredCanary:
        """Create or advance a model's canary, recording ``action`` in its history.

        The same optimistic rule as :meth:`put_policy`. The event's detail is
        ``{"revision": n, "state": state, "canary": body}``.
        """
        model = checks.check_model(model)
        body = checks.to_json(body, f"canary of model {model!r}")
        state = checks.check_state(state)
        expected = _check_expected(expected_revision)
        actor = checks.check_actor(actor)
        action = checks.check_action(action)
        reason = checks.check_reason(reason)
        now = self._now()
        values = {"body": body, "state": state, "updated_at": now}
        with self._connection(write=True) as conn:
            revision = _write_revision(
                conn, canaries, model, values, expected, _CANARY, _read_canary
            )
            detail = {"revision": revision, "state": state, "canary": body}
            _append_event(conn, model, now, actor, action, detail, reason)
        return StoredCanary(model, body, state, revision, now)

    # ------------------------------------------------------------ API keys

    def add_key(self, key: StoredKey) -> None:
        """Store a new key and record ``key.create`` (no secret, no hash) in one transaction."""
        key_id = checks.check_text(key.id, "key id", KEY_ID_MAX)
        actor = checks.check_actor(key.created_by)
        checks.check_text(key.name, "key name", ACTOR_MAX)
        values = {
            "id": key_id,
            "name": key.name,
            "role": key.role,
            "models": list(key.models),
            "tenant": key.tenant,
            "salt": key.salt,
            "secret_hash": key.secret_hash,
            "rate": key.rate,
            "burst": key.burst,
            "created_at": key.created_at,
            "created_by": actor,
            "expires_at": key.expires_at,
            "revoked_at": None,
        }
        detail = {
            "id": key_id,
            "name": key.name,
            "role": key.role,
            "models": list(key.models),
            "tenant": key.tenant,
            "expires_at": None if key.expires_at is None else key.expires_at.isoformat(),
            "rate": key.rate,
            "burst": key.burst,
        }
        with self._connection(write=True) as conn:
            conn.execute(api_keys.insert().values(**values))
            _append_event(conn, SERVER_WIDE, key.created_at, actor, KEY_CREATE, detail, None)

    def get_key(self, key_id: str) -> StoredKey | None:
        with self._connection() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).first()
        return None if row is None else _key(row)

    def list_keys(self) -> list[StoredKey]:
        with self._connection() as conn:
            rows = conn.execute(select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id))
            return [_key(row) for row in rows]

    def count_active_keys(self) -> int:
        """Keys neither revoked nor expired now: whether the server has callers to expect."""
        now = self._now()
        query = select(func.count()).where(
            api_keys.c.revoked_at.is_(None),
            (api_keys.c.expires_at.is_(None)) | (api_keys.c.expires_at > now),
        )
        with self._connection() as conn:
            return int(conn.execute(query).scalar_one())

    def revoke_key(self, key_id: str, *, actor: str, reason: str | None = None) -> bool:
        """Revoke a key now; False when there is no such key or it was revoked already."""
        key_id = checks.check_text(key_id, "key id", KEY_ID_MAX)
        actor = checks.check_actor(actor)
        reason = checks.check_reason(reason)
        now = self._now()
        with self._connection(write=True) as conn:
            done = conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            if done.rowcount != 1:
                return False
            _append_event(conn, SERVER_WIDE, now, actor, KEY_REVOKE, {"id": key_id}, reason)
        return True

    # ------------------------------------------------------------ history

    def record(
        self,
        model: str,
        action: str,
        *,
        actor: str,
        detail: dict[str, Any] | None = None,
        reason: str | None = None,
    ) -> Event:
        """Append an event that has no stored state of its own (a version load, say)."""
        model = checks.check_model(model)
        action = checks.check_action(action)
        actor = checks.check_actor(actor)
        body = checks.to_json({} if detail is None else detail, f"detail of {action!r}")
        reason = checks.check_reason(reason)
        now = self._now()
        with self._connection(write=True) as conn:
            return _append_event(conn, model, now, actor, action, body, reason)

    def history(
        self, model: str | None = None, *, limit: int = 100, before_id: int | None = None
    ) -> list[Event]:
        """Events newest first: all models' or one model's, ``limit`` at a time.

        To page, pass the last returned event's id as ``before_id``. Ids grow
        in commit order: appends are serialised by the audit chain's lock,
        which is held from the id's allocation until the commit.
        """
        query = select(events).order_by(events.c.id.desc()).limit(checks.check_limit(limit))
        if model is not None:
            query = query.where(events.c.model == checks.check_model(model))
        if before_id is not None:
            query = query.where(events.c.id < checks.check_revision(before_id, "before_id"))
        with self._connection() as conn:
            return [_event(row) for row in conn.execute(query)]

    # ------------------------------------------------------------ audit

    def verify_audit(self) -> AuditReport:
        """Recompute the whole event chain and report every record that does not fit."""
        with self._connection() as conn:
            checked, problems = find_problems(audit.read_records(conn))
        return AuditReport(checked, problems)

    def export_audit(self, out: TextIO, since_seq: int | None = None) -> int:
        """Write the events after ``since_seq`` (all by default) as JSON lines, in seq order.

        Returns the number of records written. Each line carries the chain
        fields, so an export can be checked on its own and its last hash kept
        elsewhere as an anchor.
        """
        since = None if since_seq is None else checks.check_seq(since_seq)
        with self._connection() as conn:
            return audit.export_records(audit.read_records(conn, since), out)

    # ------------------------------------------------------------ plumbing

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the store's clock must return aware datetimes")
        return now.astimezone(UTC)

    @contextmanager
    def _connection(self, *, write: bool = False) -> Iterator[Connection]:
        """One transaction; a database that is down or locked surfaces as Unavailable."""
        try:
            with self._engine.connect() as conn:
                if write:
                    conn.execution_options(**{WRITE: True})
                with conn.begin():
                    yield conn
        except (OperationalError, InterfaceError) as exc:
            message = driver_message(exc, self._engine.url)
            raise Unavailable(f"{self._where}: {message}") from None


def _check_expected(expected_revision: int | None) -> int | None:
    if expected_revision is None:
        return None
    return checks.check_revision(expected_revision, "expected_revision")


def _write_revision(
    conn: Connection,
    table: Table,
    model: str,
    values: dict[str, Any],
    expected: int | None,
    what: str,
    read_current: Callable[[Connection, str], StoredPolicy | StoredCanary | None],
) -> int:
    """Create or update ``model``'s row when it is at ``expected``; the new revision."""
    statement: Insert | Update
    if expected is None:
        statement = _insert_if_absent(conn, table).values(model=model, revision=1, **values)
        revision = 1
    else:
        statement = (
            update(table)
            .where(table.c.model == model, table.c.revision == expected)
            .values(revision=expected + 1, **values)
        )
        revision = expected + 1
    # SQLAlchemy keeps an INSERT's row count only when asked to.
    written = conn.execute(statement, execution_options={"preserve_rowcount": True})
    if written.rowcount != 1:
        raise _conflict(model, what, expected, read_current(conn, model))
    return revision


def _insert_if_absent(conn: Connection, table: Table) -> Insert:
    """``INSERT … ON CONFLICT (model) DO NOTHING`` in the connection's dialect.

    Unlike catching an IntegrityError, this leaves a PostgreSQL transaction
    usable, so the conflicting row can be read in it for the error.
    """
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=["model"])
    return sqlite.insert(table).on_conflict_do_nothing(index_elements=["model"])


def _conflict(
    model: str, what: str, expected: int | None, current: StoredPolicy | StoredCanary | None
) -> RevisionConflict:
    if current is None:
        message = f"model {model!r} has no {what}; the write expected revision {expected}"
    elif expected is None:
        message = (
            f"model {model!r} already has a {what}, at revision {current.revision}; "
            "name that revision to replace it"
        )
    else:
        message = (
            f"the {what} of model {model!r} is at revision {current.revision}, not {expected}; "
            "it was changed by someone else, read it again"
        )
    return RevisionConflict(message, current)


def _append_event(
    conn: Connection,
    model: str,
    at: datetime,
    actor: str,
    action: str,
    detail: dict[str, Any],
    reason: str | None,
) -> Event:
    return audit.append_event(conn, model, at, actor, action, detail, reason)


def _read_policy(conn: Connection, model: str) -> StoredPolicy | None:
    row = conn.execute(select(policies).where(policies.c.model == model)).first()
    return None if row is None else _policy(row)


def _read_canary(conn: Connection, model: str) -> StoredCanary | None:
    row = conn.execute(select(canaries).where(canaries.c.model == model)).first()
    return None if row is None else _canary(row)


def _policy(row: Row[Any]) -> StoredPolicy:
    return StoredPolicy(row.model, row.body, row.revision, row.updated_at, row.updated_by)


def _canary(row: Row[Any]) -> StoredCanary:
    return StoredCanary(row.model, row.body, row.state, row.revision, row.updated_at)


def _key(row: Row[Any]) -> StoredKey:
    return StoredKey(
        row.id,
        row.name,
        row.role,
        tuple(row.models),
        row.tenant,
        row.salt,
        row.secret_hash,
        row.rate,
        row.burst,
        row.created_at,
        row.created_by,
        row.expires_at,
        row.revoked_at,
    )


def _event(row: Row[Any]) -> Event:
    return Event(row.id, row.model, row.at, row.actor, row.action, row.detail, row.reason)
