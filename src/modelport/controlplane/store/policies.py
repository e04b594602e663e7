"""Traffic policies: one per model, written optimistically (``revisions.py``).

Each write appends its audit event in the same transaction, so the history
never shows a change that did not happen, nor misses one that did.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, delete, select

from modelport.controlplane.store import checks
from modelport.controlplane.store.audit import append_event
from modelport.controlplane.store.database import Database
from modelport.controlplane.store.records import StoredPolicy
from modelport.controlplane.store.revisions import check_expected, conflict, write_revision
from modelport.controlplane.store.tables import policies

#: The action recorded for every traffic policy write, and for its removal.
TRAFFIC_UPDATE = "traffic.update"
TRAFFIC_DELETE = "traffic.delete"

_WHAT = "traffic policy"


class PolicyStore:
    """Every model's stored traffic policy, with its revision."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def get(self, model: str) -> StoredPolicy | None:
        model = checks.check_model(model)
        with self._db.transaction() as conn:
            return _read(conn, model)

    def list_all(self) -> list[StoredPolicy]:
        with self._db.transaction() as conn:
            rows = conn.execute(select(policies).order_by(policies.c.model))
            return [_policy(row) for row in rows]

    def put(
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
        expected = check_expected(expected_revision)
        actor = checks.check_actor(actor)
        reason = checks.check_reason(reason)
        now = self._db.now()
        values = {"body": body, "updated_at": now, "updated_by": actor}
        with self._db.transaction(write=True) as conn:
            revision = write_revision(conn, policies, model, values, expected, _WHAT, _read)
            detail = {"revision": revision, "policy": body}
            append_event(conn, model, now, actor, TRAFFIC_UPDATE, detail, reason)
        return StoredPolicy(model, body, revision, now, actor)

    def delete(
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
        now = self._db.now()
        with self._db.transaction(write=True) as conn:
            deleted = conn.execute(
                delete(policies).where(policies.c.model == model, policies.c.revision == expected)
            )
            if deleted.rowcount != 1:
                raise conflict(model, _WHAT, expected, _read(conn, model))
            detail = {"revision": expected}
            append_event(conn, model, now, actor, TRAFFIC_DELETE, detail, reason)


def _read(conn: Connection, model: str) -> StoredPolicy | None:
    row = conn.execute(select(policies).where(policies.c.model == model)).first()
    return None if row is None else _policy(row)


def _policy(row: Row[Any]) -> StoredPolicy:
    return StoredPolicy(row.model, row.body, row.revision, row.updated_at, row.updated_by)
