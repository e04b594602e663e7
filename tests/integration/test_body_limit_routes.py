"""The body-size limit on every route, not only inference: /api/v1, repository, KServe v1.

Management bodies (/api/v1) have their own limit of 1 MiB under the server's.

Raw sockets where a client would not send what the limit is for (a huge
Content-Length with no body behind it, a body streamed without one), and
the server's peak memory read from /proc while a large body streams in.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
LIMIT = 16 * MiB
BODY_TIMEOUT_S = 30.0
#: Far under the body timeout: the refusal must not wait for the body.
FAST_S = 3.0


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    logs = tmp_path_factory.mktemp("body-limit")
    config = logs / "server.yaml"
    config.write_text(
        f"max_body_bytes: {LIMIT}\nheader_timeout: 2.0\nbody_timeout: {BODY_TIMEOUT_S}\n"
    )
    server = start_server(None, logs / "server.log", "--config", str(config))
    yield server
    stop_server(server)


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one answer (the server closes after a refusal)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed without an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    want = int(headers.get("content-length", "0"))
    while len(body) < want:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body[:want]


def assert_too_large(status: int, body: bytes) -> None:
    assert status == 413, body[:500]
    assert str(LIMIT) in json.loads(body)["error"]


#: The management API's own limit (``MANAGEMENT_BODY_BYTES``), far under the server's.
MANAGEMENT_LIMIT = 1 * MiB


def _policy_of(size: int) -> bytes:
    """A well-formed traffic policy of about ``size`` bytes (a long reason)."""
    return json.dumps({"routes": [{"version": "1", "weight": 100}], "reason": "x" * size}).encode()


def assert_over_management_limit(status: int, body: bytes) -> None:
    assert status == 413, body[:500]
    answer = json.loads(body)
    assert str(MANAGEMENT_LIMIT) in answer["error"]
    assert answer["code"] == "payload_too_large"


def assert_serving(server: Server) -> None:
    assert server.alive(), server.log()[-4000:]
    assert httpx.get(f"{server.base}/v2/health/live", timeout=10).status_code == 200
    assert httpx.get(f"{server.base}/api/v1/models", timeout=10).status_code == 200


@pytest.mark.parametrize(
    ("port", "request_line"),
    [
        ("http", "PUT /api/v1/models/m/traffic"),
        ("http", "POST /api/v1/models/m/canary"),
        ("http", "POST /v2/repository/models/m/load"),
        ("http", "POST /v1/models/m:predict"),
        ("metrics", "POST /metrics"),
    ],
)
def test_declared_length_over_the_limit_is_413_at_once(
    limited: Server, port: str, request_line: str
) -> None:
    """A terabyte announced and one byte sent: 413 at once, not after the body timeout."""
    number = limited.http_port if port == "http" else limited.metrics_port
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", number), timeout=BODY_TIMEOUT_S) as sock:
        sock.sendall(
            f"{request_line} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"If-Match: 0\r\nContent-Length: {10**12}\r\n\r\n{{".encode()
        )
        status, _, body = read_answer(sock)
    assert time.monotonic() - started < FAST_S
    assert_too_large(status, body)
    assert_serving(limited)


def test_a_17_mib_management_body_is_413(limited: Server) -> None:
    r = httpx.put(
        f"{limited.base}/api/v1/models/m/traffic",
        content=b" " * (17 * MiB),
        headers={"Content-Type": "application/json", "If-Match": "0"},
        timeout=30,
    )
    assert_too_large(r.status_code, r.content)
    assert_serving(limited)


def test_a_chunked_management_body_over_the_limit_is_413(limited: Server) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(17):
            yield b" " * MiB

    r = httpx.post(
        f"{limited.base}/api/v1/models/m/canary",
        content=chunks(),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert_over_management_limit(r.status_code, r.content)
    assert_serving(limited)


def _status_kb(server: Server, field: str) -> int:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc status")


def test_a_200_mb_stream_costs_at_most_a_few_limits_of_memory(limited: Server) -> None:
    """Peak resident memory (VmHWM, reset first) grows by a bounded amount, not by the body."""
    pid = limited.process.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS now
    before = _status_kb(limited, "VmHWM")
    answer: list[tuple[int, dict[str, str], bytes]] = []
    chunk = b" " * MiB
    frame = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    with socket.create_connection(("127.0.0.1", limited.http_port), timeout=30) as sock:
        reader = threading.Thread(target=lambda: answer.append(read_answer(sock)), daemon=True)
        sock.sendall(
            b"PUT /api/v1/models/m/traffic HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nIf-Match: 0\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        reader.start()
        try:
            for _ in range(200):
                sock.sendall(frame)
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server may close once it has answered and the stream goes on
        reader.join(timeout=30)
    assert answer, "no answer"
    status, _, body = answer[0]
    assert_over_management_limit(status, body)
    grown_mib = (_status_kb(limited, "VmHWM") - before) / 1024
    assert grown_mib < 4 * LIMIT / MiB, grown_mib
    assert_serving(limited)


def test_a_2_mib_policy_is_413_at_the_management_limit(limited: Server) -> None:
    """Under the server's limit, over the management API's: refused, not parsed."""
    r = httpx.put(
        f"{limited.base}/api/v1/models/m/traffic",
        content=_policy_of(2 * MiB),
        headers={"Content-Type": "application/json", "If-Match": "0"},
        timeout=30,
    )
    assert_over_management_limit(r.status_code, r.content)
    assert_serving(limited)


def test_a_declared_2_mib_management_body_is_413_before_it_is_sent(limited: Server) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", limited.http_port), timeout=30) as sock:
        sock.sendall(
            b"POST /api/v1/models/m/canary HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n{" % (2 * MiB)
        )
        status, _, body = read_answer(sock)
    assert time.monotonic() - started < FAST_S
    assert_over_management_limit(status, body)
    assert_serving(limited)


def test_a_management_stream_is_cut_at_the_management_limit(limited: Server) -> None:
    """15 MiB chunked (under the server's 16): 413, and peak memory grows by a few MiB."""
    pid = limited.process.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS now
    before = _status_kb(limited, "VmHWM")

    def chunks() -> Iterator[bytes]:
        yield b'{"routes": [{"version": "1", "weight": 100}], "reason": "'
        for _ in range(15):
            yield b"x" * MiB
        yield b'"}'

    r = httpx.put(
        f"{limited.base}/api/v1/models/m/traffic",
        content=chunks(),
        headers={"Content-Type": "application/json", "If-Match": "0"},
        timeout=30,
    )
    assert_over_management_limit(r.status_code, r.content)
    grown_mib = (_status_kb(limited, "VmHWM") - before) / 1024
    assert grown_mib < 8, grown_mib
    assert_serving(limited)


@pytest.mark.parametrize("encoding", ["gzip", "br"])
def test_a_compressed_management_body_is_415_naming_the_encoding(
    limited: Server, encoding: str
) -> None:
    r = httpx.put(
        f"{limited.base}/api/v1/models/m/traffic",
        content=gzip.compress(_policy_of(10)),
        headers={
            "Content-Type": "application/json",
            "Content-Encoding": encoding,
            "If-Match": "0",
        },
        timeout=30,
    )
    assert r.status_code == 415, r.text
    assert f"Content-Encoding '{encoding}'" in r.json()["error"]
    assert_serving(limited)
