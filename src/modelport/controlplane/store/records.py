"""What the store hands back: frozen snapshots of rows, and the conflict error.

Bodies are opaque JSON to the store. The API layer gives them meaning (a
traffic policy's routes, a canary's steps); the store only guarantees that
what it returns is exactly what a later read returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from modelport.errors import Conflict


@dataclass(frozen=True)
class StoredPolicy:
    """A model's traffic policy as last written."""

    model: str
    body: dict[str, Any]
    """The policy as JSON (routes, sticky key, shadow)."""
    revision: int
    """1 on the first write, one more on every write; the optimistic-concurrency token."""
    updated_at: datetime
    """When the revision was written, aware and in UTC."""
    updated_by: str


@dataclass(frozen=True)
class StoredCanary:
    """A model's canary rollout: its spec, progress and state."""

    model: str
    body: dict[str, Any]
    state: str
    """For example running, paused, promoted, rolled_back, aborted."""
    revision: int
    updated_at: datetime


@dataclass(frozen=True)
class Event:
    """One change in a model's history, written with the change it describes."""

    id: int
    """Increasing in insertion order; the paging cursor of ``history``."""
    model: str
    at: datetime
    actor: str
    action: str
    """For example ``traffic.update``, ``version.load``, ``canary.rollback``."""
    detail: dict[str, Any]
    reason: str | None


ProblemKind = Literal["edited", "removed", "reordered", "inserted"]


@dataclass(frozen=True)
class AuditRecord:
    """One event as the audit log holds it: its content and its place in the chain."""

    seq: int
    """Position in the chain: 1, 2, 3, … with no gaps."""
    id: int
    model: str
    at: datetime
    actor: str
    action: str
    detail: dict[str, Any]
    reason: str | None
    prev_hash: str
    """The previous record's ``hash`` (64 zeros for seq 1)."""
    hash: str
    """Hex SHA-256 over this record's fields and ``prev_hash``."""


@dataclass(frozen=True)
class AuditProblem:
    """One place where the stored chain is not what was written."""

    seq: int
    """The record's seq; for a removed record, the seq that is missing."""
    id: int | None
    """The row's id; None for a removed record."""
    what: ProblemKind
    detail: str


@dataclass(frozen=True)
class AuditReport:
    """The outcome of recomputing the whole chain."""

    checked: int
    """Records read."""
    problems: list[AuditProblem]
    """In seq order; empty when the chain is intact."""

    @property
    def ok(self) -> bool:
        return not self.problems


class RevisionConflict(Conflict):
    """Raised when a write names a revision that is no longer the stored one.

    ``current`` is the row as it stands now (``None`` when there is none), so
    the caller can show the other writer's change or retry on top of it.
    """

    def __init__(self, message: str, current: StoredPolicy | StoredCanary | None) -> None:
        super().__init__(message)
        self.current = current
