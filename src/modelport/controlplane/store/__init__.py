"""The control plane's durable state: traffic policies, canaries, change history.

One SQLAlchemy schema over an SQLite file (the default) or PostgreSQL,
migrated by the Alembic revisions in ``migrations/`` whenever a store is
opened. See ``store.py`` for the optimistic-concurrency rule every write
follows.
"""

from modelport.controlplane.store.records import (
    AuditProblem,
    AuditRecord,
    AuditReport,
    Event,
    RevisionConflict,
    StoredCanary,
    StoredPolicy,
)
from modelport.controlplane.store.store import TRAFFIC_DELETE, TRAFFIC_UPDATE, StateStore

__all__ = [
    "TRAFFIC_DELETE",
    "TRAFFIC_UPDATE",
    "AuditProblem",
    "AuditRecord",
    "AuditReport",
    "Event",
    "RevisionConflict",
    "StateStore",
    "StoredCanary",
    "StoredPolicy",
]
