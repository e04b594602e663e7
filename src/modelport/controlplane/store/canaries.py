"""Canaries: one per model, its body and state written optimistically (``revisions.py``).

Each write appends the action it names to the audit log in the same
transaction.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import Connection, Row, select

from modelport.controlplane.store import checks
from modelport.controlplane.store.audit import append_event
from modelport.controlplane.store.database import Database
from modelport.controlplane.store.records import StoredCanary
from modelport.controlplane.store.revisions import check_expected, write_revision
from modelport.controlplane.store.tables import canaries

_WHAT = "canary"


class CanaryStore:
    """Every model's stored canary, with its state and revision."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def get(self, model: str) -> StoredCanary | None:
        model = checks.check_model(model)
        with self._db.transaction() as conn:
            return _read(conn, model)

    def list_all(self, states: Collection[str] | None = None) -> list[StoredCanary]:
        """Every model's canary, or only those in one of ``states``."""
        wanted = checks.check_states(states)
        query = select(canaries).order_by(canaries.c.model)
        if wanted is not None:
            if not wanted:
                return []
            query = query.where(canaries.c.state.in_(wanted))
        with self._db.transaction() as conn:
            return [_canary(row) for row in conn.execute(query)]

    def put(
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

        The same optimistic rule as a traffic policy's. The event's detail is
        ``{"revision": n, "state": state, "canary": body}``.
        """
        model = checks.check_model(model)
        body = checks.to_json(body, f"canary of model {model!r}")
        state = checks.check_state(state)
        expected = check_expected(expected_revision)
        actor = checks.check_actor(actor)
        action = checks.check_action(action)
        reason = checks.check_reason(reason)
        now = self._db.now()
        values = {"body": body, "state": state, "updated_at": now}
        with self._db.transaction(write=True) as conn:
            revision = write_revision(conn, canaries, model, values, expected, _WHAT, _read)
            detail = {"revision": revision, "state": state, "canary": body}
            append_event(conn, model, now, actor, action, detail, reason)
        return StoredCanary(model, body, state, revision, now)


def _read(conn: Connection, model: str) -> StoredCanary | None:
    row = conn.execute(select(canaries).where(canaries.c.model == model)).first()
    return None if row is None else _canary(row)


def _canary(row: Row[Any]) -> StoredCanary:
    return StoredCanary(row.model, row.body, row.state, row.revision, row.updated_at)
