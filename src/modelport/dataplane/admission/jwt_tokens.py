"""OIDC / JWT bearer tokens verified against an issuer's JWKS.

Verification is written out here over ``cryptography`` rather than trusted to
a token's own header: the algorithm must be one the key's *type* allows
(see jwks.py), the signature is checked before any claim is believed, and
``exp`` is required. ``nbf``, ``exp``, issuer and audience are checked with
a small leeway for clock skew.

Key rotation: keys are cached by ``kid``. A token naming a ``kid`` not in the
cache makes the set be fetched again, at most once per ``refetch_interval``
seconds (so a stream of made-up ``kid`` values cannot turn into a stream of
requests to the issuer); if the key is still unknown the token is refused.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from modelport.dataplane.admission.identity import ROLE_NAMES, Identity, Role
from modelport.dataplane.admission.jwks import VerifyKey, b64url_decode, parse_jwks
from modelport.errors import Unauthenticated

#: Largest JWKS document read, in bytes.
MAX_JWKS_BYTES = 1 << 20

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}


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


def jwks_fetcher(source: str) -> Callable[[], bytes]:
    """Read the key set from a file path or an http(s) URL, at most MAX_JWKS_BYTES."""
    if source.startswith(("https://", "http://")):

        def fetch_url() -> bytes:
            with urllib.request.urlopen(source, timeout=5) as reply:
                data: bytes = reply.read(MAX_JWKS_BYTES + 1)
            if len(data) > MAX_JWKS_BYTES:
                raise ValueError(f"{source}: key set larger than {MAX_JWKS_BYTES} bytes")
            return data

        return fetch_url
    path = Path(source)

    def fetch_file() -> bytes:
        data = path.read_bytes()
        if len(data) > MAX_JWKS_BYTES:
            raise ValueError(f"{source}: key set larger than {MAX_JWKS_BYTES} bytes")
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


def _check_signature(key: VerifyKey, alg: str, signature: bytes, signed: bytes) -> None:
    """Raise InvalidSignature (or ValueError) unless ``signature`` is ``alg`` over ``signed``."""
    public = key.key
    if alg == "EdDSA" and isinstance(public, ed25519.Ed25519PublicKey):
        public.verify(signature, signed)
        return
    digest = _HASHES[alg[2:]]()
    if alg.startswith("RS") and isinstance(public, rsa.RSAPublicKey):
        public.verify(signature, signed, padding.PKCS1v15(), digest)
    elif alg.startswith("PS") and isinstance(public, rsa.RSAPublicKey):
        pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=padding.PSS.DIGEST_LENGTH)
        public.verify(signature, signed, pss, digest)
    elif alg.startswith("ES") and isinstance(public, ec.EllipticCurvePublicKey):
        # JWS carries ECDSA as r || s, each the curve's size; cryptography wants DER.
        size = (public.curve.key_size + 7) // 8
        if len(signature) != 2 * size:
            raise InvalidSignature("ECDSA signature of the wrong length")
        r = int.from_bytes(signature[:size], "big")
        s = int.from_bytes(signature[size:], "big")
        public.verify(encode_dss_signature(r, s), signed, ec.ECDSA(digest))
    else:
        raise InvalidSignature(f"algorithm {alg} does not fit the key")


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

    def _candidates(self, kid: str | None, alg: str) -> list[VerifyKey]:
        if kid is None:
            return [k for k in self._keys if alg in k.algorithms]
        found = [k for k in self._keys if k.kid == kid]
        if not found and self._refresh():
            found = [k for k in self._keys if k.kid == kid]
        if not found:
            raise Unauthenticated("invalid token: signed by an unknown key")
        return found

    def verify(self, token: str) -> Identity:
        parts = token.split(".")
        if len(parts) != 3:
            raise Unauthenticated("malformed token: a JWT has three parts")
        try:
            header = json.loads(b64url_decode(parts[0]))
            payload = json.loads(b64url_decode(parts[1]))
            signature = b64url_decode(parts[2]) if parts[2] else b""
        except (ValueError, UnicodeDecodeError):
            raise Unauthenticated("malformed token: not base64url-encoded JSON") from None
        if not isinstance(header, dict) or not isinstance(payload, dict):
            raise Unauthenticated("malformed token: header and payload must be JSON objects")
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise Unauthenticated("invalid token: no signing algorithm")
        if "crit" in header:
            raise Unauthenticated("invalid token: critical header extensions are not supported")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated("invalid token: 'kid' must be a string")
        keys = self._candidates(kid, alg)
        usable = [k for k in keys if alg in k.algorithms]
        if not usable:
            raise Unauthenticated(f"invalid token: algorithm {alg[:20]!r} is not accepted")
        signed = f"{parts[0]}.{parts[1]}".encode("ascii")
        for key in usable:
            try:
                _check_signature(key, alg, signature, signed)
                break
            except (InvalidSignature, ValueError):
                continue
        else:
            raise Unauthenticated("invalid token: bad signature")
        return self._identity(payload)

    def _identity(self, payload: dict[str, Any]) -> Identity:
        """Check the claims of a token whose signature verified, and map them."""
        s = self.settings
        now = self._wall()
        exp = _number(payload, "exp")
        if exp is None:
            raise Unauthenticated("invalid token: no expiry ('exp')")
        if now > exp + s.leeway_s:
            raise Unauthenticated("credentials expired")
        nbf = _number(payload, "nbf")
        if nbf is not None and now + s.leeway_s < nbf:
            raise Unauthenticated("invalid token: not valid yet ('nbf')")
        issuer = payload.get("iss")
        if s.issuer is not None and issuer != s.issuer:
            raise Unauthenticated("invalid token: wrong issuer")
        if s.audience is not None:
            aud = payload.get("aud")
            if not (aud == s.audience or (isinstance(aud, list) and s.audience in aud)):
                raise Unauthenticated("invalid token: wrong audience")
        subject = payload.get("sub")
        if not isinstance(subject, str) or not subject:
            raise Unauthenticated("invalid token: no subject ('sub')")
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
            id=f"jwt:{issuer}#{subject}",
            name=subject,
            role=role,
            models=models,
            tenant=tenant,
            expires_at=exp + s.leeway_s,
        )
