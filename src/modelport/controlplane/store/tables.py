"""The store's tables, as SQLAlchemy Core sees them at the newest schema revision.

The migrations under ``migrations/versions`` own the schema; these objects
only describe it to the queries. A change here without a new migration is a
bug: the column would exist for the queries but not in any database.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator, TypeEngine

#: Alembic's bookkeeping table. Not Alembic's default name, so that a
#: PostgreSQL database shared with another Alembic-managed application keeps
#: the two schema histories apart.
VERSION_TABLE = "modelport_alembic_version"

MODEL_NAME_MAX = 256
ACTOR_MAX = 256
ACTION_MAX = 64
STATE_MAX = 32
HASH_LENGTH = 64
KEY_ID_MAX = 32
ROLE_MAX = 16
TENANT_MAX = 256
JOB_ID_MAX = 32
JOB_OWNER_MAX = 512
IDEMPOTENCY_KEY_MAX = 128
VERSION_MAX = 32
LEASE_OWNER_MAX = 64
RESIDENCY_MAX = 256
NODE_NAME_MAX = 64
NODE_ADDRESS_MAX = 512
REGION_MAX = 64


def json_type() -> TypeEngine[Any]:
    """JSON everywhere; JSONB on PostgreSQL, which stores it parsed and compact."""
    return JSON().with_variant(JSONB(), "postgresql")


def event_id_type() -> TypeEngine[int]:
    """64-bit ids on PostgreSQL; SQLite autoincrements only an ``INTEGER`` key."""
    return BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on every backend.

    PostgreSQL keeps ``timestamptz`` as an instant and hands it back in the
    session's time zone; SQLite has no time type at all, and SQLAlchemy
    stores naive ISO strings there. Writing UTC and re-attaching UTC on read
    makes both return the same aware value that was written.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} given for a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


metadata = MetaData()

policies = Table(
    "traffic_policies",
    metadata,
    Column("model", String(MODEL_NAME_MAX), primary_key=True),
    Column("body", json_type(), nullable=False),
    Column("revision", Integer, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("updated_by", String(ACTOR_MAX), nullable=False),
)

canaries = Table(
    "canaries",
    metadata,
    Column("model", String(MODEL_NAME_MAX), primary_key=True),
    Column("body", json_type(), nullable=False),
    Column("state", String(STATE_MAX), nullable=False),
    Column("revision", Integer, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index("ix_canaries_state", "state"),
)

events = Table(
    "events",
    metadata,
    Column("id", event_id_type(), primary_key=True, autoincrement=True),
    Column("model", String(MODEL_NAME_MAX), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("actor", String(ACTOR_MAX), nullable=False),
    Column("action", String(ACTION_MAX), nullable=False),
    Column("detail", json_type(), nullable=False),
    Column("reason", Text(), nullable=True),
    # The audit chain (see chain.py): position, the previous record's hash, this one's.
    Column("seq", BigInteger(), nullable=False),
    Column("prev_hash", String(HASH_LENGTH), nullable=False),
    Column("hash", String(HASH_LENGTH), nullable=False),
    Index("ix_events_model_id", "model", "id"),
    Index("ix_events_seq", "seq", unique=True),
    sqlite_autoincrement=True,
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(KEY_ID_MAX), primary_key=True),
    Column("name", String(ACTOR_MAX), nullable=False),
    Column("role", String(ROLE_MAX), nullable=False),
    Column("models", json_type(), nullable=False),
    Column("tenant", String(TENANT_MAX), nullable=True),
    # HMAC-SHA-256 of the key's secret under a random per-key salt; both hex.
    Column("salt", String(HASH_LENGTH), nullable=False),
    Column("secret_hash", String(HASH_LENGTH), nullable=False),
    Column("rate", Float(), nullable=True),
    Column("burst", Integer(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("created_by", String(ACTOR_MAX), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=True),
    Column("revoked_at", UTCDateTime(), nullable=True),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(JOB_ID_MAX), primary_key=True),
    # The caller's identity id ("" with authentication off): only it sees the job.
    Column("owner", String(JOB_OWNER_MAX), nullable=False),
    Column("tenant", String(TENANT_MAX), nullable=True),
    # The caller's identity as JSON, so the job runs as the one who sent it.
    Column("identity", Text(), nullable=True),
    Column("idempotency_key", String(IDEMPOTENCY_KEY_MAX), nullable=True),
    Column("model", String(MODEL_NAME_MAX), nullable=False),
    Column("version", String(VERSION_MAX), nullable=True),
    Column("state", String(STATE_MAX), nullable=False),
    Column("request", LargeBinary(), nullable=False),
    Column("header_length", Integer(), nullable=True),
    Column("residency", String(RESIDENCY_MAX), nullable=True),
    Column("attempts", Integer(), nullable=False),
    Column("lease_owner", String(LEASE_OWNER_MAX), nullable=True),
    Column("lease_until", UTCDateTime(), nullable=True),
    Column("status", Integer(), nullable=True),
    Column("result", LargeBinary(), nullable=True),
    Column("result_header_length", Integer(), nullable=True),
    Column("error", Text(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime(), nullable=True),
    Column("finished_at", UTCDateTime(), nullable=True),
    UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
    Index("ix_jobs_state_created", "state", "created_at"),
    Index("ix_jobs_owner_created", "owner", "created_at"),
    Index("ix_jobs_finished", "finished_at"),
)

nodes = Table(
    "nodes",
    metadata,
    Column("name", String(NODE_NAME_MAX), primary_key=True),
    Column("http_url", Text(), nullable=False),
    Column("grpc_address", String(NODE_ADDRESS_MAX), nullable=True),
    Column("region", String(REGION_MAX), nullable=True),
    # "group" is an SQL keyword; the record calls it group.
    Column("node_group", String(NODE_NAME_MAX), nullable=True),
    Column("weight", Integer(), nullable=False),
    Column("models", json_type(), nullable=False),
    Column("draining", Boolean(), nullable=False),
    # Wall-clock seconds (time.time()) of the node's last heartbeat.
    Column("heartbeat", Float(), nullable=False),
    Index("ix_nodes_heartbeat", "heartbeat"),
)

canary_windows = Table(
    "canary_windows",
    metadata,
    # The writing process's fleet origin (host and node directory or pid).
    Column("node", String(ACTOR_MAX), primary_key=True),
    Column("model", String(MODEL_NAME_MAX), primary_key=True),
    Column("version", String(VERSION_MAX), primary_key=True),
    Column("body", json_type(), nullable=False),
    # Wall-clock seconds (time.time()) of the write.
    Column("written_at", Float(), nullable=False),
)
