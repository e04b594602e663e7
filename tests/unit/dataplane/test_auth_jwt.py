"""JWT bearer tokens against a JWKS built here: each accepted algorithm, every refusal case.

Most tokens are signed by hand (``sign``) so the tests can also make the ones
PyJWT would refuse to produce: ``alg: none`` and HS256 keyed with a public PEM.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from modelport.dataplane.admission.jwks import JwksError, parse_jwks
from modelport.dataplane.admission.jwt_tokens import (
    MAX_JWKS_BYTES,
    JwtSettings,
    JwtVerifier,
    jwks_fetcher,
)
from modelport.errors import Unauthenticated
from modelport.types import Role

NOW = 1_800_000_000.0
SETTINGS = JwtSettings(
    issuer="https://idp.example",
    audience="modelport",
    models_claim="models",
    tenant_claim="tenant",
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def uint(n: int, size: int | None = None) -> str:
    size = size or (n.bit_length() + 7) // 8
    return b64(n.to_bytes(size, "big"))


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_KEY_2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    pub = key.public_key().public_numbers()
    return {"kty": "RSA", "kid": kid, "n": uint(pub.n), "e": uint(pub.e)}


def ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    pub = key.public_key().public_numbers()
    return {"kty": "EC", "crv": "P-256", "kid": kid, "x": uint(pub.x, 32), "y": uint(pub.y, 32)}


def ed_jwk(key: ed25519.Ed25519PrivateKey, kid: str) -> dict[str, Any]:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(raw)}


def claims(**changes: Any) -> dict[str, Any]:
    base = {
        "iss": "https://idp.example",
        "aud": "modelport",
        "sub": "alice",
        "exp": NOW + 300,
        "nbf": NOW - 10,
        "roles": ["invoker"],
        "models": ["fraud-*"],
        "tenant": "acme",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def sign(header: dict[str, Any], payload: dict[str, Any], key: Any, scheme: str = "") -> str:
    """A compact JWS with ``header`` as given, signed the way ``scheme`` (else its alg) says."""
    signing = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    data = signing.encode()
    alg = scheme or header["alg"]
    if alg == "RS256":
        sig = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    elif alg == "ES256":
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    elif alg == "HS256":
        sig = hmac.new(key, data, hashlib.sha256).digest()
    else:
        sig = b""
    return f"{signing}.{b64(sig)}"


class Jwks:
    """A key set whose contents the test changes, counting fetches."""

    def __init__(self, *keys: dict[str, Any]) -> None:
        self.keys = list(keys)
        self.fetches = 0

    def __call__(self) -> bytes:
        self.fetches += 1
        return json.dumps({"keys": self.keys}).encode()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def verifier(
    jwks: Jwks, clock: Clock | None = None, settings: JwtSettings = SETTINGS
) -> JwtVerifier:
    return JwtVerifier(
        jwks, "test-jwks", settings, wall=lambda: NOW, clock=clock or Clock(), refetch_interval=10
    )


def test_rs256_and_es256() -> None:
    v = verifier(Jwks(rsa_jwk(RSA_KEY, "r1"), ec_jwk(EC_KEY, "e1")))
    identity = v.verify(sign({"alg": "RS256", "kid": "r1"}, claims(), RSA_KEY))
    assert (identity.name, identity.role, identity.models, identity.tenant) == (
        "alice",
        Role.INVOKER,
        ("fraud-*",),
        "acme",
    )
    assert identity.id == "jwt:https://idp.example#alice"
    assert v.verify(sign({"alg": "ES256", "kid": "e1"}, claims(), EC_KEY)).role is Role.INVOKER


def test_highest_known_role_wins_and_unknown_roles_grant_nothing() -> None:
    v = verifier(Jwks(rsa_jwk(RSA_KEY, "r1")))
    token = sign({"alg": "RS256", "kid": "r1"}, claims(roles=["viewer", "operator", "x"]), RSA_KEY)
    assert v.verify(token).role is Role.OPERATOR
    token = sign({"alg": "RS256", "kid": "r1"}, claims(roles=["superuser"]), RSA_KEY)
    assert v.verify(token).role is Role.NONE


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (claims(exp=NOW - 60), "expired"),
        (claims(exp=None), "no expiry"),
        (claims(nbf=NOW + 600), "not valid yet"),
        (claims(aud="someone-else"), "wrong audience"),
        (claims(iss="https://evil.example"), "wrong issuer"),
        (claims(sub=None), "no subject"),
        (claims(exp="tomorrow"), "not a number"),
        (claims(aud=None), "wrong audience"),
        (claims(aud=["someone-else", "another"]), "wrong audience"),
        (claims(iss=None), "wrong issuer"),
        (claims(sub=42), "no subject"),
        (claims(sub=""), "no subject"),
    ],
)
def test_claims_refused(payload: dict[str, Any], problem: str) -> None:
    v = verifier(Jwks(rsa_jwk(RSA_KEY, "r1")))
    with pytest.raises(Unauthenticated, match=problem):
        v.verify(sign({"alg": "RS256", "kid": "r1"}, payload, RSA_KEY))


def test_expiry_leeway() -> None:
    v = verifier(Jwks(rsa_jwk(RSA_KEY, "r1")))
    assert v.verify(sign({"alg": "RS256", "kid": "r1"}, claims(exp=NOW - 5), RSA_KEY))


def test_alg_none_is_refused() -> None:
    v = verifier(Jwks(rsa_jwk(RSA_KEY, "r1")))
    for alg in ("none", "None", "NONE"):
        with pytest.raises(Unauthenticated, match="not accepted"):
            v.verify(sign({"alg": alg, "kid": "r1"}, claims(), None))


def test_hs256_signed_with_the_public_key_is_refused() -> None:
    v = verifier(Jwks(rsa_jwk(RSA_KEY, "r1")))
    pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(Unauthenticated, match="not accepted"):
        v.verify(sign({"alg": "HS256", "kid": "r1"}, claims(), pem))


def test_tampered_payload_and_wrong_key() -> None:
    v = verifier(Jwks(rsa_jwk(RSA_KEY, "r1")))
    token = sign({"alg": "RS256", "kid": "r1"}, claims(), RSA_KEY)
    head, _, sig = token.split(".")
    forged = b64(json.dumps(claims(roles=["admin"])).encode())
    with pytest.raises(Unauthenticated, match="bad signature"):
        v.verify(f"{head}.{forged}.{sig}")
    with pytest.raises(Unauthenticated, match="bad signature"):
        v.verify(sign({"alg": "RS256", "kid": "r1"}, claims(), RSA_KEY_2))


@pytest.mark.parametrize("token", ["a.b", "a.b.c", "e30.e30.", "!!.e30.e30", "W10.e30.e30"])
def test_malformed(token: str) -> None:
    with pytest.raises(Unauthenticated):
        verifier(Jwks(rsa_jwk(RSA_KEY, "r1"))).verify(token)


def test_unknown_kid_refetches_once_then_refuses() -> None:
    jwks, clock = Jwks(rsa_jwk(RSA_KEY, "r1")), Clock()
    v = verifier(jwks, clock)
    token = sign({"alg": "RS256", "kid": "r9"}, claims(), RSA_KEY_2)
    clock.now = 60
    with pytest.raises(Unauthenticated, match="unknown key"):
        v.verify(token)
    assert jwks.fetches == 2
    # A second unknown kid within the interval does not fetch again.
    with pytest.raises(Unauthenticated, match="unknown key"):
        v.verify(token)
    assert jwks.fetches == 2


def test_rotation_picks_up_the_new_key() -> None:
    jwks, clock = Jwks(rsa_jwk(RSA_KEY, "r1")), Clock()
    v = verifier(jwks, clock)
    jwks.keys = [rsa_jwk(RSA_KEY_2, "r2")]
    clock.now = 60
    assert v.verify(sign({"alg": "RS256", "kid": "r2"}, claims(), RSA_KEY_2)).name == "alice"


def test_key_set_refusals(tmp_path: Path) -> None:
    with pytest.raises(JwksError, match="not accepted"):
        parse_jwks(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}), "x")
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(JwksError, match="at least 2048"):
        parse_jwks(json.dumps({"keys": [rsa_jwk(small, "s")]}), "x")
    with pytest.raises(JwksError, match="empty"):
        parse_jwks('{"keys": []}', "x")
    with pytest.raises(JwksError, match="does not fit"):
        parse_jwks(json.dumps({"keys": [{**rsa_jwk(RSA_KEY, "r"), "alg": "HS256"}]}), "x")
    path = tmp_path / "jwks.json"
    path.write_bytes(Jwks(ec_jwk(EC_KEY, "e1"))())
    assert parse_jwks(jwks_fetcher(str(path))(), str(path))[0].algorithms == {"ES256"}


def test_other_accepted_algorithms_and_tokens_without_kid() -> None:
    v = verifier(Jwks(rsa_jwk(RSA_KEY, "r1"), ec_jwk(EC_KEY, "e1"), ed_jwk(ED_KEY, "d1")))
    assert v.verify(jwt.encode(claims(), RSA_KEY, "PS384", {"kid": "r1"})).name == "alice"
    assert v.verify(jwt.encode(claims(), ED_KEY, "EdDSA", {"kid": "d1"})).name == "alice"
    # Without a kid every key whose type allows the token's algorithm is tried.
    assert v.verify(jwt.encode(claims(), EC_KEY, "ES256")).name == "alice"
    assert v.verify(jwt.encode(claims(), RSA_KEY, "RS512")).name == "alice"


def test_audience_list_and_no_configured_audience() -> None:
    v = verifier(Jwks(rsa_jwk(RSA_KEY, "r1")))
    token = sign({"alg": "RS256", "kid": "r1"}, claims(aud=["other", "modelport"]), RSA_KEY)
    assert v.verify(token).name == "alice"
    open_audience = JwtSettings(issuer=None, audience=None)
    v = verifier(Jwks(rsa_jwk(RSA_KEY, "r1")), settings=open_audience)
    identity = v.verify(sign({"alg": "RS256", "kid": "r1"}, claims(iss="anyone"), RSA_KEY))
    assert (identity.id, identity.models, identity.tenant) == ("jwt:anyone#alice", ("*",), None)


def test_algorithm_of_another_key_type_is_refused() -> None:
    v = verifier(Jwks(rsa_jwk(RSA_KEY, "r1"), ec_jwk(EC_KEY, "e1")))
    with pytest.raises(Unauthenticated, match="not accepted"):
        v.verify(sign({"alg": "ES256", "kid": "r1"}, claims(), EC_KEY))
    # An RS256 signature relabelled PS256 is checked as PS256, and fails.
    _, payload, sig = sign({"alg": "RS256", "kid": "r1"}, claims(), RSA_KEY).split(".")
    relabelled = b64(json.dumps({"alg": "PS256", "kid": "r1"}).encode())
    with pytest.raises(Unauthenticated, match="bad signature"):
        v.verify(f"{relabelled}.{payload}.{sig}")


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "RS256", "kid": 7},
        {"alg": "RS256", "kid": "r1", "crit": ["exp"]},
        {"alg": ["RS256"], "kid": "r1"},
    ],
)
def test_bad_headers_are_refused(header: dict[str, Any]) -> None:
    v = verifier(Jwks(rsa_jwk(RSA_KEY, "r1")))
    with pytest.raises(Unauthenticated, match="invalid token"):
        v.verify(sign(header, claims(), RSA_KEY, scheme="RS256"))


def test_refusals_use_our_messages_not_the_libraries() -> None:
    v = verifier(Jwks(rsa_jwk(RSA_KEY, "r1")))
    with pytest.raises(Unauthenticated) as info:
        v.verify("!!.e30.e30")
    assert info.value.message == "malformed token: not a JWS of base64url-encoded JSON"


def test_unknown_kid_fetches_again_once_the_interval_has_passed() -> None:
    jwks, clock = Jwks(rsa_jwk(RSA_KEY, "r1")), Clock()
    v = verifier(jwks, clock)
    token = sign({"alg": "RS256", "kid": "r2"}, claims(), RSA_KEY_2)
    clock.now = 5
    with pytest.raises(Unauthenticated, match="unknown key"):
        v.verify(token)
    assert jwks.fetches == 1
    jwks.keys.append(rsa_jwk(RSA_KEY_2, "r2"))
    clock.now = 11
    assert v.verify(token).name == "alice"
    assert jwks.fetches == 2


def test_a_failed_refetch_keeps_the_keys_already_known() -> None:
    jwks, clock = Jwks(rsa_jwk(RSA_KEY, "r1")), Clock()
    v = verifier(jwks, clock)
    jwks.keys = [{"kty": "oct", "k": "c2VjcmV0"}]
    clock.now = 60
    with pytest.raises(Unauthenticated, match="unknown key"):
        v.verify(sign({"alg": "RS256", "kid": "r9"}, claims(), RSA_KEY))
    assert jwks.fetches == 2
    assert v.verify(sign({"alg": "RS256", "kid": "r1"}, claims(), RSA_KEY)).name == "alice"


@pytest.mark.parametrize(
    ("jwk", "problem"),
    [
        ({**rsa_jwk(RSA_KEY, "r"), "d": uint(RSA_KEY.private_numbers().d)}, "private key"),
        ({**rsa_jwk(RSA_KEY, "r"), "use": "enc"}, "not 'sig'"),
        ({**rsa_jwk(RSA_KEY, "r"), "alg": ["RS256"]}, "does not fit"),
        ({**ec_jwk(EC_KEY, "e"), "alg": "ES384"}, "does not fit"),
        ({**ec_jwk(EC_KEY, "e"), "crv": "secp256k1"}, "unsupported EC curve"),
        ({**ec_jwk(EC_KEY, "e"), "x": "AAAA"}, "invalid EC key"),
        ({"kty": "OKP", "crv": "Ed448", "x": "AAAA"}, "not accepted"),
        ({**rsa_jwk(RSA_KEY, "r"), "kid": 3}, "'kid' must be a string"),
        ({"kty": "RSA", "kid": "r"}, "invalid RSA key"),
        ("RSA", "JSON object"),
    ],
)
def test_bad_keys_refuse_the_whole_set(jwk: object, problem: str) -> None:
    doc = json.dumps({"keys": [rsa_jwk(RSA_KEY_2, "good"), jwk]})
    with pytest.raises(JwksError, match=problem):
        parse_jwks(doc, "x")


@pytest.mark.parametrize("doc", ["not json", "[]", '{"keys": {}}'])
def test_bad_key_set_documents(doc: str) -> None:
    with pytest.raises(JwksError, match="x: "):
        parse_jwks(doc, "x")


def test_key_set_file_larger_than_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(b" " * (MAX_JWKS_BYTES + 1))
    with pytest.raises(ValueError, match="larger than"):
        jwks_fetcher(str(path))()


class _JwksHandler(BaseHTTPRequestHandler):
    bodies: dict[str, bytes] = {}

    def do_GET(self) -> None:
        body = self.bodies.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("content-length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def jwks_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _JwksHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_key_set_from_a_url(jwks_server: str) -> None:
    _JwksHandler.bodies = {
        "/jwks": Jwks(rsa_jwk(RSA_KEY, "r1"))(),
        "/huge": b" " * (MAX_JWKS_BYTES + 1),
    }
    url = f"{jwks_server}/jwks"
    v = JwtVerifier(jwks_fetcher(url), url, SETTINGS, wall=lambda: NOW)
    assert v.verify(sign({"alg": "RS256", "kid": "r1"}, claims(), RSA_KEY)).name == "alice"
    with pytest.raises(OSError, match="HTTP 404"):
        jwks_fetcher(f"{jwks_server}/missing")()
    with pytest.raises(ValueError, match="larger than"):
        jwks_fetcher(f"{jwks_server}/huge")()
