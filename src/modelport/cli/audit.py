"""``modelport audit``: check and export the state store's hash-chained event log.

These commands open the database directly, the same one the server uses
(``--data-dir``/``--state-url`` and their ``MODELPORT_*`` variables mean what
they mean to ``modelport serve``), so they work while the server is down.
Exit codes: 0 fine, 1 the chain is broken, 2 the store could not be used.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TextIO

import typer

from modelport.cli.storeoptions import DataDir, StateUrl, guard, open_store

if TYPE_CHECKING:
    # Imported when a command runs, so that other commands start without SQLAlchemy.
    from modelport.controlplane.store import AuditLog, AuditProblem

audit_app = typer.Typer(
    no_args_is_help=True, help="The tamper-evident log of every change to served models."
)


@audit_app.command("verify")
def verify(data_dir: DataDir = None, state_url: StateUrl = None) -> None:
    """Recompute the hash chain; list every record that was edited, removed, moved or added."""
    from modelport.controlplane.store import AuditLog

    with open_store(data_dir, state_url, create=False) as database:
        report = guard(AuditLog(database).verify)
    if report.ok:
        typer.echo(f"{report.checked} records, chain intact")
        return
    for problem in report.problems:
        typer.echo(describe(problem))
    typer.echo(
        f"{report.checked} records, {len(report.problems)} "
        f"problem{'s' if len(report.problems) != 1 else ''}: chain broken"
    )
    raise typer.Exit(1)


@audit_app.command("export")
def export(
    data_dir: DataDir = None,
    state_url: StateUrl = None,
    since: Annotated[
        int | None,
        typer.Option("--since", min=0, help="Only records after this seq (to continue an export)."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write (default: stdout).")
    ] = None,
) -> None:
    """Write the audit log as JSON lines, one record per line, chain fields included."""
    from modelport.controlplane.store import AuditLog

    with open_store(data_dir, state_url, create=False) as database:
        log = AuditLog(database)
        if output is None:
            _write(log, sys.stdout, since)
            return
        try:
            with output.open("w", encoding="utf-8", newline="\n") as out:
                count = _write(log, out, since)
        except OSError as exc:
            typer.echo(f"error: cannot write {output}: {exc.strerror}", err=True)
            raise typer.Exit(2) from None
    typer.echo(f"wrote {count} records to {output}", err=True)


def describe(problem: AuditProblem) -> str:
    """One problem as a line: which record, what is wrong with it."""
    where = f"seq {problem.seq}" if problem.id is None else f"seq {problem.seq} (id {problem.id})"
    return f"{where}: {problem.what}: {problem.detail}"


def _write(log: AuditLog, out: TextIO, since: int | None) -> int:
    return guard(lambda: log.export(out, since))
