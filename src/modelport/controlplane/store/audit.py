"""The audit log in the database: chained appends, history, verification, export.

:class:`AuditLog` is the log as the rest of the server sees it; the other
stores append their events through :func:`append_event`, inside their own
write transaction.

Appends must be serialised, or two writers would read the same chain head
and both write seq n+1 on top of it (the unique index on seq would then
fail one of them; the lock makes it wait instead). On PostgreSQL each
append takes a transaction-scoped advisory lock, held until its transaction
commits or rolls back; on SQLite the store's write transactions begin with
``BEGIN IMMEDIATE``, which already admits one writer at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

from sqlalchemy import Connection, Row, Text, insert, literal, select, text, type_coerce
from sqlalchemy.dialects.postgresql import JSONB

from modelport.controlplane.store import checks
from modelport.controlplane.store.chain import GENESIS_HASH, find_problems, iso_utc, record_hash
from modelport.controlplane.store.connect import WRITE
from modelport.controlplane.store.database import Database
from modelport.controlplane.store.records import AuditRecord, AuditReport, Event
from modelport.controlplane.store.tables import events

#: The ``model`` column of events about no model in particular (keys, auth).
SERVER_WIDE = "*"

#: Key of the PostgreSQL advisory lock held by an append (distinct from the
#: migration lock's key).
_CHAIN_LOCK = 0x6D6F64656C617564  # "modelaud"

#: Rows fetched at a time while reading the whole chain.
_BATCH = 1000

#: Stands in for a timestamp that no longer parses; no record was written then,
#: so its hash cannot match and the record is reported as edited.
_UNREADABLE_AT = datetime(1, 1, 1, tzinfo=UTC)


class AuditLog:
    """The hash-chained history of every change, read newest first or checked whole."""

    def __init__(self, database: Database) -> None:
        self._db = database

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
        now = self._db.now()
        with self._db.transaction(write=True) as conn:
            return append_event(conn, model, now, actor, action, body, reason)

    def history(
        self, model: str | None = None, *, limit: int = 100, before_id: int | None = None
    ) -> list[Event]:
        """Events newest first: all models' or one model's, ``limit`` at a time.

        To page, pass the last returned event's id as ``before_id``. Ids grow
        in commit order: appends are serialised by the chain's lock, which is
        held from the id's allocation until the commit.
        """
        query = select(events).order_by(events.c.id.desc()).limit(checks.check_limit(limit))
        if model is not None:
            query = query.where(events.c.model == checks.check_model(model))
        if before_id is not None:
            query = query.where(events.c.id < checks.check_revision(before_id, "before_id"))
        with self._db.transaction() as conn:
            return [_event(row) for row in conn.execute(query)]

    def verify(self) -> AuditReport:
        """Recompute the whole event chain and report every record that does not fit."""
        with self._db.transaction() as conn:
            checked, problems = find_problems(read_records(conn))
        return AuditReport(checked, problems)

    def export(self, out: TextIO, since_seq: int | None = None) -> int:
        """Write the events after ``since_seq`` (all by default) as JSON lines, in seq order.

        Returns the number of records written. Each line carries the chain
        fields, so an export can be checked on its own and its last hash kept
        elsewhere as an anchor.
        """
        since = None if since_seq is None else checks.check_seq(since_seq)
        with self._db.transaction() as conn:
            return export_records(read_records(conn, since), out)


def append_event(
    conn: Connection,
    model: str,
    at: datetime,
    actor: str,
    action: str,
    detail: dict[str, Any],
    reason: str | None,
) -> Event:
    """Append one event at the head of the chain, inside the caller's write transaction."""
    _lock_chain(conn)
    head = conn.execute(
        select(events.c.seq, events.c.hash).order_by(events.c.seq.desc()).limit(1)
    ).first()
    seq, prev_hash = (1, GENESIS_HASH) if head is None else (head.seq + 1, head.hash)
    stored = stored_detail(conn, detail)
    digest = record_hash(seq, prev_hash, model, at, actor, action, stored, reason)
    result = conn.execute(
        insert(events).values(
            model=model,
            at=at,
            actor=actor,
            action=action,
            detail=stored,
            reason=reason,
            seq=seq,
            prev_hash=prev_hash,
            hash=digest,
        )
    )
    (event_id,) = result.inserted_primary_key or (None,)
    if not isinstance(event_id, int):
        raise RuntimeError(f"the database returned no id for the new {action!r} event")
    return Event(event_id, model, at, actor, action, stored, reason)


def stored_detail(conn: Connection, detail: dict[str, Any]) -> dict[str, Any]:
    """``detail`` as a later read will return it, so the hash is taken over that.

    PostgreSQL's JSONB rewrites numbers: the float ``1e20`` comes back as the
    integer ``100000000000000000000``. Letting the database convert it once
    here costs a round trip and keeps write-time and verify-time hashes equal.
    SQLite keeps the JSON text that ``checks.to_json`` already round-tripped.
    """
    if conn.dialect.name != "postgresql":
        return detail
    converted: dict[str, Any] = conn.execute(select(literal(detail, JSONB))).scalar_one()
    return converted


def read_records(conn: Connection, since_seq: int | None = None) -> Iterator[AuditRecord]:
    """Every record (or those after ``since_seq``) in seq order, fetched in batches."""
    # SQLite keeps whatever text an intruder wrote into a column; read the
    # timestamp and JSON as text and decode them here, so that a value which
    # no longer parses is reported as an edit instead of stopping the check.
    as_text = conn.dialect.name == "sqlite"
    columns = [
        type_coerce(column, Text()).label(column.name)
        if as_text and column.name in ("at", "detail")
        else column
        for column in events.columns
    ]
    query = select(*columns).order_by(events.c.seq, events.c.id)
    if since_seq is not None:
        query = query.where(events.c.seq > since_seq)
    result = conn.execution_options(yield_per=_BATCH).execute(query)
    for row in result:
        at, detail = (
            (_parse_at(row.at), _parse_detail(row.detail)) if as_text else (row.at, row.detail)
        )
        yield AuditRecord(
            seq=row.seq,
            id=row.id,
            model=row.model,
            at=at,
            actor=row.actor,
            action=row.action,
            detail=detail,
            reason=row.reason,
            prev_hash=row.prev_hash,
            hash=row.hash,
        )


def export_records(records: Iterator[AuditRecord], out: TextIO) -> int:
    """Write one JSON object per line; the number written.

    ``ensure_ascii`` escapes every control and non-ASCII character (line
    feeds, U+2028, …), so a newline inside an actor or reason cannot start a
    line of its own and pass for another record.
    """
    count = 0
    for record in records:
        line = {
            "seq": record.seq,
            "id": record.id,
            "model": record.model,
            "at": iso_utc(record.at),
            "actor": record.actor,
            "action": record.action,
            "detail": record.detail,
            "reason": record.reason,
            "prev_hash": record.prev_hash,
            "hash": record.hash,
        }
        out.write(json.dumps(line, ensure_ascii=True, separators=(",", ":")) + "\n")
        count += 1
    return count


def _lock_chain(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CHAIN_LOCK})
    elif not conn.get_execution_options().get(WRITE, False):
        # A plain BEGIN would let two appends read the same head.
        raise RuntimeError("audit events must be appended in a write transaction")


def _parse_at(text: object) -> datetime:
    """A stored SQLite timestamp (naive UTC); an unparsable one as :data:`_UNREADABLE_AT`."""
    try:
        moment = datetime.fromisoformat(str(text))
    except ValueError:
        return _UNREADABLE_AT
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _parse_detail(text: object) -> dict[str, Any]:
    """A stored JSON object; anything else wrapped as ``{"unreadable": text}``."""
    try:
        value = json.loads(str(text))
    except ValueError:
        return {"unreadable": str(text)}
    return value if isinstance(value, dict) else {"unreadable": str(text)}


def _event(row: Row[Any]) -> Event:
    return Event(row.id, row.model, row.at, row.actor, row.action, row.detail, row.reason)
