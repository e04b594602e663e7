"""``modelport encrypt`` and ``modelport keygen``: sealing model versions at rest.

Exit codes: 0 done; 2 bad input (no key, not a version directory, already
sealed), with nothing changed on disk.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

EXIT_BAD_INPUT = 2


def encrypt(
    version_dir: Annotated[
        Path,
        typer.Argument(help="The version to seal: REPO/model/VERSION.", show_default=False),
    ],
    master_key_file: Annotated[
        Path | None,
        typer.Option(
            help="Master key file (32 raw bytes or base64); default: MODELPORT_MASTER_KEY."
        ),
    ] = None,
    key_provider: Annotated[
        str | None,
        typer.Option(help="A plugged-in key provider: package.module:factory or an entry point."),
    ] = None,
) -> None:
    """Seal every file of a model version with AES-256-GCM; the plaintext is removed."""
    from modelport.controlplane.crypto.providers import ENV_MASTER_KEY, build_key_provider
    from modelport.controlplane.crypto.sealing import seal_version
    from modelport.errors import ModelportError

    try:
        keys = build_key_provider(master_key_file, os.environ.get(ENV_MASTER_KEY), key_provider)
        if keys is None:
            typer.echo(
                f"error: no master key: pass --master-key-file or set {ENV_MASTER_KEY}", err=True
            )
            raise typer.Exit(EXIT_BAD_INPUT)
        count = seal_version(version_dir, keys)
    except ModelportError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    typer.echo(f"sealed {count} file(s) in {version_dir} under key id {keys.key_id}")


def keygen(
    output: Annotated[
        Path,
        typer.Option("-o", "--output", help="File to create (mode 0600; never overwritten)."),
    ],
) -> None:
    """Write a new random 32-byte master key as base64 text."""
    from modelport.controlplane.crypto.keys import write_new_master_key
    from modelport.errors import ModelportError

    try:
        key_id = write_new_master_key(output)
    except ModelportError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    typer.echo(f"wrote a new master key to {output} (key id {key_id})")
