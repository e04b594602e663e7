"""``modelport audit``: check and export the state store's hash-chained event log.

These commands open the database directly, the same one the server uses
(``--data-dir``/``--state-url`` and their ``MODELPORT_*`` variables mean what
they mean to ``modelport serve``), so they work while the server is down.
They print tables for people; ``--json`` prints JSON for scripts (for
``export``, the JSON lines it has always written, which ``--output`` writes
to a file whatever the flag).
Exit codes: 0 fine, 1 the chain is broken, 2 the store could not be used.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TextIO

import typer

from modelport.cli.output import iso_time, say, show, table, text
from modelport.cli.storeoptions import DataDir, StateUrl, guard, open_store
from modelport.cli.views import change_and_reason

if TYPE_CHECKING:
    # Imported when a command runs, so that other commands start without SQLAlchemy.
    from modelport.controlplane.store import AuditLog, AuditProblem

audit_app = typer.Typer(
    no_args_is_help=True, help="The tamper-evident log of every change to served models."
)


VerifyJson = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print the report as JSON (ok, checked, problems) for scripts, not a table.",
    ),
]
ExportJson = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Write JSON lines, one record per line with the chain fields, not a table.",
    ),
]


@audit_app.command("verify")
def verify(
    data_dir: DataDir = None, state_url: StateUrl = None, as_json: VerifyJson = False
) -> None:
    """Recompute the hash chain; list every record that was edited, removed, moved or added."""
    from modelport.controlplane.store import AuditLog

    with open_store(data_dir, state_url, create=False) as database:
        report = guard(AuditLog(database).verify)
    if as_json:
        problems = [
            {"seq": p.seq, "id": p.id, "what": p.what, "detail": p.detail} for p in report.problems
        ]
        body = {"ok": report.ok, "checked": report.checked, "problems": problems}
        typer.echo(json.dumps(body, indent=2))
    elif report.ok:
        say(f"{report.checked} records, chain intact")
    else:
        grid = table("SEQ", "ID", "PROBLEM", "DETAIL", wide=["DETAIL"])
        for problem in report.problems:
            grid.add_row(
                str(problem.seq), text(problem.id), text(problem.what), text(problem.detail)
            )
        show(grid)
        say(
            f"{report.checked} records, {len(report.problems)} "
            f"problem{'s' if len(report.problems) != 1 else ''}: chain broken"
        )
    if not report.ok:
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
        Path | None,
        typer.Option("--output", "-o", help="File to write JSON lines to (default: stdout)."),
    ] = None,
    as_json: ExportJson = False,
) -> None:
    """Print the audit log as a table, or write it as JSON lines (--json, --output)."""
    from modelport.controlplane.store import AuditLog

    with open_store(data_dir, state_url, create=False) as database:
        log = AuditLog(database)
        if output is None and as_json:
            _write(log, sys.stdout, since)
            return
        if output is None:
            lines = io.StringIO()
            _write(log, lines, since)
            _print_records(lines.getvalue().splitlines(), since)
            return
        try:
            with output.open("w", encoding="utf-8", newline="\n") as out:
                count = _write(log, out, since)
        except OSError as exc:
            typer.echo(f"error: cannot write {output}: {exc.strerror}", err=True)
            raise typer.Exit(2) from None
    typer.echo(f"wrote {count} records to {output}", err=True)


def _print_records(lines: list[str], since: int | None) -> None:
    """Exported records as a table, in seq order."""
    if not lines:
        say("no audit records" + (f" after seq {since}" if since is not None else ""))
        return
    grid = table(
        "SEQ", "TIME", "MODEL", "ACTOR", "ACTION", "CHANGE (REASON)", wide=["CHANGE (REASON)"]
    )
    for line in lines:
        record = json.loads(line)
        grid.add_row(
            text(record.get("seq")),
            iso_time(record.get("at")),
            text(record.get("model")),
            text(record.get("actor")),
            text(record.get("action")),
            text(change_and_reason(record)),
        )
    show(grid)


def describe(problem: AuditProblem) -> str:
    """One problem as a line: which record, what is wrong with it."""
    where = f"seq {problem.seq}" if problem.id is None else f"seq {problem.seq} (id {problem.id})"
    return f"{where}: {problem.what}: {problem.detail}"


def _write(log: AuditLog, out: TextIO, since: int | None) -> int:
    return guard(lambda: log.export(out, since))
