"""The state-store options and opener shared by the commands that work on the database.

``modelport audit`` and ``modelport keys`` open the server's database
directly (``--data-dir``/``--state-url`` and their ``MODELPORT_*`` variables
mean what they mean to ``modelport serve``), so they work whether or not the
server runs. A store that cannot be used is exit 2 with its message.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from modelport.config.server import ServerConfig
from modelport.errors import ModelportError
from modelport.private_dirs import make_private_dirs

if TYPE_CHECKING:
    # Imported when a command runs, so that other commands start without SQLAlchemy.
    from modelport.controlplane.store import Database

T = TypeVar("T")

#: The server's default data directory, so that both find the same database.
DEFAULT_DATA_DIR: Path = ServerConfig.model_fields["data_dir"].default

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="MODELPORT_DATA_DIR",
        help=f"The server's data directory, holding state.db (default {DEFAULT_DATA_DIR}).",
    ),
]
StateUrl = Annotated[
    str | None,
    typer.Option(
        "--state-url",
        envvar="MODELPORT_STATE_URL",
        help="State database URL, e.g. postgresql://user@host/db; wins over --data-dir.",
    ),
]


def open_store(data_dir: Path | None, state_url: str | None, *, create: bool) -> Database:
    """The state database the options name. Without ``create``, a missing SQLite file is an
    error rather than a new empty store (which, say, an audit would call intact)."""
    from modelport.controlplane.store import Database

    if state_url is None:
        directory = data_dir or DEFAULT_DATA_DIR
        database = directory / "state.db"
        if create:
            make_private_dirs(directory)  # keys, audit: owner only, each new level
        elif not database.is_file():
            typer.echo(f"error: no state database at {database}; check --data-dir", err=True)
            raise typer.Exit(2)
        state_url = Database.sqlite_url(directory)
    return guard(lambda: Database.open(state_url))


def guard(action: Callable[[], T]) -> T:
    """Run a store call; a database that fails midway is exit 2 with its message."""
    try:
        return action()
    except ModelportError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
