"""JSON Web Key sets: public keys by ``kid``, and the algorithms each key allows.

Only asymmetric keys are accepted (RSA, EC P-256/384/521, Ed25519): a set
holding a symmetric (``oct``) key is refused, and a key's algorithms follow
from its type, never from the token. That is what makes ``alg: none`` and
"HS256 signed with the public key as the secret" fail: neither name is in
any key's list.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

#: EC curve name → (curve, the one JWS algorithm that uses it, coordinate bytes).
_CURVES: dict[str, tuple[ec.EllipticCurve, str, int]] = {
    "P-256": (ec.SECP256R1(), "ES256", 32),
    "P-384": (ec.SECP384R1(), "ES384", 48),
    "P-521": (ec.SECP521R1(), "ES512", 66),
}

RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})

#: Smallest RSA modulus accepted, in bits.
MIN_RSA_BITS = 2048


class JwksError(ValueError):
    """Raised when a key set cannot be parsed or holds a key modelport refuses."""


@dataclass(frozen=True, slots=True)
class VerifyKey:
    """One public key and the JWS algorithms it may verify."""

    kid: str | None
    key: PublicKey
    algorithms: frozenset[str]


def b64url_decode(text: str) -> bytes:
    """Base64url without padding, as JOSE writes it; ValueError when not that."""
    if not text or any(c not in _B64URL for c in text):
        raise ValueError("not base64url text")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _int(jwk: dict[str, Any], name: str, where: str) -> int:
    value = jwk.get(name)
    if not isinstance(value, str):
        raise JwksError(f"{where}: missing or non-text {name!r}")
    try:
        return int.from_bytes(b64url_decode(value), "big")
    except ValueError:
        raise JwksError(f"{where}: {name!r} is not base64url") from None


def parse_key(jwk: object, where: str) -> VerifyKey:
    """One JWK → a VerifyKey; JwksError names the key and the problem."""
    if not isinstance(jwk, dict):
        raise JwksError(f"{where}: a key must be a JSON object")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise JwksError(f"{where}: 'kid' must be a string")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise JwksError(f"{where}: 'use' is {use!r}, not 'sig'")
    kty = jwk.get("kty")
    key: PublicKey
    if kty == "RSA":
        try:
            key = rsa.RSAPublicNumbers(_int(jwk, "e", where), _int(jwk, "n", where)).public_key()
        except ValueError as exc:
            raise JwksError(f"{where}: invalid RSA key: {exc}") from None
        if key.key_size < MIN_RSA_BITS:
            raise JwksError(f"{where}: RSA key of {key.key_size} bits; at least {MIN_RSA_BITS}")
        algorithms = RSA_ALGORITHMS
    elif kty == "EC":
        curve = _CURVES.get(str(jwk.get("crv")))
        if curve is None:
            raise JwksError(f"{where}: unsupported EC curve {jwk.get('crv')!r}")
        try:
            numbers = ec.EllipticCurvePublicNumbers(
                _int(jwk, "x", where), _int(jwk, "y", where), curve[0]
            )
            key = numbers.public_key()
        except ValueError as exc:
            raise JwksError(f"{where}: invalid EC key: {exc}") from None
        algorithms = frozenset({curve[1]})
    elif kty == "OKP" and jwk.get("crv") == "Ed25519":
        x = jwk.get("x")
        try:
            key = ed25519.Ed25519PublicKey.from_public_bytes(b64url_decode(str(x)))
        except ValueError as exc:
            raise JwksError(f"{where}: invalid Ed25519 key: {exc}") from None
        algorithms = frozenset({"EdDSA"})
    else:
        raise JwksError(
            f"{where}: key type {kty!r} is not accepted; only RSA, EC and Ed25519 public keys"
        )
    alg = jwk.get("alg")
    if alg is not None:
        if alg not in algorithms:
            raise JwksError(f"{where}: 'alg' {alg!r} does not fit a {kty} key")
        algorithms = frozenset({alg})
    return VerifyKey(kid, key, algorithms)


def parse_jwks(text: str | bytes, source: str) -> list[VerifyKey]:
    """A JWKS document (``{"keys": [...]}``) → its keys; JwksError on any bad key."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise JwksError(f"{source}: not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise JwksError(f"{source}: expected an object with a 'keys' list")
    keys = [parse_key(k, f"{source}: keys[{i}]") for i, k in enumerate(doc["keys"])]
    if not keys:
        raise JwksError(f"{source}: the key set is empty")
    return keys
