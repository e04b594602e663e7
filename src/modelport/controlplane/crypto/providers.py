"""Choosing the key provider from settings, including ones plugged in from outside.

A KMS-backed provider lives in its own package and is named by setting
``key_provider`` to ``package.module:factory`` or to the name of an entry
point in the ``modelport.key_providers`` group. The factory is called with
no arguments (it reads its own settings) and returns a KeyProvider.
Otherwise the local master key is used: ``master_key_file`` first, then the
``MODELPORT_MASTER_KEY`` environment variable (base64 of 32 bytes).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import cast

from modelport.config.server import ServerConfig
from modelport.controlplane.crypto.keys import (
    KeyProvider,
    LocalKeyProvider,
    parse_master_key,
    read_master_key_file,
)
from modelport.errors import ConfigError

ENTRY_POINT_GROUP = "modelport.key_providers"
ENV_MASTER_KEY = "MODELPORT_MASTER_KEY"


def key_provider_for(config: ServerConfig) -> KeyProvider | None:
    """The server's provider, from its settings (the secret is unwrapped only here)."""
    secret = config.master_key.get_secret_value() if config.master_key is not None else None
    return build_key_provider(config.master_key_file, secret, config.key_provider)


def build_key_provider(
    master_key_file: Path | None, master_key: str | None, key_provider: str | None
) -> KeyProvider | None:
    """The provider the settings ask for; None when no key is configured at all."""
    if key_provider:
        return load_plugged_provider(key_provider)
    if master_key_file is not None:
        return LocalKeyProvider(read_master_key_file(master_key_file))
    if master_key:
        return LocalKeyProvider(parse_master_key(master_key.encode(), ENV_MASTER_KEY))
    return None


def load_plugged_provider(reference: str) -> KeyProvider:
    """Import ``module:factory`` or look up an entry point, then call the factory."""
    where = "key_provider"
    if ":" in reference:
        module_name, _, attr = reference.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except ImportError as exc:
            raise ConfigError(where, reference, f"cannot import {module_name}: {exc}") from None
        except AttributeError:
            raise ConfigError(where, reference, f"{module_name} has no {attr!r}") from None
    else:
        found = entry_points(group=ENTRY_POINT_GROUP, name=reference)
        if not found:
            raise ConfigError(
                where, reference, f"no entry point of that name in group {ENTRY_POINT_GROUP}"
            )
        factory = next(iter(found)).load()
    if not callable(factory):
        raise ConfigError(where, reference, "is not callable")
    try:
        provider = cast(Callable[[], object], factory)()
    except Exception as exc:
        # The provider's own message could quote credentials; say only what kind of failure.
        raise ConfigError(where, reference, f"factory failed: {type(exc).__name__}") from None
    for method in ("wrap", "unwrap"):
        if not callable(getattr(provider, method, None)):
            raise ConfigError(where, reference, f"the provider has no {method}() method")
    if not isinstance(getattr(provider, "key_id", None), str):
        raise ConfigError(where, reference, "the provider's key_id is not a string")
    return cast(KeyProvider, provider)
