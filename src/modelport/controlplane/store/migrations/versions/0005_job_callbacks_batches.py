"""Job callbacks and batch jobs: a callback's delivery, a batch's checkpoint.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

``job_callbacks``: one row per job submitted with a callback URL. It is due
once its job is finished and until it is delivered or abandoned;
``lease_until`` is the claim of the worker sending it, ``next_at`` the
earliest next try after a failed one. Kept in the store so a restarted
server resumes the deliveries still pending.

``job_batches``: one row per batch job over files: the input and output
names (relative to the server's ``batch_dir``) and the checkpoint written
after each chunk (rows done, the input's byte offset, the output's byte
length, rows succeeded and failed, the first failures with their rows).

Both are deleted with their job when it is purged.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "job_callbacks",
        sa.Column("job_id", sa.String(32), primary_key=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("abandoned_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
    )
    op.create_table(
        "job_batches",
        sa.Column("job_id", sa.String(32), primary_key=True),
        sa.Column("input", sa.Text(), nullable=False),
        sa.Column("output", sa.Text(), nullable=False),
        sa.Column("id_column", sa.String(256), nullable=True),
        sa.Column("chunk_rows", sa.Integer(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("input_offset", sa.BigInteger(), nullable=False),
        sa.Column("output_bytes", sa.BigInteger(), nullable=False),
        sa.Column("succeeded", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("job_batches")
    op.drop_table("job_callbacks")
