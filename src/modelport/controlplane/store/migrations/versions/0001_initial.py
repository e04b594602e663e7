"""The first schema: traffic policies, canaries and the event history.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Types are spelled out here instead of imported from ``tables.py``: a
migration must keep creating the same schema after the tables module has
moved on.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "traffic_policies",
        sa.Column("model", sa.String(256), primary_key=True),
        sa.Column("body", _json(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(256), nullable=False),
    )
    op.create_table(
        "canaries",
        sa.Column("model", sa.String(256), primary_key=True),
        sa.Column("body", _json(), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_canaries_state", "canaries", ["state"])
    op.create_table(
        "events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("detail", _json(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_events_model_id", "events", ["model", "id"])


def downgrade() -> None:
    op.drop_index("ix_events_model_id", table_name="events")
    op.drop_table("events")
    op.drop_index("ix_canaries_state", table_name="canaries")
    op.drop_table("canaries")
    op.drop_table("traffic_policies")
