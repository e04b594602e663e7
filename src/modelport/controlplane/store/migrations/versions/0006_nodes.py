"""Fleet nodes: each serving node's registration and heartbeat.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08

One row per node started with ``--advertise``: where the gateway reaches
it (``http_url``, ``grpc_address``), where it is (``region``, ``node_group``),
its share of traffic (``weight``), its ready models with each model's
residency (``models``, JSON), whether it is draining, and ``heartbeat``, the
wall-clock second of its last write. A row whose heartbeat is old belongs to
a node that stopped without removing it; readers skip it by that age.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("http_url", sa.Text(), nullable=False),
        sa.Column("grpc_address", sa.String(512), nullable=True),
        sa.Column("region", sa.String(64), nullable=True),
        sa.Column("node_group", sa.String(64), nullable=True),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.Column("models", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=False),
        sa.Column("draining", sa.Boolean(), nullable=False),
        sa.Column("heartbeat", sa.Float(), nullable=False),
    )
    op.create_index("ix_nodes_heartbeat", "nodes", ["heartbeat"])


def downgrade() -> None:
    op.drop_index("ix_nodes_heartbeat", table_name="nodes")
    op.drop_table("nodes")
