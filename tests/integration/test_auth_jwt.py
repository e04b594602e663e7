"""JWT bearer tokens against the real server, with a JWKS file written by the test.

The attacks a token verifier must refuse, end to end over REST and gRPC:
``alg: none``, HS256 keyed with the issuer's public key, expired tokens,
another issuer's or audience's tokens, and a key the JWKS does not hold.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import queue
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import Server, start_server, stop_server
from tests.integration.models import add_sub_model

pytestmark = pytest.mark.integration

ISSUER = "https://idp.example"
AUDIENCE = "modelport"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
STRANGER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ROW = [1.0] * 16
BODY = {
    "inputs": [
        {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": ROW},
        {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": ROW},
    ]
}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    numbers = key.public_key().public_numbers()
    n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
    e = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
    return {"kty": "RSA", "kid": kid, "use": "sig", "n": b64(n), "e": b64(e)}


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "roles": ["invoker"],
        "exp": now + 300,
        "iat": now,
    }
    base.update(changes)
    return base


def token(payload: dict[str, Any], key: rsa.RSAPrivateKey = KEY, kid: str = "k1") -> str:
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid})


def unsigned(payload: dict[str, Any]) -> str:
    head = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "k1"}).encode())
    return f"{head}.{b64(json.dumps(payload).encode())}."


def hs256_with_public_key(payload: dict[str, Any]) -> str:
    public_pem = KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    body = b64(json.dumps(payload).encode())
    signature = hmac.new(public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    import onnx

    root = tmp_path_factory.mktemp("jwt")
    (root / "repo" / "add_sub" / "1").mkdir(parents=True)
    onnx.save(add_sub_model(), root / "repo" / "add_sub" / "1" / "model.onnx")
    jwks = root / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk(KEY, "k1")]}))
    srv = start_server(
        root / "repo",
        root / "server.log",
        "--jwt-jwks", str(jwks),
        "--jwt-issuer", ISSUER,
        "--jwt-audience", AUDIENCE,
        # Every bad token below comes from this one address: keep it from being blocked.
        "--auth-failure-burst", "1000",
    )  # fmt: skip
    yield srv
    stop_server(srv)


def infer(server: Server, bearer: str) -> httpx.Response:
    return httpx.post(
        f"{server.base}/v2/models/add_sub/infer",
        json=BODY,
        headers={"Authorization": f"Bearer {bearer}"},
    )


def test_a_valid_token_is_served(server: Server) -> None:
    reply = infer(server, token(claims()))
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: unsigned(claims()), id="alg-none"),
        pytest.param(lambda: hs256_with_public_key(claims()), id="hs256-public-key"),
        pytest.param(lambda: token(claims(exp=int(time.time()) - 3600)), id="expired"),
        pytest.param(lambda: token(claims(iss="https://evil.example")), id="other-issuer"),
        pytest.param(lambda: token(claims(aud="someone-else")), id="other-audience"),
        pytest.param(lambda: token(claims(), key=STRANGER), id="wrong-key"),
        pytest.param(lambda: token(claims(), key=STRANGER, kid="k9"), id="unknown-kid"),
        pytest.param(lambda: token(claims())[:-4] + "AAAA", id="tampered-signature"),
        pytest.param(lambda: "not.a.jwt", id="garbage"),
    ],
)
def test_bad_tokens_get_401_without_details(server: Server, make: Any) -> None:
    reply = infer(server, make())
    assert reply.status_code == 401
    assert reply.headers["www-authenticate"].startswith("Bearer")
    assert "Traceback" not in reply.text


def test_a_token_without_the_role_gets_403(server: Server) -> None:
    reply = infer(server, token(claims(roles=["viewer"])))
    assert reply.status_code == 403


def test_grpc_checks_tokens_the_same_way(server: Server) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        inputs = [grpcclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
        for tensor in inputs:
            tensor.set_data_from_numpy(np.ones((1, 16), dtype=np.float32))
        good = {"authorization": f"Bearer {token(claims())}"}
        result = client.infer("add_sub", inputs, headers=good)
        assert result.as_numpy("OUTPUT0") is not None
        for bad in (unsigned(claims()), hs256_with_public_key(claims())):
            with pytest.raises(InferenceServerException) as caught:
                client.infer("add_sub", inputs, headers={"authorization": f"Bearer {bad}"})
            assert "UNAUTHENTICATED" in str(caught.value.status())
    finally:
        client.close()
    assert server.alive()


def test_a_stream_ends_unauthenticated_once_its_token_expires(server: Server) -> None:
    # Expired 25 s ago: within the 30 s leeway for about five seconds more.
    short = token(claims(exp=int(time.time()) - 25))
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    inputs = [grpcclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(np.ones((1, 16), dtype=np.float32))
    client.start_stream(
        callback=lambda result, error: results.put((result, error)),
        headers={"authorization": f"Bearer {short}"},
    )
    try:
        client.async_stream_infer("add_sub", inputs, request_id="fresh")
        _, error = results.get(timeout=30)
        assert error is None, error
        deadline = time.monotonic() + 15
        while error is None:
            assert time.monotonic() < deadline, "the stream still answers an expired token"
            client.async_stream_infer("add_sub", inputs, request_id="later")
            try:
                _, error = results.get(timeout=0.2)
            except queue.Empty:
                continue
            if error is None:
                time.sleep(0.05)  # poll interval: one request per answer, not a flood
        assert error.status() == "StatusCode.UNAUTHENTICATED", error
    finally:
        client.stop_stream()
        client.close()
