"""Bad input over REST: every refusal is a 4xx ``{"error": "..."}`` and the server serves on.

Covers Open Inference Protocol v2 JSON, Triton's binary tensor extension, the
model-repository extension, KServe v1 and the HTTP framing itself (sizes,
Content-Length, Content-Encoding, paths). Each test ends by checking that the
server process is alive and that a good ``add_sub`` inference still returns
correct values. Requests that must not be normalised by a client (path
tricks, lying or oversized Content-Length) go over raw sockets.
"""

from __future__ import annotations

import gzip
import json
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.integration.conftest import Server

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
BODY_LIMIT = 64 * MiB
MAX_ELEMENTS = 1 << 28
FAST_S = 2.0
RSS_SLACK_KB = 50 * 1024

A = [float(i) * 0.5 for i in range(16)]
B = [float(15 - i) for i in range(16)]


# ------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    # No keep-alive: a refused request may close its connection, and each
    # request must be judged on its own.
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=server.base, timeout=10, limits=limits) as c:
        yield c


def fp32(name: str, data: Any, shape: list[int] | None = None) -> dict[str, Any]:
    return {"name": name, "datatype": "FP32", "shape": shape or [1, 16], "data": data}


def good_body() -> dict[str, Any]:
    return {"inputs": [fp32("INPUT0", A), fp32("INPUT1", B)]}


def assert_error(r: httpx.Response, status: int | tuple[int, ...], *fragments: str) -> str:
    """The response is ``status`` with exactly ``{"error": "<message>"}`` naming the fragments."""
    wanted = (status,) if isinstance(status, int) else status
    assert r.status_code in wanted, (r.status_code, r.text[:500])
    assert r.status_code != 422, r.text
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body, dict), body
    assert set(body) == {"error"}, body
    message = body["error"]
    assert isinstance(message, str), body
    assert message.strip(), body
    for fragment in fragments:
        assert fragment.lower() in message.lower(), (fragment, message)
    return message


def assert_serving(server: Server) -> None:
    """The process is alive and add_sub still computes correct values."""
    assert server.alive(), server.log()[-4000:]
    r = httpx.post(f"{server.base}/v2/models/add_sub/infer", json=good_body(), timeout=10)
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert outputs["OUTPUT0"]["shape"] == [1, 16]
    assert outputs["OUTPUT0"]["data"] == [a + b for a, b in zip(A, B, strict=True)]
    assert outputs["OUTPUT1"]["data"] == [a - b for a, b in zip(A, B, strict=True)]


def rss_kb(server: Server) -> int:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc status")


def binary_request(
    inputs: list[dict[str, Any]],
    blobs: list[bytes],
    *,
    extra: bytes = b"",
    header_length: str | bytes | None = None,
) -> tuple[bytes, dict[str, str | bytes]]:
    header = json.dumps({"inputs": inputs}).encode()
    hlen: str | bytes = str(len(header)) if header_length is None else header_length
    return header + b"".join(blobs) + extra, {"Inference-Header-Content-Length": hlen}


def binary_fp32(name: str, size: int = 64, shape: list[int] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "datatype": "FP32",
        "shape": shape or [1, 16],
        "parameters": {"binary_data_size": size},
    }


ROW = np.arange(16, dtype=np.float32).tobytes()


def bytes_elements(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _read_response(sock: socket.socket) -> RawResponse | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            if not data:
                return None
            raise AssertionError(f"connection closed mid-headers: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        want = int(headers["content-length"])
        while len(rest) < want:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        rest = rest[:want]
    else:
        while chunk := sock.recv(65536):
            rest += chunk
    return RawResponse(status, headers, rest)


def raw_request(
    server: Server,
    method: str,
    target: bytes,
    body: bytes = b"",
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> RawResponse | None:
    """One request on a fresh socket, the target sent byte for byte."""
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1"]
    hdrs = {"Content-Length": str(len(body)), "Connection": "close", **(headers or {})}
    lines += [f"{k}: {v}".encode("latin-1") for k, v in hdrs.items()]
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=timeout) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        return _read_response(sock)


def assert_raw_error(r: RawResponse | None, low: int, high: int, *fragments: str) -> str:
    assert r is not None, "the server closed the connection without answering"
    assert low <= r.status <= high, (r.status, r.body[:500])
    assert r.status != 422, r.body
    assert r.headers.get("content-type", "").startswith("application/json"), (r.headers, r.body)
    body = r.json()
    assert isinstance(body, dict), body
    assert set(body) == {"error"}, body
    assert isinstance(body["error"], str), body
    assert body["error"].strip(), body
    for fragment in fragments:
        assert fragment.lower() in body["error"].lower(), (fragment, body)
    return str(body["error"])


# ------------------------------------------------------ the JSON body itself


def _good_json() -> bytes:
    return json.dumps(good_body()).encode()


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        pytest.param(b'{"inputs": [', ("malformed",), id="truncated-json"),
        pytest.param(b"{inputs: []}", ("malformed",), id="unquoted-key"),
        pytest.param(b"", ("json",), id="empty-body"),
        pytest.param(b"[1, 2]", ("object",), id="array-not-object"),
        pytest.param(b'"inputs"', ("object",), id="string-not-object"),
        pytest.param(b"null", ("object",), id="null-not-object"),
        pytest.param(b"42", ("object",), id="number-not-object"),
        pytest.param(b"{}", ("inputs",), id="missing-inputs"),
        pytest.param(b'{"id": "x", "outputs": []}', ("inputs",), id="missing-inputs-with-others"),
        pytest.param(_good_json()[:-1] + b', "foo": 1}', ("foo",), id="unknown-top-level-field"),
        pytest.param(
            b'{"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", '
            b'"data": [1], "colour": "red"}]}',
            ("colour",),
            id="unknown-input-field",
        ),
        pytest.param(
            json.dumps({"inputs": [{**fp32("INPUT0", A), "shape": "1,16"}]}).encode(),
            ("shape",),
            id="shape-as-string",
        ),
        pytest.param(
            json.dumps({"inputs": [{**fp32("INPUT0", A), "shape": [1.5, 16]}]}).encode(),
            ("shape",),
            id="shape-float-dims",
        ),
        pytest.param(
            json.dumps({"inputs": [{**fp32("INPUT0", A), "shape": [True, 16]}]}).encode(),
            ("shape",),
            id="shape-bool-dims",
        ),
        pytest.param(
            json.dumps({"inputs": [{**fp32("INPUT0", A), "datatype": 32}]}).encode(),
            ("datatype",),
            id="datatype-as-number",
        ),
        pytest.param(
            json.dumps({"inputs": [{**fp32("INPUT0", A), "name": 0}]}).encode(),
            ("name",),
            id="name-as-number",
        ),
        pytest.param(
            json.dumps({"inputs": {"INPUT0": A}}).encode(), ("inputs",), id="inputs-as-object"
        ),
        pytest.param(
            json.dumps({"inputs": [{"shape": [1, 16], "datatype": "FP32", "data": A}]}).encode(),
            ("name",),
            id="input-without-name",
        ),
        pytest.param(json.dumps({**good_body(), "id": 7}).encode(), ("id",), id="id-as-number"),
        pytest.param(
            json.dumps({**good_body(), "parameters": {"x": {"nested": 1}}}).encode(),
            ("parameters",),
            id="parameter-value-object",
        ),
        pytest.param(
            json.dumps({**good_body(), "outputs": "OUTPUT0"}).encode(),
            ("outputs",),
            id="outputs-as-string",
        ),
        pytest.param(b'{"inputs": [{"name" "INPUT0"}]}', ("malformed",), id="missing-colon"),
    ],
)
def test_malformed_request_body(
    server: Server, client: httpx.Client, body: bytes, fragments: tuple[str, ...]
) -> None:
    r = client.post(
        "/v2/models/add_sub/infer", content=body, headers={"Content-Type": "application/json"}
    )
    assert_error(r, 400, *fragments)
    assert_serving(server)


_NESTED = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param(
            "/v2/models/add_sub/infer",
            b'{"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": '
            + _NESTED
            + b"}]}",
            id="v2-infer",
        ),
        pytest.param(
            "/v1/models/breast_cancer:predict",
            b'{"instances": ' + _NESTED + b"}",
            id="v1-predict",
        ),
        pytest.param("/v2/repository/index", b'{"ready": ' + _NESTED + b"}", id="repository-index"),
        pytest.param(  # the load's "config" parameter is JSON inside a JSON string
            "/v2/repository/models/add_sub/load",
            json.dumps({"parameters": {"config": _NESTED.decode()}}).encode(),
            id="repository-load-config",
        ),
    ],
)
def test_deeply_nested_json_is_a_400(
    server: Server, client: httpx.Client, path: str, body: bytes
) -> None:
    """100 000 nested brackets: a bad request, not a RecursionError turned into a 500."""
    r = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert_error(r, 400)
    assert_serving(server)


NON_UTF8 = [
    pytest.param(
        "/v2/models/identity_bytes/infer",
        b'{"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "BYTES", '
        b'"data": ["\xff\xfe", "a", "b", "c"]}]}',
        id="v2-infer-in-string-data",
    ),
    pytest.param(
        "/v2/models/add_sub/infer",
        b'{"inputs": [{"name": "INP\xc3\x28", "shape": [1, 16], "datatype": "FP32", "data": [0]}]}',
        id="v2-infer-in-input-name",
    ),
    pytest.param(
        "/v2/models/add_sub/infer", b'{"inputs": [], "id": "\x80\x81"}', id="v2-infer-in-id"
    ),
    pytest.param(
        "/v1/models/breast_cancer:predict",
        b'{"instances": [["\xe9t\xe9"]]}',
        id="v1-predict",
    ),
    pytest.param("/v2/repository/index", b'{"\xff": true}', id="repository-index"),
    pytest.param(
        "/v2/repository/models/add_sub/load",
        b'{"parameters": {"config": "\xfe"}}',
        id="repository-load",
    ),
]


@pytest.mark.parametrize(("path", "body"), NON_UTF8)
def test_non_utf8_json_is_a_400(
    server: Server, client: httpx.Client, path: str, body: bytes
) -> None:
    r = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert_error(r, 400)
    assert_serving(server)


# ------------------------------------------------------ models and versions


@pytest.mark.parametrize(
    ("method", "path", "fragment"),
    [
        ("POST", "/v2/models/no_such_model/infer", "no_such_model"),
        ("POST", "/v2/models/no_such_model/versions/1/infer", "no_such_model"),
        ("GET", "/v2/models/no_such_model", "no_such_model"),
        ("GET", "/v2/models/no_such_model/ready", "no_such_model"),
        ("GET", "/v2/models/no_such_model/config", "no_such_model"),
        ("GET", "/v2/models/no_such_model/stats", "no_such_model"),
        ("POST", "/v1/models/no_such_model:predict", "no_such_model"),
        ("POST", "/v2/repository/models/no_such_model/load", "no_such_model"),
        ("POST", "/v2/repository/models/no_such_model/unload", "no_such_model"),
        ("POST", "/v2/models/add_sub/versions/3/infer", "3"),
        ("POST", "/v2/models/add_sub/versions/0/infer", "0"),
        ("POST", "/v2/models/add_sub/versions/abc/infer", "abc"),
        ("POST", "/v2/models/add_sub/versions/-1/infer", "-1"),
        ("GET", "/v2/models/add_sub/versions/3", "3"),
        ("GET", "/v2/models/add_sub/versions/3/ready", "3"),
    ],
)
def test_unknown_model_or_version_is_404(
    server: Server, client: httpx.Client, method: str, path: str, fragment: str
) -> None:
    r = client.request(method, path, json=good_body() if method == "POST" else None)
    assert_error(r, 404, fragment)
    assert_serving(server)


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ("broken", "onnx"),
        ("bad_config", "batch_key"),
        ("two_configs", "config.pbtxt"),
    ],
)
def test_model_that_failed_to_load_says_why(
    server: Server, client: httpx.Client, model: str, reason: str
) -> None:
    for path in (f"/v2/models/{model}/infer", f"/v2/models/{model}/versions/1/infer"):
        r = client.post(path, json=good_body())
        assert r.status_code not in (404, 500), r.text
        assert_error(r, tuple(range(400, 600)), model, reason)
    r = client.get(f"/v2/models/{model}/ready")
    assert_error(r, tuple(range(400, 600)), model, reason)
    assert_serving(server)


def test_reloading_a_broken_model_says_why(server: Server, client: httpx.Client) -> None:
    r = client.post("/v2/repository/models/broken/load")
    assert_error(r, tuple(range(400, 500)), "broken", "onnx")
    assert_serving(server)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/nope"),
        ("GET", "/v2/nope"),
        ("GET", "/v3/models/add_sub"),
        ("POST", "/v2/models/add_sub/infer/extra"),
        ("POST", "/v2/models/add_sub/versions/1/2/infer"),
        ("POST", "/v2/models//infer"),
        ("GET", "/v1/models/add_sub:explain"),
        ("POST", "/v2/repository/models/add_sub/reload"),
    ],
)
def test_unknown_route_is_404_with_error_body(
    server: Server, client: httpx.Client, method: str, path: str
) -> None:
    r = client.request(method, path)
    assert_error(r, 404)
    assert_serving(server)


def test_unknown_route_on_metrics_port_is_404_with_error_body(server: Server) -> None:
    r = httpx.get(f"http://127.0.0.1:{server.metrics_port}/nope", timeout=10)
    assert_error(r, 404)
    assert_serving(server)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/models/add_sub/infer"),
        ("PUT", "/v2/models/add_sub/infer"),
        ("DELETE", "/v2/health/live"),
        ("POST", "/v2/health/ready"),
        ("PATCH", "/v2/models/add_sub"),
        ("GET", "/v2/repository/index"),
        ("GET", "/v2/repository/models/add_sub/load"),
        ("POST", "/v2/models/add_sub/config"),
    ],
)
def test_wrong_method_is_405_with_error_body(
    server: Server, client: httpx.Client, method: str, path: str
) -> None:
    r = client.request(method, path)
    assert_error(r, 405, method)
    assert_serving(server)


# -------------------------------------------- inputs against the signature


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        pytest.param({"inputs": [fp32("INPUT0", A)]}, ("missing", "INPUT1"), id="missing-input"),
        pytest.param({"inputs": []}, ("missing", "INPUT0"), id="no-inputs"),
        pytest.param(
            {"inputs": [fp32("INPUT0", A), fp32("INPUT0", B), fp32("INPUT1", B)]},
            ("INPUT0", "more than once"),
            id="duplicate-input",
        ),
        pytest.param(
            {"inputs": [fp32("INPUT0", A), fp32("INPUT1", B), fp32("INPUT9", B)]},
            ("unknown input", "INPUT9"),
            id="unknown-input",
        ),
        pytest.param(
            {**good_body(), "outputs": [{"name": "OUTPUT9"}]},
            ("unknown requested output", "OUTPUT9"),
            id="unknown-output",
        ),
        pytest.param(
            {**good_body(), "outputs": [{"name": "OUTPUT0"}, {"name": "OUTPUT0"}]},
            ("OUTPUT0", "more than once"),
            id="duplicate-output",
        ),
        pytest.param(
            {"inputs": [fp32("INPUT0", A), fp32("INPUT1", B * 2, [2, 16])]},
            ("batch size", "1", "2"),
            id="batch-disagreement",
        ),
        pytest.param(
            {"inputs": [fp32("INPUT0", A * 65, [65, 16]), fp32("INPUT1", B * 65, [65, 16])]},
            ("65", "max_batch_size", "64"),
            id="batch-over-max",
        ),
        pytest.param(
            {"inputs": [fp32("INPUT0", A, [16]), fp32("INPUT1", B, [16])]},
            ("INPUT0", "shape"),
            id="rank-too-small",
        ),
        pytest.param(
            {"inputs": [fp32("INPUT0", A, [1, 1, 16]), fp32("INPUT1", B, [1, 1, 16])]},
            ("INPUT0", "shape"),
            id="rank-too-large",
        ),
        pytest.param(
            {"inputs": [fp32("INPUT0", A, [2, 8]), fp32("INPUT1", B, [2, 8])]},
            ("INPUT0", "shape"),
            id="wrong-fixed-dim",
        ),
        pytest.param(
            {**good_body(), "outputs": [{"name": "OUTPUT0", "parameters": {"classification": 2}}]},
            ("classification",),
            id="classification-extension",
        ),
    ],
)
def test_inputs_that_disagree_with_the_signature(
    server: Server, client: httpx.Client, body: dict[str, Any], fragments: tuple[str, ...]
) -> None:
    r = client.post("/v2/models/add_sub/infer", json=body)
    assert_error(r, 400, *fragments)
    assert_serving(server)


# -------------------------------------------------------- datatypes and data


def _one(datatype: str, data: Any, shape: list[int] | None = None) -> dict[str, Any]:
    return {
        "inputs": [{"name": "INPUT0", "datatype": datatype, "shape": shape or [1, 4], "data": data}]
    }


@pytest.mark.parametrize(
    ("model", "body", "fragments"),
    [
        pytest.param(
            "add_sub",
            {
                "inputs": [
                    {**fp32("INPUT0", list(range(16))), "datatype": "INT32"},
                    fp32("INPUT1", B),
                ]
            },
            ("INPUT0", "INT32", "FP32"),
            id="int32-for-fp32-input",
        ),
        pytest.param(
            "add_sub",
            {"inputs": [{**fp32("INPUT0", A), "datatype": "FP128"}, fp32("INPUT1", B)]},
            ("FP128",),
            id="unknown-datatype",
        ),
        pytest.param(
            "add_sub",
            {"inputs": [{**fp32("INPUT0", A), "datatype": "fp32"}, fp32("INPUT1", B)]},
            ("fp32",),
            id="lowercase-datatype",
        ),
        pytest.param(
            "add_sub",
            {"inputs": [fp32("INPUT0", A[:15]), fp32("INPUT1", B)]},
            ("INPUT0", "16", "15"),
            id="data-too-short",
        ),
        pytest.param(
            "add_sub",
            {"inputs": [fp32("INPUT0", [*A, 1.0]), fp32("INPUT1", B)]},
            ("INPUT0", "16", "17"),
            id="data-too-long",
        ),
        pytest.param(
            "add_sub",
            {"inputs": [fp32("INPUT0", [[1.0] * 16, [1.0] * 16]), fp32("INPUT1", B)]},
            ("INPUT0", "16", "32"),
            id="nested-data-too-long",
        ),
        pytest.param(
            "add_sub",
            {"inputs": [fp32("INPUT0", ["1.0"] * 16), fp32("INPUT1", B)]},
            ("INPUT0",),
            id="strings-in-fp32",
        ),
        pytest.param(
            "add_sub",
            {"inputs": [fp32("INPUT0", [*A[:15], "x"]), fp32("INPUT1", B)]},
            ("INPUT0",),
            id="one-string-in-fp32",
        ),
        pytest.param(
            "add_sub",
            {"inputs": [fp32("INPUT0", [*A[:15], True]), fp32("INPUT1", B)]},
            ("INPUT0",),
            id="boolean-in-fp32",
        ),
        pytest.param(
            "add_sub",
            {"inputs": [fp32("INPUT0", [*A[:15], None]), fp32("INPUT1", B)]},
            ("INPUT0",),
            id="null-in-fp32",
        ),
        pytest.param(
            "add_sub",
            {"inputs": [fp32("INPUT0", [*A[:15], {"v": 1}]), fp32("INPUT1", B)]},
            ("INPUT0",),
            id="object-in-fp32",
        ),
        pytest.param(
            "add_sub",
            {"inputs": [fp32("INPUT0", None), fp32("INPUT1", B)]},
            ("INPUT0",),
            id="null-data",
        ),
        pytest.param(
            "add_sub",
            {
                "inputs": [
                    {k: v for k, v in fp32("INPUT0", A).items() if k != "data"},
                    fp32("INPUT1", B),
                ]
            },
            ("INPUT0", "no data"),
            id="no-data",
        ),
        pytest.param(
            "add_sub",
            {"inputs": [fp32("INPUT0", [[1.0] * 8, [1.0] * 7]), fp32("INPUT1", B)]},
            ("INPUT0",),
            id="ragged-rows",
        ),
        pytest.param(
            "add_sub",
            {"inputs": [fp32("INPUT0", [[1.0] * 8, [*([1.0] * 7), [1.0]]]), fp32("INPUT1", B)]},
            ("INPUT0",),
            id="ragged-depth",
        ),
        pytest.param(
            "add_sub",
            {"inputs": [fp32("INPUT0", [1.0, [1.0] * 15]), fp32("INPUT1", B)]},
            ("INPUT0",),
            id="scalar-then-list",
        ),
        pytest.param(
            "identity_int32", _one("INT32", [1.5, 2.0, 3.0, 4.0]), ("INT32",), id="floats-in-int32"
        ),
        pytest.param(
            "identity_int32", _one("INT32", [1, 2, 3, 4.5]), ("INT32",), id="one-float-in-int32"
        ),
        pytest.param(
            "identity_int32", _one("INT32", [1, 2, 3, True]), ("INT32",), id="boolean-in-int32"
        ),
        pytest.param(
            "identity_int32",
            _one("INT32", [1, 2, 3, 2**31]),
            ("INT32", "range"),
            id="int32-overflow",
        ),
        pytest.param(
            "identity_int64",
            _one("INT64", [1, 2, 3, 2**70]),
            ("INPUT0",),
            id="int64-overflow",
        ),
        pytest.param(
            "identity_uint8", _one("UINT8", [1, 2, 3, 300]), ("UINT8", "range"), id="300-uint8"
        ),
        pytest.param(
            "identity_uint8", _one("UINT8", [1, 2, 3, -1]), ("UINT8", "range"), id="-1-uint8"
        ),
        pytest.param(
            "identity_int8", _one("INT8", [1, 2, 3, -129]), ("INT8", "range"), id="-129-int8"
        ),
        pytest.param("identity_bool", _one("BOOL", [1, 0, 1, 0]), ("BOOL",), id="ints-in-bool"),
        pytest.param("identity_bool", _one("BOOL", ["true"] * 4), ("BOOL",), id="strings-in-bool"),
        pytest.param(
            "identity_bytes", _one("BYTES", [1, 2, 3, 4]), ("BYTES",), id="numbers-in-bytes"
        ),
        pytest.param(
            "identity_bytes", _one("BYTES", ["a", "b", "c"]), ("4", "3"), id="bytes-too-few"
        ),
        pytest.param(
            "identity_bytes",
            _one("BYTES", ["a", "b", "c", {"d": 1}]),
            ("BYTES",),
            id="object-in-bytes",
        ),
    ],
)
def test_bad_datatype_or_data(
    server: Server,
    client: httpx.Client,
    model: str,
    body: dict[str, Any],
    fragments: tuple[str, ...],
) -> None:
    r = client.post(f"/v2/models/{model}/infer", json=body)
    assert_error(r, 400, *fragments)
    assert_serving(server)


# ------------------------------------------------------------- absurd shapes

ABSURD_SHAPES = [[1_000_000_000_000], [100_000, 100_000, 100_000], [2**62, 2**62], [2**63 - 1]]


def _absurd_requests(shape: list[int]) -> list[tuple[str, str, bytes, dict[str, str | bytes]]]:
    json_body = json.dumps({"inputs": [fp32("INPUT0", [1.0], shape), fp32("INPUT1", B)]}).encode()
    bin_body, bin_headers = binary_request(
        [binary_fp32("INPUT0", 4, shape), binary_fp32("INPUT1", 64)], [b"\0" * 4, ROW]
    )
    bytes_body, bytes_headers = binary_request(
        [
            {
                "name": "INPUT0",
                "datatype": "BYTES",
                "shape": shape,
                "parameters": {"binary_data_size": 5},
            }
        ],
        [bytes_elements(b"a")],
    )
    json_bytes = json.dumps(_one("BYTES", ["a"], shape)).encode()
    return [
        ("json", "/v2/models/add_sub/infer", json_body, {"Content-Type": "application/json"}),
        ("binary", "/v2/models/add_sub/infer", bin_body, bin_headers),
        ("json-bytes", "/v2/models/identity_bytes/infer", json_bytes, {}),
        ("binary-bytes", "/v2/models/identity_bytes/infer", bytes_body, bytes_headers),
    ]


@pytest.mark.parametrize("shape", ABSURD_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_absurd_shape_is_refused_fast_without_allocating(
    server: Server, client: httpx.Client, shape: list[int]
) -> None:
    before = rss_kb(server)
    for kind, path, body, headers in _absurd_requests(shape):
        start = time.monotonic()
        r = client.post(path, content=body, headers=headers)
        elapsed = time.monotonic() - start
        assert_error(r, 400, "INPUT0", "shape")
        assert elapsed < FAST_S, (kind, elapsed)
    after = rss_kb(server)
    assert after - before < RSS_SLACK_KB, (before, after)
    assert_serving(server)


def test_largest_allowed_element_count_with_no_data_is_refused_without_allocating(
    server: Server, client: httpx.Client
) -> None:
    """Exactly the limit passes the shape check; the missing data must still be caught cheaply."""
    shape = [MAX_ELEMENTS // 4, 4]
    before = rss_kb(server)
    for kind, path, body, headers in _absurd_requests(shape):
        start = time.monotonic()
        r = client.post(path, content=body, headers=headers)
        elapsed = time.monotonic() - start
        assert_error(r, 400, "INPUT0")
        assert elapsed < FAST_S, (kind, elapsed)
    assert rss_kb(server) - before < RSS_SLACK_KB
    assert_serving(server)


@pytest.mark.parametrize(
    "shape", [[2**62, 2**62, 0], [0, 2**62], [0, 2**63 - 1]], ids=lambda s: "x".join(map(str, s))
)
def test_zero_element_shape_with_absurd_dims_is_a_400(
    server: Server, client: httpx.Client, shape: list[int]
) -> None:
    """No elements, so no element limit trips, but such a shape is still nonsense."""
    for model, datatype in (("identity_fp32", "FP32"), ("identity_bytes", "BYTES")):
        r = client.post(f"/v2/models/{model}/infer", json=_one(datatype, [], shape))
        assert_error(r, 400, "INPUT0", "shape")
        body, headers = binary_request(
            [
                {
                    "name": "INPUT0",
                    "datatype": datatype,
                    "shape": shape,
                    "parameters": {"binary_data_size": 0},
                }
            ],
            [],
        )
        r = client.post(f"/v2/models/{model}/infer", content=body, headers=headers)
        assert_error(r, 400, "INPUT0", "shape")
    assert_serving(server)


@pytest.mark.parametrize("shape", [[-1, 16], [1, -16], [-5], [-(2**62), -(2**62)]], ids=str)
def test_negative_dimension_is_a_400(
    server: Server, client: httpx.Client, shape: list[int]
) -> None:
    r = client.post(
        "/v2/models/add_sub/infer",
        json={"inputs": [fp32("INPUT0", A, shape), fp32("INPUT1", B)]},
    )
    assert_error(r, 400, "INPUT0", "shape")
    body, headers = binary_request(
        [binary_fp32("INPUT0", 64, shape), binary_fp32("INPUT1")], [ROW, ROW]
    )
    r = client.post("/v2/models/add_sub/infer", content=body, headers=headers)
    assert_error(r, 400, "INPUT0", "shape")
    assert_serving(server)


# ------------------------------------------------ Triton's binary extension


def test_binary_request_works(server: Server, client: httpx.Client) -> None:
    """The baseline the binary cases below break one thing at a time."""
    body, headers = binary_request([binary_fp32("INPUT0"), binary_fp32("INPUT1")], [ROW, ROW])
    r = client.post("/v2/models/add_sub/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    out = {o["name"]: o["data"] for o in r.json()["outputs"]}
    assert out["OUTPUT0"] == [2.0 * i for i in range(16)]


@pytest.mark.parametrize(
    ("header_length", "fragments"),
    [
        pytest.param("100000", ("100000",), id="larger-than-body"),
        pytest.param("abc", ("abc",), id="not-a-number"),
        pytest.param("-1", ("-1",), id="negative"),
        pytest.param("1.5", ("1.5",), id="fraction"),
        pytest.param("", ("inference-header-content-length",), id="empty"),
        pytest.param("0x20", ("0x20",), id="hex"),
        pytest.param(b"\xb2", ("inference-header-content-length",), id="superscript-two"),
        pytest.param("10", ("json",), id="cuts-the-json"),
    ],
)
def test_bad_inference_header_content_length(
    server: Server, client: httpx.Client, header_length: str | bytes, fragments: tuple[str, ...]
) -> None:
    body, headers = binary_request(
        [binary_fp32("INPUT0"), binary_fp32("INPUT1")], [ROW, ROW], header_length=header_length
    )
    r = client.post("/v2/models/add_sub/infer", content=body, headers=headers)
    assert_error(r, 400, *fragments)
    assert_serving(server)


@pytest.mark.parametrize(
    ("inputs", "blobs", "extra", "fragments"),
    [
        pytest.param(
            [binary_fp32("INPUT0", 60), binary_fp32("INPUT1")],
            [ROW[:60], ROW],
            b"",
            ("INPUT0", "64", "60"),
            id="size-too-small-for-shape",
        ),
        pytest.param(
            [binary_fp32("INPUT0", 68), binary_fp32("INPUT1")],
            [ROW + b"\0" * 4, ROW],
            b"",
            ("INPUT0", "64", "68"),
            id="size-too-large-for-shape",
        ),
        pytest.param(
            [binary_fp32("INPUT0"), binary_fp32("INPUT1", 1000)],
            [ROW, ROW],
            b"",
            ("INPUT1", "1000"),
            id="size-runs-past-body",
        ),
        pytest.param(
            [binary_fp32("INPUT0"), binary_fp32("INPUT1")],
            [ROW, ROW],
            b"left over",
            ("9",),
            id="bytes-left-over",
        ),
        pytest.param(
            [binary_fp32("INPUT0"), fp32("INPUT1", B)],
            [ROW, ROW],
            b"",
            ("64",),
            id="input-unclaimed",
        ),
        pytest.param(
            [{**binary_fp32("INPUT0"), "data": A}, binary_fp32("INPUT1")],
            [ROW, ROW],
            b"",
            ("INPUT0", "binary_data_size"),
            id="size-and-data",
        ),
        pytest.param(
            [
                {**binary_fp32("INPUT0"), "parameters": {"binary_data_size": -64}},
                binary_fp32("INPUT1"),
            ],
            [ROW, ROW],
            b"",
            ("INPUT0", "binary_data_size"),
            id="size-negative",
        ),
        pytest.param(
            [
                {**binary_fp32("INPUT0"), "parameters": {"binary_data_size": "64"}},
                binary_fp32("INPUT1"),
            ],
            [ROW, ROW],
            b"",
            ("INPUT0", "binary_data_size"),
            id="size-as-string",
        ),
        pytest.param(
            [
                {**binary_fp32("INPUT0"), "parameters": {"binary_data_size": 64.0}},
                binary_fp32("INPUT1"),
            ],
            [ROW, ROW],
            b"",
            ("INPUT0", "binary_data_size"),
            id="size-as-float",
        ),
        pytest.param(
            [
                {**binary_fp32("INPUT0"), "parameters": {"binary_data_size": True}},
                binary_fp32("INPUT1"),
            ],
            [ROW, ROW],
            b"",
            ("INPUT0", "binary_data_size"),
            id="size-as-bool",
        ),
    ],
)
def test_bad_binary_tensor_layout(
    server: Server,
    client: httpx.Client,
    inputs: list[dict[str, Any]],
    blobs: list[bytes],
    extra: bytes,
    fragments: tuple[str, ...],
) -> None:
    body, headers = binary_request(inputs, blobs, extra=extra)
    r = client.post("/v2/models/add_sub/infer", content=body, headers=headers)
    assert_error(r, 400, *fragments)
    assert_serving(server)


@pytest.mark.parametrize(
    ("blob", "fragments"),
    [
        pytest.param(
            bytes_elements(b"a", b"b", b"c") + struct.pack("<I", 1000) + b"d",
            ("INPUT0", "1000"),
            id="length-prefix-past-end",
        ),
        pytest.param(struct.pack("<I", 0xFFFFFFFF) * 4, ("INPUT0",), id="length-prefix-4GiB"),
        pytest.param(bytes_elements(b"a", b"b", b"c"), ("INPUT0",), id="one-element-short"),
        pytest.param(
            bytes_elements(b"a", b"b", b"c", b"d") + b"zz", ("INPUT0", "2"), id="left-over"
        ),
        pytest.param(bytes_elements(b"a", b"b", b"c") + b"\x01\x00", ("INPUT0",), id="cut-prefix"),
    ],
)
def test_bad_binary_bytes_tensor(
    server: Server, client: httpx.Client, blob: bytes, fragments: tuple[str, ...]
) -> None:
    inputs = [
        {
            "name": "INPUT0",
            "datatype": "BYTES",
            "shape": [1, 4],
            "parameters": {"binary_data_size": len(blob)},
        }
    ]
    body, headers = binary_request(inputs, [blob])
    r = client.post("/v2/models/identity_bytes/infer", content=body, headers=headers)
    assert_error(r, 400, *fragments)
    assert_serving(server)


# ------------------------------------------------------ body size and framing


def test_declared_body_over_the_limit_is_413_before_reading(server: Server) -> None:
    """Content-Length says 64 MiB + 1 but only a few bytes come: answer at once."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as sock:
        sock.sendall(
            b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: " + str(BODY_LIMIT + 1).encode() + b"\r\n\r\n{}"
        )
        r = _read_response(sock)
    assert time.monotonic() - start < FAST_S
    assert_raw_error(r, 413, 413, str(BODY_LIMIT))
    assert_serving(server)


def test_real_body_over_the_limit_is_413(server: Server, client: httpx.Client) -> None:
    body = b" " * (65 * MiB)
    before = rss_kb(server)
    r = client.post("/v2/models/add_sub/infer", content=body)
    assert_error(r, 413, str(BODY_LIMIT))
    assert rss_kb(server) - before < RSS_SLACK_KB * 2
    assert_serving(server)


def test_chunked_body_over_the_limit_is_413(server: Server, client: httpx.Client) -> None:
    """No Content-Length to check up front: the stream is cut off at the limit."""

    def chunks() -> Iterator[bytes]:
        for _ in range(65):
            yield b" " * MiB

    r = client.post("/v2/models/add_sub/infer", content=chunks())
    assert_error(r, 413, str(BODY_LIMIT))
    assert_serving(server)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_body_inflating_over_the_limit_is_413(
    server: Server, client: httpx.Client, encoding: str
) -> None:
    plain = b" " * (BODY_LIMIT + MiB)
    packed = gzip.compress(plain) if encoding == "gzip" else zlib.compress(plain)
    r = client.post(
        "/v2/models/add_sub/infer", content=packed, headers={"Content-Encoding": encoding}
    )
    assert_error(r, 413, str(BODY_LIMIT))
    assert_serving(server)


def test_lying_content_length_then_close_does_not_hang(server: Server) -> None:
    """Declares 1000 bytes, sends 10, closes its side: the server must let go quickly."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=FAST_S) as sock:
        sock.sendall(
            b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            b'{"inputs":'
        )
        sock.shutdown(socket.SHUT_WR)
        r = _read_response(sock)  # socket.timeout here would mean a hang
    assert time.monotonic() - start < FAST_S
    if r is not None:  # answering is optional, but if it answers it is a 4xx error
        assert_raw_error(r, 400, 499)
    assert_serving(server)


def test_lying_content_length_held_open_does_not_block_others(server: Server) -> None:
    """A client stalled mid-body must not stop other requests being served."""
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=FAST_S) as sock:
        sock.sendall(
            b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            b'{"inputs":'
        )
        start = time.monotonic()
        assert_serving(server)
        assert time.monotonic() - start < FAST_S
    assert_serving(server)


@pytest.mark.parametrize(
    "content_length",
    ["abc", "-5", "1e3", "99999999999999999999999999"],
)
def test_malformed_content_length_header_is_a_json_400(server: Server, content_length: str) -> None:
    r = raw_request(
        server,
        "POST",
        b"/v2/models/add_sub/infer",
        b"{}",
        headers={"Content-Length": content_length},
    )
    assert_raw_error(r, 400, 400)
    assert_serving(server)


# --------------------------------------------------------- Content-Encoding


@pytest.mark.parametrize(
    ("encoding", "body", "statuses"),
    [
        pytest.param("gzip", b"this is not gzip", (400,), id="gzip-not-gzip"),
        pytest.param("deflate", b"this is not deflate", (400,), id="deflate-not-deflate"),
        pytest.param("gzip", gzip.compress(_good_json())[:-12], (400,), id="gzip-truncated"),
        pytest.param("gzip", zlib.compress(_good_json()), (400,), id="zlib-sent-as-gzip"),
        pytest.param("br", _good_json(), (400, 415), id="brotli"),
        pytest.param("compress", _good_json(), (400, 415), id="compress"),
        pytest.param("gzip, br", gzip.compress(_good_json()), (400, 415), id="gzip-then-br"),
        pytest.param("x-made-up", _good_json(), (400, 415), id="made-up"),
    ],
)
def test_bad_content_encoding(
    server: Server,
    client: httpx.Client,
    encoding: str,
    body: bytes,
    statuses: tuple[int, ...],
) -> None:
    r = client.post(
        "/v2/models/add_sub/infer",
        content=body,
        headers={"Content-Encoding": encoding, "Content-Type": "application/json"},
    )
    assert_error(r, statuses)
    assert_serving(server)


def test_good_gzip_body_is_served(server: Server, client: httpx.Client) -> None:
    r = client.post(
        "/v2/models/add_sub/infer",
        content=gzip.compress(_good_json()),
        headers={"Content-Encoding": "gzip"},
    )
    assert r.status_code == 200, r.text


# ------------------------------------------------------------- path tricks


def _tree(root: Path) -> list[tuple[str, int, int]]:
    out = []
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out.append((str(p.relative_to(root)), st.st_size, st.st_mtime_ns))
    return out


PATH_TRICKS = [
    ("POST", b"/v2/models/..%2F..%2Fetc/infer"),
    ("POST", b"/v2/models/..%2f..%2f..%2f..%2ftmp/infer"),
    ("POST", b"/v2/models/%2e%2e/infer"),
    ("POST", b"/v2/models/%2E%2E/versions/1/infer"),
    ("POST", b"/v2/models/add_sub%00/infer"),
    ("POST", b"/v2/models/a%00b/infer"),
    ("GET", b"/v2/models/..%2F..%2Fetc/config"),
    ("GET", b"/v2/models/%2e%2e"),
    ("GET", b"/v2/models/%2e%2e/ready"),
    ("POST", b"/v1/models/%2e%2e:predict"),
    ("POST", b"/v2/repository/models/..%2Fx/load"),
    ("POST", b"/v2/repository/models/..%2F..%2Fetc/load"),
    ("POST", b"/v2/repository/models/%2e%2e/load"),
    ("POST", b"/v2/repository/models/%2e/load"),
    ("POST", b"/v2/repository/models/..%5C..%5Cetc/load"),
    ("POST", b"/v2/repository/models/a%00b/load"),
    ("POST", b"/v2/repository/models/add_sub%00/load"),
    ("POST", b"/v2/repository/models/%2Fetc/load"),
    ("POST", b"/v2/repository/models/.hidden/load"),
    ("POST", b"/v2/repository/models/%2e%2e/unload"),
    ("POST", b"/v2/repository/models/..%2Fadd_sub/unload"),
]


@pytest.mark.parametrize(("method", "target"), PATH_TRICKS, ids=str)
def test_path_tricks_touch_nothing_outside_the_repository(
    server: Server, client: httpx.Client, method: str, target: bytes
) -> None:
    outside = server.repository.parent
    before_outside = sorted(p.name for p in outside.iterdir())
    before_repo = _tree(server.repository)
    before_index = client.post("/v2/repository/index").json()

    r = raw_request(server, method, target, b"{}", headers={"Content-Type": "application/json"})
    assert_raw_error(r, 400, 499)

    assert sorted(p.name for p in outside.iterdir()) == before_outside
    assert _tree(server.repository) == before_repo
    assert client.post("/v2/repository/index").json() == before_index
    assert_serving(server)


# ---------------------------------------------------- request parameters


@pytest.mark.parametrize(
    "parameters",
    [
        {"sequence_id": 7},
        {"sequence_id": "session-1"},
        {"sequence_start": True},
        {"sequence_end": True},
        {"sequence_id": 7, "sequence_start": True, "sequence_end": False},
    ],
    ids=str,
)
def test_sequence_parameters_are_refused(
    server: Server, client: httpx.Client, parameters: dict[str, Any]
) -> None:
    r = client.post("/v2/models/add_sub/infer", json={**good_body(), "parameters": parameters})
    assert_error(r, 400, "sequence")
    assert_serving(server)


@pytest.mark.parametrize(
    ("parameters", "fragment"),
    [
        ({"priority": -1}, "priority"),
        ({"priority": "high"}, "priority"),
        ({"priority": 1.5}, "priority"),
        ({"timeout": -10}, "timeout"),
        ({"timeout": "soon"}, "timeout"),
    ],
    ids=str,
)
def test_bad_scheduling_parameters(
    server: Server, client: httpx.Client, parameters: dict[str, Any], fragment: str
) -> None:
    r = client.post("/v2/models/add_sub/infer", json={**good_body(), "parameters": parameters})
    assert_error(r, 400, fragment)
    assert_serving(server)


# ------------------------------------------------------------- KServe v1

ROW30 = [0.5] * 30


@pytest.mark.parametrize(
    ("model", "body", "fragments"),
    [
        pytest.param("breast_cancer", {}, ("instances",), id="no-instances"),
        pytest.param("breast_cancer", {"rows": [ROW30]}, ("instances",), id="other-key"),
        pytest.param("breast_cancer", [ROW30], ("object",), id="list-not-object"),
        pytest.param("breast_cancer", "x", ("object",), id="string-not-object"),
        pytest.param(
            "breast_cancer", {"inputs": {"x": [ROW30]}}, ("unknown input", "x"), id="wrong-name"
        ),
        pytest.param(
            "breast_cancer",
            {"inputs": {"input": [ROW30], "extra": [ROW30]}},
            ("extra",),
            id="extra-name",
        ),
        pytest.param("breast_cancer", {"instances": "rows"}, ("list",), id="instances-not-a-list"),
        pytest.param("breast_cancer", {"instances": None}, ("instances",), id="instances-null"),
        pytest.param("breast_cancer", {"instances": []}, ("input",), id="instances-empty"),
        pytest.param("breast_cancer", {"instances": [ROW30, [0.5] * 29]}, ("input",), id="ragged"),
        pytest.param("breast_cancer", {"instances": [[0.5] * 29]}, ("shape",), id="short-row"),
        pytest.param("breast_cancer", {"instances": [["a"] * 30]}, ("input",), id="strings"),
        pytest.param("breast_cancer", {"instances": [[[0.5]] * 30]}, ("shape",), id="too-deep"),
        pytest.param(
            "add_sub", {"instances": [[0.5] * 16]}, ("inputs",), id="list-for-two-input-model"
        ),
    ],
)
def test_kserve_v1_bad_bodies(
    server: Server, client: httpx.Client, model: str, body: Any, fragments: tuple[str, ...]
) -> None:
    r = client.post(f"/v1/models/{model}:predict", json=body)
    assert_error(r, 400, *fragments)
    assert_serving(server)


def test_kserve_v1_malformed_json(server: Server, client: httpx.Client) -> None:
    r = client.post("/v1/models/breast_cancer:predict", content=b'{"instances": [[')
    assert_error(r, 400, "malformed")
    assert_serving(server)


# ------------------------------------------------------ repository bodies


@pytest.mark.parametrize(
    ("path", "body", "fragments"),
    [
        pytest.param("/v2/repository/index", b"{", ("malformed",), id="index-malformed"),
        pytest.param("/v2/repository/index", b"[]", ("object",), id="index-array"),
        pytest.param("/v2/repository/index", b'{"ready": "yes"}', ("ready",), id="index-ready-str"),
        pytest.param(
            "/v2/repository/models/add_sub/load", b"{", ("malformed",), id="load-malformed"
        ),
        pytest.param(
            "/v2/repository/models/add_sub/load",
            b'{"parameters": []}',
            ("parameters",),
            id="load-parameters-array",
        ),
        pytest.param(
            "/v2/repository/models/add_sub/load",
            b'{"parameters": {"config": "{not json"}}',
            ("config",),
            id="load-config-not-json",
        ),
        pytest.param(
            "/v2/repository/models/add_sub/load",
            b'{"parameters": {"config": 5}}',
            ("config",),
            id="load-config-not-string",
        ),
        pytest.param(
            "/v2/repository/models/add_sub/load",
            b'{"parameters": {"file:1/model.onnx": "AAAA"}}',
            ("file:",),
            id="load-file-override",
        ),
    ],
)
def test_bad_repository_bodies(
    server: Server, client: httpx.Client, path: str, body: bytes, fragments: tuple[str, ...]
) -> None:
    r = client.post(path, content=body)
    assert_error(r, 400, *fragments)
    assert_serving(server)
