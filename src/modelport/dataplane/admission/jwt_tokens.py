"""OIDC / JWT bearer tokens verified with PyJWT against an issuer's JWKS.

PyJWT parses the token, checks the signature and checks ``iss``, ``aud``
and the presence of ``exp`` and ``sub``. What it is told to allow is decided
here, never by the token: the algorithms are those of the key's *type* (see
jwks.py), so ``alg: none`` and HS256 cannot get through.

``exp`` and ``nbf`` are compared here, with a small leeway for clock skew,
because PyJWT reads the system clock itself and modelport passes wall time
in (one clock for the token and for the cached identity's expiry, and tests
that move it).

Key rotation: keys are cached by ``kid``. A token naming a ``kid`` not in the
cache makes the set be fetched again, at most once per ``refetch_interval``
seconds (so a stream of made-up ``kid`` values cannot turn into a stream of
requests to the issuer); if the key is still unknown the token is refused.
PyJWT's ``PyJWKClient`` is not used for this: it reads URLs only (a key set
may be a file), cannot be handed a fake source or clock in tests, and skips
keys it cannot use instead of refusing the set.

Refusals carry a fixed message of our own, never PyJWT's text: the client
learns which rule failed, not anything about the keys, and the same message
is what the audit records.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
from jwt.exceptions import InvalidSubjectError
from jwt.types import Options

from modelport.dataplane.admission.identity import ROLE_NAMES
from modelport.dataplane.admission.jwks import VerifyKey, parse_jwks
from modelport.errors import Unauthenticated
from modelport.types import Identity, Role

#: Largest JWKS document read, in bytes.
MAX_JWKS_BYTES = 1 << 20

#: Seconds a JWKS URL may take to connect or to send each part of its reply.
FETCH_TIMEOUT_S = 5.0

BAD_SIGNATURE = "invalid token: bad signature"
NOT_ACCEPTED = "invalid token: its signing algorithm is not accepted"

#: A required claim PyJWT found missing → what the client is told.
_MISSING: dict[str, str] = {
    "exp": "invalid token: no expiry ('exp')",
    "sub": "invalid token: no subject ('sub')",
    "iss": "invalid token: wrong issuer",
    "aud": "invalid token: wrong audience",
}

#: PyJWT's refusals → our messages; the first matching class wins, so
#: subclasses (InvalidSignatureError is a DecodeError) come first.
_REFUSALS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.InvalidSignatureError, BAD_SIGNATURE),
    (jwt.InvalidAlgorithmError, NOT_ACCEPTED),
    (jwt.InvalidAudienceError, "invalid token: wrong audience"),
    (jwt.InvalidIssuerError, "invalid token: wrong issuer"),
    (InvalidSubjectError, "invalid token: no subject ('sub')"),
    (jwt.InvalidKeyError, "invalid token: signed by a key that is not accepted"),
    (jwt.DecodeError, "malformed token: not a JWS of base64url-encoded JSON"),
)


@dataclass(frozen=True, slots=True)
class JwtSettings:
    """What a token must say, and where its grants are."""

    issuer: str | None = None
    """Required ``iss``; None accepts any issuer the key set signs for."""
    audience: str | None = None
    """Required ``aud`` (equal, or one of the list); None skips the check."""
    roles_claim: str = "roles"
    """Claim (dotted path for nested objects, e.g. ``realm_access.roles``) naming roles."""
    models_claim: str | None = None
    """Claim listing model name patterns; None grants every model (``*``)."""
    tenant_claim: str | None = None
    """Claim naming the caller's tenant; None means no tenant."""
    leeway_s: float = 30.0
    """Clock skew tolerated on ``exp`` and ``nbf``."""


def _too_large(source: str) -> ValueError:
    return ValueError(f"{source}: key set larger than {MAX_JWKS_BYTES} bytes")


def jwks_fetcher(source: str) -> Callable[[], bytes]:
    """Read the key set from a file path or an http(s) URL, at most MAX_JWKS_BYTES.

    Failures are OSError (unreachable, HTTP error status) or ValueError (too
    large), which the verifier survives on a refetch and startup reports.
    """
    if source.startswith(("https://", "http://")):

        def fetch_url() -> bytes:
            data = bytearray()
            try:
                with httpx.stream(
                    "GET", source, timeout=FETCH_TIMEOUT_S, follow_redirects=True
                ) as reply:
                    if reply.status_code != httpx.codes.OK:
                        raise OSError(f"the server answered HTTP {reply.status_code}")
                    # Read in pieces so an endless reply stops at the limit.
                    for chunk in reply.iter_bytes():
                        data += chunk
                        if len(data) > MAX_JWKS_BYTES:
                            raise _too_large(source)
            except httpx.HTTPError as exc:
                # Timeouts and protocol errors too, not only those that are OSError.
                raise OSError(str(exc) or type(exc).__name__) from None
            return bytes(data)

        return fetch_url
    path = Path(source)

    def fetch_file() -> bytes:
        with path.open("rb") as file:
            data = file.read(MAX_JWKS_BYTES + 1)
        if len(data) > MAX_JWKS_BYTES:
            raise _too_large(source)
        return data

    return fetch_file


def _claim(payload: dict[str, Any], path: str) -> Any:
    value: Any = payload
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _number(payload: dict[str, Any], name: str) -> float | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Unauthenticated(f"invalid token: {name!r} is not a number")
    return float(value)


def _refusal(exc: jwt.PyJWTError) -> Unauthenticated:
    """The fixed message for one of PyJWT's refusals."""
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return Unauthenticated(
            _MISSING.get(exc.claim, "invalid token: a required claim is missing")
        )
    for cls, message in _REFUSALS:
        if isinstance(exc, cls):
            return Unauthenticated(message)
    return Unauthenticated("invalid token")


class JwtVerifier:
    """A CredentialVerifier for JWTs signed by the keys of one JWKS."""

    def __init__(
        self,
        fetch: Callable[[], bytes],
        source: str,
        settings: JwtSettings,
        *,
        refetch_interval: float = 10.0,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Loads the key set now, so a bad one stops the server at start (JwksError)."""
        self._fetch = fetch
        self._source = source
        self.settings = settings
        self._refetch_interval = refetch_interval
        self._wall = wall
        self._clock = clock
        self._lock = threading.Lock()
        self._keys = parse_jwks(fetch(), source)
        self._fetched_at = clock()
        self._options: Options = {
            "require": ["exp", "sub"],
            # Compared in _identity against self._wall instead (see the module docstring).
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
            # PyJWT refuses any token with an ``aud`` when no audience is configured.
            "verify_aud": settings.audience is not None,
            "enforce_minimum_key_length": True,
        }

    def _refresh(self) -> bool:
        """Fetch the set again unless that was done recently; whether it was."""
        with self._lock:
            now = self._clock()
            if now - self._fetched_at < self._refetch_interval:
                return False
            self._fetched_at = now
            try:
                self._keys = parse_jwks(self._fetch(), self._source)
            except (OSError, ValueError):
                # Keep serving with the keys we have; the issuer may be briefly down.
                return False
            return True

    def _candidates(self, kid: str | None) -> list[VerifyKey]:
        if kid is None:
            return self._keys
        found = [k for k in self._keys if k.kid == kid]
        if not found and self._refresh():
            found = [k for k in self._keys if k.kid == kid]
        if not found:
            raise Unauthenticated("invalid token: signed by an unknown key")
        return found

    def verify(self, token: str) -> Identity:
        try:
            # Unverified: only used to pick keys; PyJWT checks ``kid`` is a string.
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise _refusal(exc) from None
        alg = header.get("alg")
        keys = [
            k
            for k in self._candidates(header.get("kid"))
            if isinstance(alg, str) and alg in k.algorithms
        ]
        if not keys:
            raise Unauthenticated(NOT_ACCEPTED)
        s = self.settings
        for key in keys:
            try:
                payload = jwt.decode(
                    token,
                    key.key,
                    algorithms=list(key.algorithms),
                    options=self._options,
                    audience=s.audience,
                    issuer=s.issuer,
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as exc:
                raise _refusal(exc) from None
            return self._identity(payload)
        raise Unauthenticated(BAD_SIGNATURE)

    def _identity(self, payload: dict[str, Any]) -> Identity:
        """Check the times of a token PyJWT accepted, and map its claims."""
        s = self.settings
        now = self._wall()
        exp = _number(payload, "exp")
        if exp is None:
            raise Unauthenticated(_MISSING["exp"])
        if now > exp + s.leeway_s:
            raise Unauthenticated("credentials expired")
        nbf = _number(payload, "nbf")
        if nbf is not None and now + s.leeway_s < nbf:
            raise Unauthenticated("invalid token: not valid yet ('nbf')")
        subject = payload.get("sub")
        if not isinstance(subject, str) or not subject:
            raise Unauthenticated(_MISSING["sub"])
        granted = [
            ROLE_NAMES[r.lower()]
            for r in _strings(_claim(payload, s.roles_claim))
            if r.lower() in ROLE_NAMES
        ]
        role = max(granted, default=Role.NONE)
        models: tuple[str, ...] = ("*",)
        if s.models_claim is not None:
            models = tuple(_strings(_claim(payload, s.models_claim)))
        tenant = None
        if s.tenant_claim is not None:
            value = _claim(payload, s.tenant_claim)
            tenant = value if isinstance(value, str) and value else None
        return Identity(
            id=f"jwt:{payload.get('iss')}#{subject}",
            name=subject,
            role=role,
            models=models,
            tenant=tenant,
            expires_at=exp + s.leeway_s,
        )
