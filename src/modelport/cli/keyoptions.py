"""The master-key options shared by the commands that seal or open sealed data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from modelport.controlplane.crypto.keys import KeyProvider

MasterKeyFile = Annotated[
    Path | None,
    typer.Option(help="Master key file (32 raw bytes or base64); default: MODELPORT_MASTER_KEY."),
]
KeyProviderName = Annotated[
    str | None,
    typer.Option(help="A plugged-in key provider: package.module:factory or an entry point."),
]


def key_provider_from(master_key_file: Path | None, key_provider: str | None) -> KeyProvider | None:
    """The provider the options (or MODELPORT_MASTER_KEY) name; None when none is given."""
    from modelport.controlplane.crypto.providers import ENV_MASTER_KEY, build_key_provider

    return build_key_provider(master_key_file, os.environ.get(ENV_MASTER_KEY), key_provider)
