"""How the listing commands print: rich tables for people, ``--json`` for scripts.

Tables go through :func:`modelport.cli.console.output_console` (fitted to a
terminal, unwrapped in a pipe). Times are ISO 8601 to the second: in local
time with its offset when stdout is a terminal (a person reads it), in UTC
with ``Z`` otherwise (a log or a file, read later or elsewhere). Every value
that comes from the server or the store is escaped, since rich reads ``[ae]``
as markup. An empty listing prints one plain line (``no models``) instead of
a table with headers only.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from modelport.cli.console import output_console

AsJson = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print the server's JSON unchanged, for scripts, instead of a table.",
    ),
]

#: Shown in a cell that has no value.
NONE = "-"


def local_times() -> bool:
    """Whether times are shown in local time: stdout is a terminal."""
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced or closed stdout
        return False


def parse_time(value: Any) -> datetime | None:
    """A datetime from what the server or the store gives: ISO text, a datetime, or
    seconds since the epoch. Naive values are UTC; None for anything else."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, bool):
        return None
    elif isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    elif isinstance(value, str) and value:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def iso_time(value: Any, local: bool | None = None) -> str:
    """``value`` as ISO 8601 to the second: local with its offset on a terminal
    (or when ``local``), else UTC with ``Z``; ``-`` when there is none.

    Text that is not a time is shown as it is rather than dropped.
    """
    moment = parse_time(value)
    if moment is None:
        return NONE if value in (None, "") else str(value)
    if local is None:
        local = local_times()
    if local:
        return moment.astimezone().isoformat(timespec="seconds")
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def utc_text(value: datetime | None) -> str | None:
    """A stored datetime as ISO 8601 UTC text for ``--json`` (None stays None)."""
    moment = parse_time(value)
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def print_json(data: Any) -> None:
    """The server's JSON as the commands have always printed it (indent 2)."""
    typer.echo(json.dumps(data, indent=2, default=str))


def text(value: Any) -> str:
    """A cell: escaped, ``-`` for None or empty."""
    if value is None or value == "":
        return NONE
    return escape(str(value))


def number(value: Any, fmt: str = "g", suffix: str = "") -> str:
    """A number cell (``-`` when missing)."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return text(value)
    return f"{value:{fmt}}{suffix}"


def table(*columns: str, title: str | None = None, wide: Iterable[str] = ()) -> Table:
    """A borderless table with bold headers, columns two spaces apart.

    Columns named in ``wide`` (names, reasons, free text) give way when the
    table is wider than the window: their text wraps, at spaces where it can.
    The others (ids, times, states, numbers) keep their width and never wrap,
    so a time or a version is never split over two lines.
    """
    wide = set(wide)
    grid = Table(
        title=escape(title) if title else None,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1, 0, 0),
        header_style="bold",
        title_style="bold",
    )
    for column in columns:
        if column in wide:
            grid.add_column(column, overflow="fold", min_width=min(len(column), 8) or 1)
        else:
            grid.add_column(column, no_wrap=True, min_width=len(column))
    return grid


def show(renderable: Any) -> None:
    """Print a table (or any rich renderable) to stdout.

    Off a terminal the lines are printed without the spaces rich pads the
    last column with, so that a file or a pipe gets no trailing blanks.
    """
    console = output_console()
    if console.is_terminal:
        console.print(renderable)
        return
    with console.capture() as captured:
        console.print(renderable)
    for line in captured.get().splitlines():
        typer.echo(line.rstrip())


def say(line: str) -> None:
    """A plain line to stdout (an empty listing, a summary)."""
    typer.echo(line)
