"""The body-size limit on every route, not only inference: /api/v1, repository, KServe v1.

Raw sockets where a client would not send what the limit is for (a huge
Content-Length with no body behind it, a body streamed without one), and
the server's peak memory read from /proc while a large body streams in.
"""

from __future__ import annotations

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
    assert_too_large(r.status_code, r.content)
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
    assert_too_large(status, body)
    grown_mib = (_status_kb(limited, "VmHWM") - before) / 1024
    assert grown_mib < 4 * LIMIT / MiB, grown_mib
    assert_serving(limited)
