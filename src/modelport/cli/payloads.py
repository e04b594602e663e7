"""``modelport payloads read``: print a payload day file's records, opening sealed ones.

By default the records are a table for people: time, model, version,
request id, protocol, the input tensors and the outputs (or the error).
With ``--json`` each record is printed as one JSON object a line, as the
server wrote it before sealing, so the output pipes into ``jq`` whether the
file was sealed or not.
Exit codes: 0 every record printed; 2 the file or key could not be used, or
a record did not open (records before it were printed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from modelport.cli.keyoptions import KeyProviderName, MasterKeyFile, key_provider_from
from modelport.cli.output import iso_time, say, show, table, text

EXIT_BAD_INPUT = 2

payloads_app = typer.Typer(
    no_args_is_help=True, help="Sampled, redacted request payloads that models log."
)


def _tensors(tensors: Any) -> str:
    """``name[shape] DATATYPE`` for each tensor, the data left out."""
    if not isinstance(tensors, list):
        return "-"
    parts = []
    for tensor in tensors:
        if not isinstance(tensor, dict):
            continue
        shape = "x".join(str(n) for n in tensor.get("shape") or [])
        cut = " (cut)" if tensor.get("truncated") else ""
        parts.append(f"{tensor.get('name')}[{shape}] {tensor.get('datatype')}{cut}")
    return ", ".join(parts) or "-"


def _result(record: dict[str, Any]) -> str:
    if record.get("error"):
        return f"error: {record['error']}"
    if "outputs" in record:
        return _tensors(record["outputs"])
    return "not logged"


def _print_table(records: list[dict[str, Any]], file: Path) -> None:
    if not records:
        say(f"no records in {file}")
        return
    columns = ("TIME", "MODEL", "VERSION", "ID", "PROTOCOL", "INPUTS", "OUTPUTS")
    grid = table(*columns, wide=["INPUTS", "OUTPUTS"])
    for record in records:
        grid.add_row(
            iso_time(record.get("time")),
            text(record.get("model")),
            text(record.get("version")),
            text(record.get("id")),
            text(record.get("protocol")),
            text(_tensors(record.get("inputs"))),
            text(_result(record)),
        )
    show(grid)


@payloads_app.command("read")
def read(
    file: Annotated[
        Path,
        typer.Argument(help="A day file: PAYLOAD_LOG_DIR/<model>/<YYYY-MM-DD>.jsonl."),
    ],
    master_key_file: MasterKeyFile = None,
    key_provider: KeyProviderName = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print each record whole, as one JSON object a line, instead of a table.",
        ),
    ] = False,
) -> None:
    """Print every record of FILE, decrypting sealed records with the master key."""
    from modelport.errors import ModelportError
    from modelport.observability.payload_files import read_records

    records: list[dict[str, Any]] = []
    try:
        keys = key_provider_from(master_key_file, key_provider)
        for record in read_records(file, keys):
            if as_json:
                typer.echo(json.dumps(record, ensure_ascii=True, separators=(",", ":")))
            else:
                records.append(record)
    except ModelportError as exc:
        if records:
            _print_table(records, file)
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except OSError as exc:
        if records:
            _print_table(records, file)
        typer.echo(f"error: {file}: cannot read: {exc.strerror}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    if not as_json:
        _print_table(records, file)
