"""Alembic's entry point, run by ``migrate.upgrade_to_head`` inside its transaction.

Only the online mode exists: modelport always migrates a live connection it
opened itself (handed over in ``config.attributes["connection"]``), so the
schema change commits or rolls back together with the advisory lock that
keeps two starting servers from migrating at once.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from modelport.controlplane.store.tables import VERSION_TABLE, metadata


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError(
            "the state store's migrations run only through StateStore.open, "
            "which hands them an open connection"
        )
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
