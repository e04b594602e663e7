"""HTTP/1.1 framing around the infer route, spoken byte by byte over raw sockets.

The server answers most infer requests from its HTTP protocol directly and
the rest through the ASGI app (a request pipelined behind an unfinished
answer, a percent-escaped path). Either way a caller must see the same
HTTP: answers in request order, ``100 Continue`` when asked, a body that
arrives in pieces read whole, ``Connection: close`` and HTTP/1.0 honoured,
and a connection that stays usable after a refused request.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest

from tests.integration.conftest import Server

pytestmark = pytest.mark.integration

TIMEOUT_S = 10.0


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Conn:
    """One raw connection; reads answers framed by Content-Length."""

    def __init__(self, server: Server) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=TIMEOUT_S)
        self.buffer = b""

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def read_head(self) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self.buffer:
            assert self._fill(), f"connection closed mid-head: {self.buffer!r}"
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(lines[0].split()[1]), headers

    def read(self) -> Answer:
        status, headers = self.read_head()
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            assert self._fill(), "connection closed mid-body"
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Answer(status, headers, body)

    def closed_by_server(self) -> bool:
        """Whether the server closes the connection (nothing more to read)."""
        try:
            return not self._fill() and not self.buffer
        except ConnectionResetError:
            return True


def infer_body(a: float, b: float) -> bytes:
    inputs = [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [a] * 16},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": [b] * 16},
    ]
    return json.dumps({"inputs": inputs}).encode()


def post(
    path: str, body: bytes, *, version: str = "1.1", extra: bytes = b"", length: bool = True
) -> bytes:
    head = f"POST {path} HTTP/{version}\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    out = head.encode() + extra
    if length:
        out += b"Content-Length: " + str(len(body)).encode() + b"\r\n"
    return out + b"\r\n" + body


def sums(answer: Answer) -> list[float]:
    assert answer.status == 200, answer.body
    outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
    return list(outputs["OUTPUT0"])


INFER = "/v2/models/add_sub/infer"


def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    """Several requests in one write, infer and not: each answer in its place, rows unmixed."""
    requests = [
        post(INFER, infer_body(1, 2)),
        b"GET /v2/health/ready HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        post(INFER, infer_body(10, 20)),
        post("/v2/models/add_sub/versions/2/infer", infer_body(100, 200)),
        post("/v2/models/no_such_model/infer", infer_body(0, 0)),
        post(INFER, infer_body(1000, 2000)),
    ]
    with Conn(server) as conn:
        conn.send(b"".join(requests))
        answers = [conn.read() for _ in requests]
    assert sums(answers[0]) == [3.0] * 16
    assert answers[1].status == 200
    assert sums(answers[2]) == [30.0] * 16
    assert sums(answers[3]) == [300.0] * 16
    assert answers[3].json()["model_version"] == "2"
    assert answers[4].status == 404
    assert "no_such_model" in answers[4].json()["error"]
    assert sums(answers[5]) == [3000.0] * 16


def test_many_requests_on_one_kept_alive_connection(server: Server) -> None:
    with Conn(server) as conn:
        for i in range(50):
            conn.send(post(INFER, infer_body(i, 1)))
            assert sums(conn.read()) == [i + 1.0] * 16


def test_expect_100_continue_is_answered_before_the_body(server: Server) -> None:
    body = infer_body(4, 5)
    with Conn(server) as conn:
        head = post(INFER, b"", extra=b"Expect: 100-continue\r\n", length=False)
        conn.send(head[:-2] + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        status, _ = conn.read_head()
        assert status == 100
        conn.send(body)
        assert sums(conn.read()) == [9.0] * 16


def test_a_body_sent_in_pieces_is_read_whole(server: Server) -> None:
    request = post(INFER, infer_body(7, 8))
    with Conn(server) as conn:
        step = len(request) // 7 + 1
        for start in range(0, len(request), step):
            conn.send(request[start : start + step])
            time.sleep(0.02)
        assert sums(conn.read()) == [15.0] * 16


def test_connection_close_is_honoured(server: Server) -> None:
    with Conn(server) as conn:
        conn.send(post(INFER, infer_body(1, 1), extra=b"Connection: close\r\n"))
        answer = conn.read()
        assert sums(answer) == [2.0] * 16
        assert answer.headers.get("connection") == "close"
        assert conn.closed_by_server()


def test_http_1_0_gets_its_answer_and_the_connection_closes(server: Server) -> None:
    with Conn(server) as conn:
        conn.send(post(INFER, infer_body(2, 3), version="1.0"))
        answer = conn.read()
        assert sums(answer) == [5.0] * 16
        assert conn.closed_by_server()


def test_a_percent_escaped_path_gets_the_same_answer(server: Server) -> None:
    with Conn(server) as conn:
        conn.send(post("/v2/models/add%5Fsub/infer", infer_body(3, 3)))
        escaped = conn.read()
        conn.send(post(INFER, infer_body(3, 3)))
        plain = conn.read()
    assert sums(escaped) == sums(plain) == [6.0] * 16
    assert escaped.headers["content-type"] == plain.headers["content-type"]


def test_the_connection_serves_on_after_refusals(server: Server) -> None:
    """Refused before, during and after reading the body: the next request is still parsed right."""
    refusals = [
        (post("/v2/models/no_such_model/infer", b" " * 200_000), 404),
        (post(INFER, b"{not json"), 400),
        (post(INFER, infer_body(1, 1), extra=b"Content-Encoding: br\r\n"), 400),
    ]
    with Conn(server) as conn:
        for request, status in refusals:
            conn.send(request)
            answer = conn.read()
            assert answer.status == status, answer.body
            assert "error" in answer.json()
            conn.send(post(INFER, infer_body(5, 6)))
            assert sums(conn.read()) == [11.0] * 16


def test_binary_answers_keep_their_framing_headers(server: Server) -> None:
    """A binary-tensor answer: its JSON header length and the raw bytes, in one response."""
    params = {"binary_data_output": True}
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": n,
                    "shape": [1, 16],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 64},
                }
                for n in ("INPUT0", "INPUT1")
            ],
            "parameters": params,
        }
    ).encode()
    a = np.arange(16, dtype=np.float32)
    body = header + a.tobytes() + (2 * a).tobytes()
    r = httpx.post(
        f"{server.base}{INFER}",
        content=body,
        headers={
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header)),
        },
    )
    assert r.status_code == 200, r.text
    json_len = int(r.headers["inference-header-content-length"])
    meta = json.loads(r.content[:json_len])
    sizes = [o["parameters"]["binary_data_size"] for o in meta["outputs"]]
    assert len(r.content) == json_len + sum(sizes)
    first = np.frombuffer(r.content[json_len : json_len + sizes[0]], dtype=np.float32)
    names = [o["name"] for o in meta["outputs"]]
    expected = 3 * a if names[0] == "OUTPUT0" else -a
    np.testing.assert_array_equal(first, expected)
