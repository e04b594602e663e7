"""``modelport jobs``: the caller's asynchronous inference jobs (docs/jobs.md).

Jobs are submitted with ``Prefer: respond-async`` on the infer route, or as a
batch over files on the server (``modelport jobs batch``); these commands
submit batches, read, wait on nothing, and cancel, through /api/v1/jobs,
with the same ``--url`` / ``--token`` handling and exit codes as
``modelport models``.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from modelport.cli.client import Token, Url, connection, remember
from modelport.cli.output import AsJson, iso_time, print_json, say, show, table, text

jobs_app = typer.Typer(no_args_is_help=True, help="Asynchronous inference jobs.")

JobId = Annotated[str, typer.Argument(help="The job's id (from the 202's Location).")]


@jobs_app.callback()
def _jobs(ctx: typer.Context, url: Url = None, token: Token = None) -> None:
    """Asynchronous inference jobs."""
    remember(ctx, url, token)


def _rows(found: list[Any]) -> None:
    if not found:
        say("no jobs")
        return
    grid = table("ID", "STATE", "MODEL", "VERSION", "CREATED", "FINISHED", "ERROR", wide=["ERROR"])
    for job in found:
        grid.add_row(
            text(job.get("id")),
            text(job.get("state")),
            text(job.get("model")),
            text(job.get("version")),
            iso_time(job.get("created")),
            iso_time(job.get("finished")),
            text(job.get("error")),
        )
    show(grid)


@jobs_app.command("list")
def list_jobs(
    ctx: typer.Context,
    url: Url = None,
    token: Token = None,
    as_json: AsJson = False,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Jobs per page.")] = 100,
    offset: Annotated[int, typer.Option(min=0, help="Jobs to skip (newest first).")] = 0,
) -> None:
    """Your jobs, newest first."""
    server = connection(ctx, url, token)
    data = server.json(server.call("GET", f"/jobs?limit={limit}&offset={offset}"))
    if as_json:
        print_json(data)
        return
    _rows(list(data.get("jobs") or []))
    if data.get("next_offset") is not None:
        say(f"more: --offset {data['next_offset']}")


@jobs_app.command("get")
def get_job(
    ctx: typer.Context, job: JobId, url: Url = None, token: Token = None, as_json: AsJson = False
) -> None:
    """One job's state, model, version and times."""
    server = connection(ctx, url, token)
    data = server.json(server.call("GET", f"/jobs/{job}"))
    if as_json:
        print_json(data)
    else:
        _rows([data])


@jobs_app.command("result")
def job_result(ctx: typer.Context, job: JobId, url: Url = None, token: Token = None) -> None:
    """A finished job's answer as the server returned it (a failed job's error: exit 1)."""
    server = connection(ctx, url, token)
    response = server.call("GET", f"/jobs/{job}/result")
    if response.headers.get("content-type", "").startswith("application/json"):
        print_json(server.json(response))
    else:  # binary tensors after the JSON header, written as they came
        sys.stdout.buffer.write(response.content)
        sys.stdout.buffer.flush()


@jobs_app.command("cancel")
def cancel_job(
    ctx: typer.Context, job: JobId, url: Url = None, token: Token = None, as_json: AsJson = False
) -> None:
    """Cancel a job: a queued one at once, a running one when its batch ends."""
    server = connection(ctx, url, token)
    data = server.json(server.call("DELETE", f"/jobs/{job}"))
    if as_json:
        print_json(data)
    else:
        _rows([data])


@jobs_app.command("batch")
def submit_batch(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model to run.", show_default=False)],
    input: Annotated[
        str, typer.Argument(help="Input file (.jsonl, .csv), relative to the server's batch_dir.")
    ],
    output: Annotated[
        str, typer.Argument(help="Output file to create, relative to the server's batch_dir.")
    ],
    url: Url = None,
    token: Token = None,
    as_json: AsJson = False,
    version: Annotated[str | None, typer.Option(help="Model version (default: any).")] = None,
    id_column: Annotated[
        str | None, typer.Option(help="Input field copied to each output row.")
    ] = None,
    chunk_rows: Annotated[int, typer.Option(min=1, max=10_000, help="Rows per request.")] = 256,
    callback_url: Annotated[
        str | None, typer.Option(help="URL the server POSTs to when the job ends.")
    ] = None,
) -> None:
    """Run a model over a file on the server (its batch_dir); prints the job's id."""
    server = connection(ctx, url, token)
    body = {
        "model": model,
        "version": version,
        "input": input,
        "output": output,
        "id_column": id_column,
        "chunk_rows": chunk_rows,
        "callback_url": callback_url,
    }
    data = server.json(server.call("POST", "/jobs/batch", body))
    if as_json:
        print_json(data)
    else:
        say(f"{data['id']} {data['state']}: modelport jobs get {data['id']}")
