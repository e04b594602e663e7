"""``modelport batch``: predictions for every row of a JSONL, CSV or parquet file.

Exit codes: 0 every row succeeded; 1 some rows failed (listed in the
summary, each with its row number); 2 a usage error: a bad option or file,
a server that cannot be reached, a model it does not serve, or inputs that
do not fit the model. Everything heavy is imported inside the command, so
``modelport --help`` stays fast.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from modelport.cli.client import EXIT_UNREACHABLE, Connection, Token, remember

if TYPE_CHECKING:
    from modelport.batchfiles.writer import Writer

EXIT_SOME_FAILED = 1
#: Exit code of a run stopped by Ctrl-C, as a shell gives a process ended by SIGINT.
EXIT_INTERRUPTED = 130
#: Failures listed one per line in the summary; the rest are counted.
LISTED_FAILURES = 20


def batch(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model to run.", show_default=False)],
    input: Annotated[
        Path,
        typer.Option(
            "--input", help="Rows: .jsonl, .csv (with a header) or .parquet.", show_default=False
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            help="Predictions, one row per input row: .jsonl, .csv or .parquet.",
            show_default=False,
        ),
    ],
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            metavar="URL",
            show_default=False,
            help="REST address of the server (default: $MODELPORT_URL, else "
            "http://127.0.0.1:8000).",
        ),
    ] = None,
    repo: Annotated[
        Path | None,
        typer.Option(
            "--repo",
            show_default=False,
            help="Serve this repository on loopback for the run instead of calling --server.",
        ),
    ] = None,
    token: Token = None,
    id_column: Annotated[
        str | None,
        typer.Option(help="Input column copied to the output and not sent to the model."),
    ] = None,
    chunk_rows: Annotated[
        int,
        typer.Option(
            min=1, help="Rows per request (at most the model's max_batch_size when it has one)."
        ),
    ] = 256,
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight at once.")] = 4,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue a run that stopped, from OUTPUT.progress; without one, start over.",
        ),
    ] = False,
) -> None:
    """Run a model over every row of a file, a chunk per request, writing predictions."""
    from modelport.batchfiles.tensors import UsageError

    if server is not None and repo is not None:
        _usage("give --server or --repo, not both")
    try:
        if repo is not None:
            from modelport.cli.batch_server import local_server

            with local_server(repo, model) as url:
                conn = Connection(url, "--repo", *_token(ctx, token))
                code = _run(conn, model, input, output, id_column, chunk_rows, concurrency, resume)
        else:
            target = remember(ctx, server, token)
            conn = target.resolve()
            if server is not None:
                conn = Connection(server, "--server", conn.token, conn.token_from)
            code = _run(conn, model, input, output, id_column, chunk_rows, concurrency, resume)
    except UsageError as exc:
        _usage(str(exc))
    except KeyboardInterrupt:
        typer.echo("stopped: run the same command with --resume to continue", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    raise typer.Exit(code)


def _token(ctx: typer.Context, token: str | None) -> tuple[str | None, str | None]:
    resolved = remember(ctx, None, token).resolve()
    return resolved.token, resolved.token_from


def _usage(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_UNREACHABLE)


def _run(
    conn: Connection,
    model: str,
    input: Path,
    output: Path,
    id_column: str | None,
    chunk_rows: int,
    concurrency: int,
    resume: bool,
) -> int:
    """The whole run; returns the exit code."""
    from modelport.batchfiles.reader import Reader, file_format
    from modelport.batchfiles.tensors import Layout, UsageError, specs
    from modelport.batchfiles.writer import WRITERS, Progress, progress_path
    from modelport.cli.batch_run import Target, rate, run_chunks

    in_kind = file_format(input, "--input")
    out_kind = file_format(output, "--output")
    if not input.is_file():
        raise UsageError(f"--input {input}: no such file")
    if output.resolve() == input.resolve():
        raise UsageError("--output must not be the --input file")
    metadata, max_batch = _metadata(conn, model)
    inputs, outputs = specs(metadata.get("inputs", [])), specs(metadata.get("outputs", []))
    if max_batch > 0:
        chunk_rows = min(chunk_rows, max_batch)

    writer_type: type[Writer] = WRITERS.get(out_kind) or _parquet_writer()
    checkpoint = progress_path(output)
    progress = Progress(str(input.resolve()), model)
    if checkpoint.exists():
        if not resume:
            raise UsageError(
                f"{checkpoint} says an earlier run stopped part of the way: add --resume to "
                f"continue it, or delete that file to start over"
            )
        progress = Progress.load(checkpoint)
        if progress.input != str(input.resolve()) or progress.model != model:
            raise UsageError(
                f"{checkpoint} is of a run of {progress.model} over {progress.input}, not this one"
            )
        data = writer_type.data_path(output)
        if not data.exists() or data.stat().st_size < progress.output_bytes:
            raise UsageError(f"{data} is shorter than {checkpoint} records: cannot resume")

    reader = Reader(input, in_kind, chunk_rows, id_column)
    reader.open(progress.rows, progress.offset)
    layout = Layout.for_fields(inputs, reader.fields)
    target = Target(conn.url, model, conn.token, layout, outputs)
    writer = writer_type(output, outputs, id_column, progress.output_bytes)
    started = time.monotonic()
    done_before = progress.succeeded + progress.failed
    from modelport.cli.batch_view import progress_bar

    by_rows = in_kind == "parquet"
    with progress_bar(reader.size, progress.rows if by_rows else progress.offset) as bar:
        try:
            asyncio.run(
                run_chunks(
                    reader.chunks(),
                    writer,
                    progress,
                    checkpoint,
                    target,
                    concurrency,
                    lambda c: bar(c.rows_after if by_rows else c.offset_after),
                )
            )
        except BaseException:
            writer.drop()
            raise
        writer.close()
    checkpoint.unlink(missing_ok=True)
    from modelport.cli.batch_view import summary

    rows_now = progress.succeeded + progress.failed - done_before
    summary(progress, output, rate(rows_now, started), LISTED_FAILURES)
    return 0 if progress.failed == 0 else EXIT_SOME_FAILED


def _parquet_writer() -> type[Writer]:
    from modelport.batchfiles.parquet import ParquetWriter

    return ParquetWriter


def _metadata(conn: Connection, model: str) -> tuple[dict[str, Any], int]:
    """The model's metadata, and its max_batch_size where the server tells it (else 0)."""
    import httpx

    from modelport.batchfiles.tensors import UsageError

    headers = {"Authorization": f"Bearer {conn.token}"} if conn.token else {}
    base = f"{conn.url.rstrip('/')}/v2/models/{model}"
    try:
        response = httpx.get(base, headers=headers, timeout=30)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise UsageError(conn.unreachable(exc).removeprefix("error: ")) from None
    if response.status_code >= 400:
        raise UsageError(conn.refused(response).removeprefix("error: "))
    metadata: dict[str, Any] = conn.json(response)
    max_batch = 0
    try:
        config = httpx.get(f"{base}/config", headers=headers, timeout=30)
        if config.status_code == 200:
            max_batch = int(config.json().get("max_batch_size") or 0)
    except (httpx.HTTPError, ValueError, AttributeError):
        pass
    return metadata, max_batch
