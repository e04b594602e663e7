"""API keys: creation, listing, revocation, and verification for the data plane.

A key reads ``mpk_<id>_<secret>``: the id (12 hex digits) finds the row in
one indexed lookup, the secret (32 random bytes, base64url) is checked
against ``HMAC-SHA-256(salt, secret)`` with a constant-time comparison. The
secret is high-entropy, so a fast keyed hash is enough (no password KDF);
the per-key salt keeps equal secrets from having equal hashes and makes a
stolen table useless for precomputed lookups.

:class:`KeyService` implements the data plane's ``CredentialVerifier``
protocol over the KeyStore; the composition root hands it to the
Authenticator, whose one-second cache bounds how long a revocation made on
another node takes to apply here.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from modelport.controlplane.store.database import utc_now
from modelport.controlplane.store.keys import KeyStore, StoredKey
from modelport.dataplane.admission.authenticate import API_KEY_PREFIX
from modelport.dataplane.admission.identity import parse_role
from modelport.dataplane.admission.ratelimit import check_limit
from modelport.errors import InvalidRequest, Unauthenticated
from modelport.types import Identity

#: Matched with fullmatch: ``$`` would also accept a key followed by a newline.
_TOKEN = re.compile(rf"{re.escape(API_KEY_PREFIX)}([0-9a-f]{{12}})_([A-Za-z0-9_-]{{43}})")
_DURATION = re.compile(r"([1-9][0-9]{0,5})([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

#: Longest model pattern or tenant name accepted.
MAX_PATTERN = 256
MAX_PATTERNS = 64


def hash_secret(salt_hex: str, secret: str) -> str:
    return hmac.new(bytes.fromhex(salt_hex), secret.encode("ascii"), hashlib.sha256).hexdigest()


def parse_token(token: str) -> tuple[str, str]:
    """(id, secret) of a well-formed key; Unauthenticated otherwise."""
    match = _TOKEN.fullmatch(token)
    if match is None:
        raise Unauthenticated("malformed API key")
    return match.group(1), match.group(2)


def parse_expiry(text: str, now: datetime) -> datetime:
    """``30d``, ``12h``, ``2w`` … from now, or an ISO date/time (UTC when no zone given)."""
    text = text.strip()
    match = _DURATION.fullmatch(text)
    if match is not None:
        return now + timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(
            f"--expires {text!r}: expected a duration (30d, 12h, 2w) or a date (2027-01-01)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if when <= now:
        raise InvalidRequest(f"--expires {text!r} is in the past")
    return when


def check_patterns(patterns: Sequence[str]) -> tuple[str, ...]:
    if not patterns:
        raise InvalidRequest("--models: give at least one model name pattern (e.g. 'fraud-*')")
    if len(patterns) > MAX_PATTERNS:
        raise InvalidRequest(f"--models: at most {MAX_PATTERNS} patterns")
    for p in patterns:
        if not p or len(p) > MAX_PATTERN or not p.isprintable():
            raise InvalidRequest(f"--models: invalid pattern {p!r}")
    return tuple(patterns)


class KeyService:
    """API keys over the state store; also the data plane's key verifier."""

    def __init__(self, store: KeyStore, clock: Callable[[], datetime] = utc_now) -> None:
        self.store = store
        self._clock = clock

    def create(
        self,
        *,
        role: str,
        models: Sequence[str],
        actor: str,
        name: str | None = None,
        tenant: str | None = None,
        expires: str | None = None,
        rate: float | None = None,
        burst: int | None = None,
    ) -> tuple[StoredKey, str]:
        """Store a new key; returns it and the token, which is never shown again."""
        try:
            role_name = parse_role(role).label
        except ValueError as exc:
            raise InvalidRequest(f"--role: {exc}") from None
        patterns = check_patterns(models)
        if tenant is not None and (not tenant or len(tenant) > MAX_PATTERN):
            raise InvalidRequest(f"--tenant: invalid tenant {tenant!r}")
        if (rate is None) != (burst is None):
            raise InvalidRequest("--rate and --burst go together")
        if rate is not None and burst is not None:
            try:
                check_limit(rate, burst, 1)
            except ValueError as exc:
                raise InvalidRequest(f"--rate/--burst: {exc}") from None
        now = self._clock()
        expires_at = parse_expiry(expires, now) if expires is not None else None
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        salt = secrets.token_hex(32)
        key = StoredKey(
            id=key_id,
            name=name or f"key-{key_id}",
            role=role_name,
            models=patterns,
            tenant=tenant,
            salt=salt,
            secret_hash=hash_secret(salt, secret),
            rate=rate,
            burst=burst,
            created_at=now,
            created_by=actor,
            expires_at=expires_at,
            revoked_at=None,
        )
        self.store.add(key)
        return key, f"{API_KEY_PREFIX}{key_id}_{secret}"

    def list(self) -> list[StoredKey]:
        return self.store.list_all()

    def revoke(self, key_id: str, *, actor: str, reason: str | None = None) -> bool:
        return self.store.revoke(key_id, actor=actor, reason=reason)

    def verify(self, token: str) -> Identity:
        """The key's identity; one message for every failure, so guesses learn nothing."""
        key_id, secret = parse_token(token)
        key = self.store.get(key_id)
        # Hash even when the id is unknown, so timing does not tell ids apart.
        salt = key.salt if key is not None else "00" * 32
        expected = key.secret_hash if key is not None else "0" * 64
        matches = hmac.compare_digest(hash_secret(salt, secret), expected)
        if key is None or not matches or key.revoked_at is not None:
            raise Unauthenticated("invalid API key")
        if key.expires_at is not None and key.expires_at <= self._clock():
            raise Unauthenticated("credentials expired")
        return Identity(
            id=f"key:{key.id}",
            name=key.name,
            role=parse_role(key.role),
            models=key.models,
            tenant=key.tenant,
            rate=key.rate,
            burst=key.burst,
            expires_at=None if key.expires_at is None else key.expires_at.timestamp(),
        )
