"""JSON Web Key sets: public keys by ``kid``, and the algorithms each key allows.

PyJWT turns each JWK into a key object; this module decides which keys are
acceptable at all. Only asymmetric public keys are (RSA of at least 2048
bits, EC P-256/384/521, Ed25519): a set holding a symmetric (``oct``) key,
another curve, or private key material is refused as a whole, so a bad set
stops the server at start instead of silently losing a key.

A key's algorithms follow from its type (and the JWK's own ``alg``, which may
only narrow them), never from a token. That is what makes ``alg: none`` and
"HS256 signed with the public key as the secret" fail: neither name is in any
key's list, and the list is what PyJWT is told to allow.

PyJWT's own ``PyJWKSet`` is not used for the set: it skips keys it cannot use
without saying so, and accepts ``oct`` keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})

#: EC curve name → the one JWS algorithm that uses it.
_EC_ALGORITHMS: dict[str, str] = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}

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


def _type_algorithms(jwk: dict[str, object], where: str) -> frozenset[str]:
    """The algorithms a key's type allows; JwksError for a type modelport refuses."""
    kty = jwk.get("kty")
    if kty == "RSA":
        return RSA_ALGORITHMS
    if kty == "EC":
        alg = _EC_ALGORITHMS.get(str(jwk.get("crv")))
        if alg is None:
            raise JwksError(f"{where}: unsupported EC curve {jwk.get('crv')!r}")
        return frozenset({alg})
    if kty == "OKP" and jwk.get("crv") == "Ed25519":
        return frozenset({"EdDSA"})
    raise JwksError(
        f"{where}: key type {kty!r} is not accepted; only RSA, EC and Ed25519 public keys"
    )


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
    algorithms = _type_algorithms(jwk, where)
    kty = jwk["kty"]
    alg = jwk.get("alg")
    if alg is not None:
        if not isinstance(alg, str) or alg not in algorithms:
            raise JwksError(f"{where}: 'alg' {alg!r} does not fit a {kty} key")
        algorithms = frozenset({alg})
    try:
        # Every algorithm of one key type reads the JWK the same way, so any
        # member of the set builds the key; naming it keeps PyJWT from guessing.
        key: object = jwt.PyJWK(jwk, algorithm=min(algorithms)).key
    except jwt.PyJWTError as exc:
        raise JwksError(f"{where}: invalid {kty} key: {exc}") from None
    if not isinstance(key, PublicKey):
        raise JwksError(
            f"{where}: holds private key material; a key set must publish public keys only"
        )
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise JwksError(f"{where}: RSA key of {key.key_size} bits; at least {MIN_RSA_BITS}")
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
