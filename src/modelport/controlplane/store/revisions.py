"""The optimistic write shared by traffic policies and canaries: one row per model.

The caller names the revision it read (``None`` to create), and the write
happens only if that is still the stored one: an ``INSERT … ON CONFLICT DO
NOTHING`` for a create, an ``UPDATE … WHERE revision = :expected``
otherwise, and the affected row count says who won. Two writers holding the
same revision cannot both succeed: on PostgreSQL the second ``UPDATE`` waits
for the first to commit and then no longer matches; on SQLite writers are
serialised by ``BEGIN IMMEDIATE``. The loser gets a RevisionConflict carrying
the row as it stands now.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Table, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert, Update

from modelport.controlplane.store import checks
from modelport.controlplane.store.records import RevisionConflict, StoredCanary, StoredPolicy

#: Reads a model's row as it stands, for the conflict a lost write reports.
ReadCurrent = Callable[[Connection, str], StoredPolicy | StoredCanary | None]


def check_expected(expected_revision: int | None) -> int | None:
    """The revision a write expects, checked; None (create) passes through."""
    if expected_revision is None:
        return None
    return checks.check_revision(expected_revision, "expected_revision")


def write_revision(
    conn: Connection,
    table: Table,
    model: str,
    values: dict[str, Any],
    expected: int | None,
    what: str,
    read_current: ReadCurrent,
) -> int:
    """Create or update ``model``'s row when it is at ``expected``; the new revision."""
    statement: Insert | Update
    if expected is None:
        statement = _insert_if_absent(conn, table).values(model=model, revision=1, **values)
        revision = 1
    else:
        statement = (
            update(table)
            .where(table.c.model == model, table.c.revision == expected)
            .values(revision=expected + 1, **values)
        )
        revision = expected + 1
    # SQLAlchemy keeps an INSERT's row count only when asked to.
    written = conn.execute(statement, execution_options={"preserve_rowcount": True})
    if written.rowcount != 1:
        raise conflict(model, what, expected, read_current(conn, model))
    return revision


def conflict(
    model: str, what: str, expected: int | None, current: StoredPolicy | StoredCanary | None
) -> RevisionConflict:
    """The error a lost write raises, saying what the caller should do next."""
    if current is None:
        message = f"model {model!r} has no {what}; the write expected revision {expected}"
    elif expected is None:
        message = (
            f"model {model!r} already has a {what}, at revision {current.revision}; "
            "name that revision to replace it"
        )
    else:
        message = (
            f"the {what} of model {model!r} is at revision {current.revision}, not {expected}; "
            "it was changed by someone else, read it again"
        )
    return RevisionConflict(message, current)


def _insert_if_absent(conn: Connection, table: Table) -> Insert:
    """``INSERT … ON CONFLICT (model) DO NOTHING`` in the connection's dialect.

    Unlike catching an IntegrityError, this leaves a PostgreSQL transaction
    usable, so the conflicting row can be read in it for the error.
    """
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=["model"])
    return sqlite.insert(table).on_conflict_do_nothing(index_elements=["model"])
