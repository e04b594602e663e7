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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from modelport.controlplane.store.records import AuditProblem, AuditRecord

#: ``prev_hash`` of the first record: there is nothing before it.
GENESIS_HASH = "0" * 64

#: Above this many records whose hash or link is broken, verification stops
#: looking for where each one's content belongs (a quadratic search) and
#: judges each on its own (edited or inserted).
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

    - seq jumps (3 after 1) → *removed*, once per missing seq;
    - a seq is taken twice → *inserted*;
    - records that sit where another's content belongs, in a cycle (2 holds
      what was written as 3, and 3 what was written as 2) → *reordered*.
      Content "belongs" at seq n when it hashes to a stored hash there: its
      own hash with n in place of its seq (seq values swapped), or the hash of
      the record now at n (contents swapped). A record whose ``prev_hash`` is
      the hash of a reordered record is not blamed: its own link is intact,
      its predecessor moved;
    - otherwise, its hash does not match its own fields → *edited*, or, when
      its ``prev_hash`` does not fit either, → *inserted*; its fields hash
      correctly but ``prev_hash`` is not the predecessor's hash → *inserted*:
      the record does not continue the chain;
    - ids out of seq order (two rows' ids swapped, which reorders ``history``)
      → *reordered*: appends are serialised, so ids grow with seq. A record
      already blamed for something else is not blamed twice.

    Example: seq 1, 2, 4 where 4's hash is right gives one problem, seq 3
    removed; 4 is not blamed for its ``prev_hash``, the gap explains it.
    Swapping the seq values of records 2 and 3 gives two problems, both
    reordered; record 4, whose ``prev_hash`` is record 3's hash, is fine.
    """
    problems: list[AuditProblem] = []
    suspects: list[_Suspect] = []
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
        elif record.prev_hash != expected_prev or not content_ok:
            suspects.append(_Suspect(record, content_ok, record.prev_hash == expected_prev))
        previous = record
    problems.extend(_judge(suspects))
    blamed = {problem.id for problem in problems}
    problems.extend(p for p in _ids_out_of_order(order) if p.id not in blamed)
    problems.sort(key=lambda problem: problem.seq)
    return checked, problems


@dataclass(frozen=True)
class _Suspect:
    """A record whose hash or link does not fit where it sits."""

    record: AuditRecord
    content_ok: bool
    """Its fields hash to its stored hash at its own seq."""
    prev_ok: bool
    """Its ``prev_hash`` is the hash of the record before it."""


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


def _judge(suspects: list[_Suspect]) -> list[AuditProblem]:
    """Reordered, edited or inserted, for each record whose hash or link is broken."""
    homes = _homes(suspects) if len(suspects) <= _REORDER_SEARCH_LIMIT else {}
    moved = {seq for seq in homes if _in_cycle(seq, homes)}
    moved_hashes = {s.record.hash for s in suspects if s.record.seq in moved}
    problems: list[AuditProblem] = []
    for suspect in suspects:
        record = suspect.record
        if record.seq in moved:
            problems.append(
                AuditProblem(
                    record.seq,
                    record.id,
                    "reordered",
                    f"it holds the content written as seq {homes[record.seq]}",
                )
            )
        elif not suspect.content_ok and suspect.prev_ok:
            problems.append(
                AuditProblem(
                    record.seq,
                    record.id,
                    "edited",
                    "its hash does not match its content; a field was changed after writing",
                )
            )
        elif not suspect.content_ok:
            problems.append(
                AuditProblem(
                    record.seq,
                    record.id,
                    "inserted",
                    "neither its hash nor its prev_hash fits the chain",
                )
            )
        elif record.prev_hash not in moved_hashes:
            problems.append(
                AuditProblem(
                    record.seq,
                    record.id,
                    "inserted",
                    "its prev_hash is not the hash of the record before it; "
                    "it was added outside the chain",
                )
            )
    return problems


def _homes(suspects: list[_Suspect]) -> dict[int, int]:
    """seq → the other broken seq where that record's content was written.

    Only broken positions are searched: a record moved onto a position
    breaks that position too. Quadratic in the broken records, hence the
    search limit.
    """
    homes: dict[int, int] = {}
    for suspect in suspects:
        if suspect.content_ok:
            continue
        record = suspect.record
        for other in suspects:
            there = other.record
            if there is record:
                continue
            if content_hash(record, there.seq, record.prev_hash) == record.hash or (
                content_hash(record, there.seq, there.prev_hash) == there.hash
            ):
                homes[record.seq] = there.seq
                break
    return homes


def _in_cycle(seq: int, homes: dict[int, int]) -> bool:
    """Whether following homes from ``seq`` comes back to it (a permutation of positions).

    A chain that ends instead (3's content belongs at 2, 2's nowhere) is
    not a reordering: something was inserted or edited there.
    """
    at = homes[seq]
    for _ in range(len(homes)):
        if at == seq:
            return True
        if at not in homes:
            return False
        at = homes[at]
    return at == seq


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
