"""Chain the events into a tamper-evident audit log.

Revision ID: 0002
Revises: 0001
Create Date: 2025-06-01

Adds ``seq``, ``prev_hash`` and ``hash`` to ``events`` and fills them for the
rows already there, in id order (the order they were written), so that an
upgraded database verifies like a new one. The hash comes from
``chain.record_hash``, the one encoding every chain uses (it is frozen; see
chain.py), rather than a copy that could drift from it.

The columns are added nullable, filled, then made NOT NULL. SQLite cannot
alter a column in place, so there the last step copies the table (Alembic's
batch mode); ``sqlite_autoincrement`` is restated or the copy would lose it
and reuse the ids of deleted rows.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from modelport.controlplane.store.chain import GENESIS_HASH, record_hash

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

_BATCH = 1000


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.add_column("events", sa.Column("seq", sa.BigInteger(), nullable=True))
    op.add_column("events", sa.Column("prev_hash", sa.String(64), nullable=True))
    op.add_column("events", sa.Column("hash", sa.String(64), nullable=True))
    _chain_existing_rows()
    with op.batch_alter_table("events", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.alter_column("seq", existing_type=sa.BigInteger(), nullable=False)
        batch.alter_column("prev_hash", existing_type=sa.String(64), nullable=False)
        batch.alter_column("hash", existing_type=sa.String(64), nullable=False)
    op.create_index("ix_events_seq", "events", ["seq"], unique=True)


def _chain_existing_rows() -> None:
    # The table as revision 0001 left it plus the new columns; spelled out
    # here so later changes to tables.py cannot alter this migration.
    events = sa.table(
        "events",
        sa.column("id", sa.BigInteger()),
        sa.column("model", sa.String()),
        sa.column("at", sa.DateTime(timezone=True)),
        sa.column("actor", sa.String()),
        sa.column("action", sa.String()),
        sa.column("detail", _json()),
        sa.column("reason", sa.Text()),
        sa.column("seq", sa.BigInteger()),
        sa.column("prev_hash", sa.String()),
        sa.column("hash", sa.String()),
    )
    connection = op.get_bind()
    seq, prev_hash, last_id = 0, GENESIS_HASH, None
    while True:
        query = sa.select(events).order_by(events.c.id).limit(_BATCH)
        if last_id is not None:
            query = query.where(events.c.id > last_id)
        rows = connection.execute(query).all()
        if not rows:
            return
        updates: list[dict[str, Any]] = []
        for row in rows:
            seq += 1
            digest = record_hash(
                seq, prev_hash, row.model, row.at, row.actor, row.action, row.detail, row.reason
            )
            updates.append({"row_id": row.id, "seq": seq, "prev_hash": prev_hash, "hash": digest})
            prev_hash, last_id = digest, row.id
        connection.execute(
            events.update()
            .where(events.c.id == sa.bindparam("row_id"))
            .values(
                seq=sa.bindparam("seq"),
                prev_hash=sa.bindparam("prev_hash"),
                hash=sa.bindparam("hash"),
            ),
            updates,
        )


def downgrade() -> None:
    op.drop_index("ix_events_seq", table_name="events")
    with op.batch_alter_table("events", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("hash")
        batch.drop_column("prev_hash")
        batch.drop_column("seq")
