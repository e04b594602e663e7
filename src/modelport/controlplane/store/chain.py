"""The audit log's hash chain: how a record is hashed, and how a chain is judged.

Pure functions over plain values; ``audit.py`` does the database side.

Each event row carries ``seq`` (1, 2, 3, … with no gaps), ``prev_hash`` (the
previous record's ``hash``; :data:`GENESIS_HASH` for seq 1) and ``hash``, the
SHA-256 of :func:`canonical_bytes`. Changing one byte of a record changes its
hash; changing the hash as well breaks the next record's ``prev_hash``. Only
someone who rewrites every later record goes unnoticed, which is why
``export`` exists: a copy of the newest hash kept elsewhere pins the chain.

The encoding is part of the stored format. Every existing database was hashed
with it (migration 0002 hashes the rows written before the chain existed with
this very function), so it must never change.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from modelport.controlplane.store.records import AuditProblem, AuditRecord

#: ``prev_hash`` of the first record: there is nothing before it.
GENESIS_HASH = "0" * 64

#: Above this many records whose hash does not match, verification stops
#: looking for where each one's content belongs (a quadratic search) and
#: calls them all edited.
_REORDER_SEARCH_LIMIT = 2000


def iso_utc(at: datetime) -> str:
    """``at`` as ISO-8601 in UTC with microseconds: ``2025-01-01T12:00:00.000000Z``.

    A naive value is taken as UTC (SQLite hands timestamps back naive).
    """
    moment = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def canonical_bytes(
    seq: int,
    prev_hash: str,
    model: str,
    at: datetime,
    actor: str,
    action: str,
    detail: dict[str, Any],
    reason: str | None,
) -> bytes:
    """One record as sorted-key compact JSON in UTF-8: the input of its hash.

    ``detail`` must be exactly what the database gives back when read (see
    ``audit.stored_detail``), or the hash computed at write time would not
    be the one recomputed at verification.
    """
    fields = {
        "seq": seq,
        "prev_hash": prev_hash,
        "model": model,
        "at": iso_utc(at),
        "actor": actor,
        "action": action,
        "detail": detail,
        "reason": reason,
    }
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def record_hash(
    seq: int,
    prev_hash: str,
    model: str,
    at: datetime,
    actor: str,
    action: str,
    detail: dict[str, Any],
    reason: str | None,
) -> str:
    """The hex SHA-256 that a record with these fields must carry."""
    encoded = canonical_bytes(seq, prev_hash, model, at, actor, action, detail, reason)
    return hashlib.sha256(encoded).hexdigest()


def content_hash(record: AuditRecord, seq: int, prev_hash: str) -> str:
    """The hash ``record``'s content would have at chain position (seq, prev_hash)."""
    return record_hash(
        seq,
        prev_hash,
        record.model,
        record.at,
        record.actor,
        record.action,
        record.detail,
        record.reason,
    )


def find_problems(records: Iterable[AuditRecord]) -> tuple[int, list[AuditProblem]]:
    """Walk a chain in seq order; the number of records and what is wrong with them.

    Each record is judged against its content and its predecessor:

    - its hash does not match its own fields → *edited*, unless those fields
      hash correctly at another broken position (two records' contents were
      swapped) → *reordered*;
    - seq jumps (3 after 1) → *removed*, once per missing seq;
    - seq does not jump but ``prev_hash`` is not the predecessor's hash, or a
      seq is taken twice → *inserted*: the record does not continue the chain;
    - ids out of seq order (two rows' ids swapped, which reorders ``history``)
      → *reordered*: appends are serialised, so ids grow with seq. A record
      already blamed for something else is not blamed twice.

    Example: seq 1, 2, 4 where 4's hash is right gives one problem, seq 3
    removed; 4 is not blamed for its ``prev_hash``, the gap explains it.
    """
    problems: list[AuditProblem] = []
    mismatched: list[AuditRecord] = []
    order: list[tuple[int, int]] = []  # (seq, id) in seq order
    previous: AuditRecord | None = None
    checked = 0
    for record in records:
        checked += 1
        order.append((record.seq, record.id))
        content_ok = content_hash(record, record.seq, record.prev_hash) == record.hash
        expected_seq = 1 if previous is None else previous.seq + 1
        expected_prev = GENESIS_HASH if previous is None else previous.hash
        if previous is not None and record.seq == previous.seq:
            problems.append(
                AuditProblem(
                    record.seq,
                    record.id,
                    "inserted",
                    f"seq {record.seq} is taken twice (ids {previous.id} and {record.id})",
                )
            )
            continue  # keep judging the next record against the first one
        if record.seq > expected_seq:
            problems.extend(_removed(expected_seq, record))
        elif record.prev_hash != expected_prev and content_ok:
            problems.append(
                AuditProblem(
                    record.seq,
                    record.id,
                    "inserted",
                    "its prev_hash is not the hash of the record before it; "
                    "it was added outside the chain",
                )
            )
        elif record.prev_hash != expected_prev:
            problems.append(
                AuditProblem(
                    record.seq,
                    record.id,
                    "inserted",
                    "neither its hash nor its prev_hash fits the chain",
                )
            )
        elif not content_ok:
            mismatched.append(record)
        previous = record
    problems.extend(_edited_or_moved(mismatched))
    blamed = {problem.id for problem in problems}
    problems.extend(p for p in _ids_out_of_order(order) if p.id not in blamed)
    problems.sort(key=lambda problem: problem.seq)
    return checked, problems


def _removed(expected_seq: int, record: AuditRecord) -> list[AuditProblem]:
    where = (
        f"the chain starts at seq {record.seq}"
        if expected_seq == 1
        else f"the chain jumps from seq {expected_seq - 1} to seq {record.seq}"
    )
    return [
        AuditProblem(
            missing, None, "removed", f"no record has seq {missing}; {where} (id {record.id})"
        )
        for missing in range(expected_seq, record.seq)
    ]


def _edited_or_moved(mismatched: list[AuditRecord]) -> list[AuditProblem]:
    """Edited records, or records whose content belongs at another broken position."""
    problems: list[AuditProblem] = []
    search = len(mismatched) <= _REORDER_SEARCH_LIMIT
    for record in mismatched:
        home = next(
            (
                other
                for other in mismatched
                if search
                and other is not record
                and content_hash(record, other.seq, other.prev_hash) == other.hash
            ),
            None,
        )
        if home is None:
            problems.append(
                AuditProblem(
                    record.seq,
                    record.id,
                    "edited",
                    "its hash does not match its content; a field was changed after writing",
                )
            )
        else:
            problems.append(
                AuditProblem(
                    record.seq,
                    record.id,
                    "reordered",
                    f"it holds the content written as seq {home.seq}",
                )
            )
    return problems


def _ids_out_of_order(order: list[tuple[int, int]]) -> list[AuditProblem]:
    ids = sorted(record_id for _, record_id in order)
    return [
        AuditProblem(
            seq,
            record_id,
            "reordered",
            f"id {record_id} sits at seq {seq}, where id {expected} was written",
        )
        for (seq, record_id), expected in zip(order, ids, strict=True)
        if record_id != expected
    ]
