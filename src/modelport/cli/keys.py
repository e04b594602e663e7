"""``modelport keys``: create, list and revoke API keys in the state store.

Like ``modelport audit``, these commands open the server's database
directly (``--data-dir``/``--state-url`` and their ``MODELPORT_*`` variables
mean what they mean to ``modelport serve``), so they work whether or not
the server runs. A running server sees a new key at once and a revocation
within a second (its identity cache lives at most that long).
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from modelport.cli.output import iso_time, say, show, table, text, utc_text
from modelport.cli.storeoptions import DataDir, StateUrl, guard, open_store

if TYPE_CHECKING:
    from modelport.controlplane.keys import KeyService
    from modelport.controlplane.store.keys import StoredKey

keys_app = typer.Typer(no_args_is_help=True, help="API keys: who may call the server.")


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


@contextmanager
def _service(data_dir: Path | None, state_url: str | None) -> Iterator[KeyService]:
    """The key service over the options' store, closed on the way out."""
    from modelport.controlplane.keys import KeyService
    from modelport.controlplane.store import KeyStore

    # Unlike ``audit``, a missing database is created: the first key is
    # normally made before the server has ever run.
    with open_store(data_dir, state_url, create=True) as database:
        yield KeyService(KeyStore(database))


@keys_app.command("create")
def create(
    role: Annotated[str, typer.Option(help="viewer, invoker, operator or admin.")],
    models: Annotated[
        list[str], typer.Option(help="Model name pattern (fnmatch), e.g. 'fraud-*'; repeatable.")
    ],
    name: Annotated[
        str | None, typer.Option(help="A name for the audit log (default key-<id>).")
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="Tenant the key is confined to.")] = None,
    expires: Annotated[
        str | None, typer.Option(help="Lifetime (30d, 12h, 2w) or a date (2027-01-01).")
    ] = None,
    rate: Annotated[float | None, typer.Option(help="Requests per second for this key.")] = None,
    burst: Annotated[int | None, typer.Option(help="Requests in a burst for this key.")] = None,
    data_dir: DataDir = None,
    state_url: StateUrl = None,
) -> None:
    """Create a key and print it once; only a salted hash of it is stored."""
    with _service(data_dir, state_url) as service:
        key, token = guard(
            lambda: service.create(
                role=role,
                models=models,
                actor=_actor(),
                name=name,
                tenant=tenant,
                expires=expires,
                rate=rate,
                burst=burst,
            )
        )
    typer.echo(token)
    expiry = key.expires_at.isoformat() if key.expires_at else "never"
    typer.echo(
        f"key {key.id} ({key.name}): role {key.role}, models {' '.join(key.models)}, "
        f"expires {expiry}. Store it now: it cannot be shown again.",
        err=True,
    )


KeysJson = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print the keys as JSON for scripts (never a secret or its hash), not a table.",
    ),
]


def key_json(key: StoredKey) -> dict[str, object]:
    """A key as ``keys list --json`` prints it: its scope and state; no salt, no hash."""
    return {
        "id": key.id,
        "name": key.name,
        "role": key.role,
        "models": list(key.models),
        "tenant": key.tenant,
        "rate": key.rate,
        "burst": key.burst,
        "created_at": utc_text(key.created_at),
        "created_by": key.created_by,
        "expires_at": utc_text(key.expires_at),
        "revoked_at": utc_text(key.revoked_at),
        "state": key_state(key),
    }


def key_state(key: StoredKey, now: datetime | None = None) -> str:
    """``revoked``, ``expired`` or ``active``."""
    if key.revoked_at is not None:
        return "revoked"
    moment = now or datetime.now(UTC)
    expires = key.expires_at
    if expires is not None and expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    if expires is not None and expires <= moment:
        return "expired"
    return "active"


def _scope(key: StoredKey) -> str:
    """The key's model patterns, then its tenant and rate limit when it has them."""
    parts = [" ".join(key.models)]
    if key.tenant is not None:
        parts.append(f"tenant {key.tenant}")
    if key.rate is not None:
        parts.append(f"{key.rate:g}/s" + (f" burst {key.burst}" if key.burst is not None else ""))
    return "; ".join(parts)


@keys_app.command("list")
def list_keys(
    data_dir: DataDir = None, state_url: StateUrl = None, as_json: KeysJson = False
) -> None:
    """Every key with its scope and state; never a secret."""
    with _service(data_dir, state_url) as service:
        keys = guard(service.list)
    if as_json:
        typer.echo(json.dumps({"keys": [key_json(k) for k in keys]}, indent=2))
        return
    if not keys:
        say("no keys")
        return
    grid = table("ID", "NAME", "ROLE", "SCOPE", "EXPIRES", "STATE", wide=["NAME", "SCOPE"])
    for k in keys:
        grid.add_row(
            text(k.id),
            text(k.name),
            text(k.role),
            text(_scope(k)),
            iso_time(k.expires_at) if k.expires_at else "never",
            key_state(k),
        )
    show(grid)


@keys_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (the part after mpk_).")],
    reason: Annotated[str | None, typer.Option(help="Why, for the audit log.")] = None,
    data_dir: DataDir = None,
    state_url: StateUrl = None,
) -> None:
    """Revoke a key: refused from now on (within a second on running servers)."""
    with _service(data_dir, state_url) as service:
        done = guard(lambda: service.revoke(key_id, actor=_actor(), reason=reason))
    if not done:
        typer.echo(f"error: no active key {key_id!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")
