"""Bring a database's schema to this modelport's newest revision, at open.

Alembic runs from a Config built here (no alembic.ini at runtime) over a
connection this module opened, inside one transaction: on PostgreSQL the
whole upgrade is transactional DDL, so a failed migration leaves the old
schema. Two servers starting against the same database do not race: the
transaction first takes a PostgreSQL advisory lock (SQLite's
``BEGIN IMMEDIATE`` serialises the same way), and the second finds the
schema current.

A database whose revision this code does not know was migrated by a newer
modelport; running old queries against it could corrupt it, so open fails.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from modelport.controlplane.store.connect import WRITE
from modelport.controlplane.store.tables import VERSION_TABLE
from modelport.errors import ConfigError

MIGRATIONS = Path(__file__).with_name("migrations")

#: Key of the PostgreSQL advisory lock held while migrating (any fixed
#: 64-bit number that other applications are unlikely to pick).
_MIGRATION_LOCK = 0x6D6F64656C706F72  # "modelpor"


def alembic_config() -> Config:
    """Alembic's settings for the bundled migrations, without a file."""
    config = Config()
    # Config values are %-interpolated; a '%' in the install path must be escaped.
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    return config


def head_revision() -> str:
    """The newest schema revision this code ships."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS}")
    return head


def upgrade_to_head(engine: Engine, where: str) -> None:
    """Migrate the database to the newest revision, or fail naming what is wrong."""
    config = alembic_config()
    scripts = ScriptDirectory.from_config(config)
    known = {script.revision for script in scripts.walk_revisions()}
    with engine.connect().execution_options(**{WRITE: True}) as connection, connection.begin():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        _refuse_unknown_revision(connection, known, scripts.get_current_head(), where)
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def _refuse_unknown_revision(
    connection: Connection, known: set[str], head: str | None, where: str
) -> None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    unknown = sorted(set(context.get_current_heads()) - known)
    if unknown:
        raise ConfigError(
            where,
            "",
            f"the database's schema is at revision {', '.join(unknown)}, which this modelport "
            f"does not know (its newest is {head}); it was written by a newer modelport. "
            "Upgrade modelport, or point it at another database",
        )
