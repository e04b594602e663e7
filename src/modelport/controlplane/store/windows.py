"""Canary windows shared through the store: each node's latest, for the fleet's judge.

Each node writes its own snapshot of every version a running canary is
judged on, about once a second; the node leading the fleet's canaries reads
the others' fresh ones and adds them to its own (``controlplane/fleetwindows.py``).
The body is opaque JSON here; the reader checks it.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import delete, insert, select, update

from modelport.controlplane.store import checks
from modelport.controlplane.store.database import Database
from modelport.controlplane.store.tables import ACTOR_MAX, VERSION_MAX, canary_windows
from modelport.errors import InvalidRequest


def _check_time(value: float, what: str) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequest(f"{what} must be a finite number, got {value!r}")
    return float(value)


class WindowStore:
    """Every node's latest canary window per (model, version)."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def put(self, node: str, model: str, version: str, body: dict[str, Any], at: float) -> None:
        node = checks.check_text(node, "node", ACTOR_MAX)
        model = checks.check_model(model)
        version = checks.check_text(version, "version", VERSION_MAX)
        body = checks.to_json(body, f"canary window of {model!r} version {version}")
        at = _check_time(at, "written_at")
        key = (
            (canary_windows.c.node == node)
            & (canary_windows.c.model == model)
            & (canary_windows.c.version == version)
        )
        with self._db.transaction(write=True) as conn:
            updated = conn.execute(
                update(canary_windows).where(key).values(body=body, written_at=at)
            )
            if updated.rowcount == 0:
                conn.execute(
                    insert(canary_windows).values(
                        node=node, model=model, version=version, body=body, written_at=at
                    )
                )

    def others(self, model: str, version: str, node: str, since: float) -> list[dict[str, Any]]:
        """The bodies other nodes wrote for the version at or after ``since``."""
        model = checks.check_model(model)
        since = _check_time(since, "since")
        query = select(canary_windows.c.body).where(
            canary_windows.c.model == model,
            canary_windows.c.version == version,
            canary_windows.c.node != node,
            canary_windows.c.written_at >= since,
        )
        with self._db.transaction() as conn:
            return [row.body for row in conn.execute(query) if isinstance(row.body, dict)]

    def purge(self, node: str, before: float) -> None:
        """Forget the node's rows written before ``before`` (canaries that ended)."""
        before = _check_time(before, "before")
        with self._db.transaction(write=True) as conn:
            conn.execute(
                delete(canary_windows).where(
                    canary_windows.c.node == node, canary_windows.c.written_at < before
                )
            )
