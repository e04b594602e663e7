"""``modelport encrypt`` and ``modelport keygen``: sealing model versions at rest.

Exit codes: 0 done; 2 bad input (no key, not a version directory, already
sealed), with nothing changed on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelport.cli.keyoptions import KeyProviderName, MasterKeyFile, key_provider_from

EXIT_BAD_INPUT = 2


def encrypt(
    version_dir: Annotated[
        Path,
        typer.Argument(help="The version to seal: REPO/model/VERSION.", show_default=False),
    ],
    master_key_file: MasterKeyFile = None,
    key_provider: KeyProviderName = None,
) -> None:
    """Seal every file of a model version with AES-256-GCM; the plaintext is removed."""
    from modelport.controlplane.crypto.providers import ENV_MASTER_KEY
    from modelport.controlplane.crypto.sealing import seal_version
    from modelport.errors import ModelportError

    try:
        keys = key_provider_from(master_key_file, key_provider)
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
