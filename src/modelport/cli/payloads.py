"""``modelport payloads read``: print a payload day file's records, opening sealed ones.

Records are printed one JSON object a line, as the server wrote them before
sealing, so the output pipes into ``jq`` whether the file was sealed or not.
Exit codes: 0 every record printed; 2 the file or key could not be used, or
a record did not open (records before it were printed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from modelport.cli.keyoptions import KeyProviderName, MasterKeyFile, key_provider_from

EXIT_BAD_INPUT = 2

payloads_app = typer.Typer(
    no_args_is_help=True, help="Sampled, redacted request payloads that models log."
)


@payloads_app.command("read")
def read(
    file: Annotated[
        Path,
        typer.Argument(help="A day file: PAYLOAD_LOG_DIR/<model>/<YYYY-MM-DD>.jsonl."),
    ],
    master_key_file: MasterKeyFile = None,
    key_provider: KeyProviderName = None,
) -> None:
    """Print every record of FILE, decrypting sealed records with the master key."""
    from modelport.errors import ModelportError
    from modelport.observability.payload_files import read_records

    try:
        keys = key_provider_from(master_key_file, key_provider)
        for record in read_records(file, keys):
            typer.echo(json.dumps(record, ensure_ascii=True, separators=(",", ":")))
    except ModelportError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except OSError as exc:
        typer.echo(f"error: {file}: cannot read: {exc.strerror}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
