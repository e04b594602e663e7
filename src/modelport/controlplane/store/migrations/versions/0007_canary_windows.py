"""Canary windows of every node, for the one node that judges a fleet's canaries.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08

One row per (node, model, version): the node's latest snapshot of that
version's sliding window (request and error counts, comparisons, the
latency histogram) as JSON, and ``written_at``, the wall-clock second it
was written. The canary leader adds the fresh rows of the other nodes to
its own window; old rows are ignored by their age and purged by their
writer.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "canary_windows",
        sa.Column("node", sa.String(256), primary_key=True),
        sa.Column("model", sa.String(256), primary_key=True),
        sa.Column("version", sa.String(32), primary_key=True),
        sa.Column("body", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=False),
        sa.Column("written_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("canary_windows")
