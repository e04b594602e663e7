"""Limits every caller meets before any application code: header size and time.

Raw sockets, because well-behaved clients cannot send what these limits
are for: a megabyte of headers, or a request head trickled out so slowly
that the connection stays open for nothing.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    logs = tmp_path_factory.mktemp("limits")
    config = logs / "server.yaml"
    config.write_text("max_header_bytes: 4096\nheader_timeout: 1.0\nbody_timeout: 1.0\n")
    server = start_server(None, logs / "server.log", "--config", str(config))
    yield server
    stop_server(server)


def exchange(server: Server, data: bytes, wait: float = 10.0) -> tuple[int, dict[str, str], float]:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.http_port)) as conn:
        conn.settimeout(wait)
        conn.sendall(data)
        received = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return status, json.loads(body), time.monotonic() - started


def test_oversized_headers_get_431(limited: Server) -> None:
    request = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    status, body, _ = exchange(limited, request)
    assert status == 431
    assert "4096 bytes" in body["error"]


def test_headers_within_the_limit_are_served(limited: Server) -> None:
    r = httpx.get(f"{limited.base}/v2/health/ready", headers={"X-Some": "a" * 2000})
    assert r.status_code == 200


def test_a_trickled_request_head_is_cut_off(limited: Server) -> None:
    status, body, took = exchange(limited, b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n")
    assert status == 408
    assert "request head" in body["error"]
    assert took < 5


def test_a_body_that_never_arrives_is_cut_off(limited: Server) -> None:
    head = (
        b"POST /v2/models/breast_cancer/infer HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    )
    status, body, took = exchange(limited, head)
    assert status == 408
    assert "request body" in body["error"]
    assert took < 5


def test_the_server_serves_on_after_the_refusals(limited: Server) -> None:
    body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [0.0] * 30}]}
    r = httpx.post(f"{limited.base}/v2/models/breast_cancer/infer", json=body)
    assert r.status_code == 200, r.text
    assert limited.alive()
