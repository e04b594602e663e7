"""API keys as stored: everything but the secret, which only a salted hash stands for.

``controlplane/keys.py`` makes and checks keys; this module only keeps them.
Creating and revoking a key append their audit event in the same
transaction, without the secret or its hash.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, func, select, update

from modelport.controlplane.store import checks
from modelport.controlplane.store.audit import SERVER_WIDE, append_event
from modelport.controlplane.store.database import Database
from modelport.controlplane.store.tables import ACTOR_MAX, KEY_ID_MAX, api_keys

#: Actions recorded when an API key is created or revoked.
KEY_CREATE = "key.create"
KEY_REVOKE = "key.revoke"


@dataclass(frozen=True, slots=True)
class StoredKey:
    """One API key as stored: everything but the secret, which only its hash stands for."""

    id: str
    name: str
    role: str
    models: tuple[str, ...]
    tenant: str | None
    salt: str
    secret_hash: str
    rate: float | None
    burst: int | None
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None


class KeyStore:
    """Every API key the server has issued, revoked ones included."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def add(self, key: StoredKey) -> None:
        """Store a new key and record ``key.create`` (no secret, no hash) in one transaction."""
        key_id = checks.check_text(key.id, "key id", KEY_ID_MAX)
        actor = checks.check_actor(key.created_by)
        checks.check_text(key.name, "key name", ACTOR_MAX)
        values = {
            "id": key_id,
            "name": key.name,
            "role": key.role,
            "models": list(key.models),
            "tenant": key.tenant,
            "salt": key.salt,
            "secret_hash": key.secret_hash,
            "rate": key.rate,
            "burst": key.burst,
            "created_at": key.created_at,
            "created_by": actor,
            "expires_at": key.expires_at,
            "revoked_at": None,
        }
        detail = {
            "id": key_id,
            "name": key.name,
            "role": key.role,
            "models": list(key.models),
            "tenant": key.tenant,
            "expires_at": None if key.expires_at is None else key.expires_at.isoformat(),
            "rate": key.rate,
            "burst": key.burst,
        }
        with self._db.transaction(write=True) as conn:
            conn.execute(api_keys.insert().values(**values))
            append_event(conn, SERVER_WIDE, key.created_at, actor, KEY_CREATE, detail, None)

    def get(self, key_id: str) -> StoredKey | None:
        with self._db.transaction() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).first()
        return None if row is None else _key(row)

    def list_all(self) -> list[StoredKey]:
        with self._db.transaction() as conn:
            rows = conn.execute(select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id))
            return [_key(row) for row in rows]

    def count_active(self) -> int:
        """Keys neither revoked nor expired now: whether the server has callers to expect."""
        now = self._db.now()
        query = select(func.count()).where(
            api_keys.c.revoked_at.is_(None),
            (api_keys.c.expires_at.is_(None)) | (api_keys.c.expires_at > now),
        )
        with self._db.transaction() as conn:
            return int(conn.execute(query).scalar_one())

    def revoke(self, key_id: str, *, actor: str, reason: str | None = None) -> bool:
        """Revoke a key now; False when there is no such key or it was revoked already."""
        key_id = checks.check_text(key_id, "key id", KEY_ID_MAX)
        actor = checks.check_actor(actor)
        reason = checks.check_reason(reason)
        now = self._db.now()
        with self._db.transaction(write=True) as conn:
            done = conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            if done.rowcount != 1:
                return False
            append_event(conn, SERVER_WIDE, now, actor, KEY_REVOKE, {"id": key_id}, reason)
        return True


def _key(row: Row[Any]) -> StoredKey:
    return StoredKey(
        row.id,
        row.name,
        row.role,
        tuple(row.models),
        row.tenant,
        row.salt,
        row.secret_hash,
        row.rate,
        row.burst,
        row.created_at,
        row.created_by,
        row.expires_at,
        row.revoked_at,
    )
