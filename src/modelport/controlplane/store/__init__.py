"""The control plane's durable state: traffic policies, canaries, API keys, change history.

One SQLAlchemy schema over an SQLite file (the default) or PostgreSQL,
migrated by the Alembic revisions in ``migrations/`` whenever a
:class:`Database` is opened. Each aggregate has a store of its own over
that one database: :class:`PolicyStore`, :class:`CanaryStore`,
:class:`KeyStore`, :class:`JobStore` (asynchronous inference jobs),
:class:`NodeStore` (the fleet's node registrations) and the
:class:`AuditLog` every write appends to. See
``revisions.py`` for the optimistic-concurrency rule policy and canary
writes follow.
"""

from modelport.controlplane.store.audit import AuditLog
from modelport.controlplane.store.canaries import CanaryStore
from modelport.controlplane.store.database import Database
from modelport.controlplane.store.jobs import JobStore, NewJob, StoredJob
from modelport.controlplane.store.keys import KeyStore, StoredKey
from modelport.controlplane.store.nodes import NodeRecord, NodeStore
from modelport.controlplane.store.policies import TRAFFIC_DELETE, TRAFFIC_UPDATE, PolicyStore
from modelport.controlplane.store.records import (
    AuditProblem,
    AuditRecord,
    AuditReport,
    Event,
    RevisionConflict,
    StoredCanary,
    StoredPolicy,
)

__all__ = [
    "TRAFFIC_DELETE",
    "TRAFFIC_UPDATE",
    "AuditLog",
    "AuditProblem",
    "AuditRecord",
    "AuditReport",
    "CanaryStore",
    "Database",
    "Event",
    "JobStore",
    "KeyStore",
    "NewJob",
    "NodeRecord",
    "NodeStore",
    "PolicyStore",
    "RevisionConflict",
    "StoredCanary",
    "StoredJob",
    "StoredKey",
    "StoredPolicy",
]
