"""The protocol's direct infer path: which requests take it, and what goes on the wire.

A real protocol instance fed bytes as the network would, over a transport
that records writes. The route behind it echoes the body it read, so these
tests see exactly what the protocol collected and wrote.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from modelport.dataplane.transport.http.direct import DirectCycle, Reply
from modelport.dataplane.transport.http.fastpath import (
    BodyReader,
    InferenceFastPath,
    InferRoute,
    error_reply,
)
from modelport.dataplane.transport.http.guard import DeclaredRoutes
from modelport.dataplane.transport.http.protocol import limited_protocol
from modelport.errors import ModelportError, NotFound
from tests.unit.dataplane.fake_transport import Transport

LIMIT = 1000


class EchoRoute(InferRoute):
    """Answers with the model name and the body it read; 404 for "missing", a bug for "boom"."""

    def __init__(self) -> None:
        super().__init__(SimpleNamespace(max_body_bytes=LIMIT))  # type: ignore[arg-type]

    async def respond(
        self,
        scope: Any,
        name: str,
        version: str | None,
        read_body: BodyReader,
        receive: Any = None,
    ) -> Reply | None:
        if name == "boom":
            raise RuntimeError("a bug")
        try:
            if name == "missing":
                raise NotFound("model 'missing' is not in the repository")
            body = await read_body(None, "")
        except ModelportError as exc:
            return error_reply(exc, scope["path"])
        return 200, [(b"content-type", b"text/plain")], name.encode() + b":" + body


class Fallback:
    """The ASGI app behind the fast path: records what reached it, answers 204."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.paths.append(scope["path"])
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def connection() -> tuple[Any, Transport, Fallback]:
    fallback = Fallback()
    app = InferenceFastPath(EchoRoute(), fallback, DeclaredRoutes([]))
    cls = limited_protocol(32 * 1024, 10.0, 60.0)
    config = uvicorn.Config(app, http=cls, lifespan="off", log_config=None, proxy_headers=False)
    config.load()
    protocol = cls(config=config, server_state=ServerState(), app_state={})  # type: ignore[arg-type]
    transport = Transport()
    protocol.connection_made(transport)
    return protocol, transport, fallback


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


def test_an_infer_request_is_answered_directly_in_one_write() -> None:
    async def scenario() -> None:
        protocol, transport, fallback = connection()
        protocol.data_received(post("/v2/models/m/infer", b"abc"))
        assert isinstance(protocol.cycle, DirectCycle)
        await settle()
        assert fallback.paths == []
        assert len(transport.writes) == 1
        head, _, body = transport.writes[0].partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"content-length: 5" in head
        assert body == b"m:abc"
        assert not transport.closed

    asyncio.run(scenario())


def test_other_routes_and_escaped_paths_go_through_the_asgi_app() -> None:
    async def scenario() -> None:
        protocol, transport, fallback = connection()
        protocol.data_received(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        await settle()
        protocol.data_received(post("/v2/models/m%31/infer", b"x"))
        assert not isinstance(protocol.cycle, DirectCycle)
        await settle()
        assert fallback.paths == ["/v2/health/ready"]
        assert transport.writes[-1].endswith(b"m1:x")  # the ASGI fast path answered

    asyncio.run(scenario())


def test_a_body_in_pieces_is_collected_whole() -> None:
    async def scenario() -> None:
        protocol, transport, _ = connection()
        request = post("/v2/models/m/versions/3/infer", b"0123456789")
        for i in range(0, len(request), 4):
            protocol.data_received(request[i : i + 4])
            await settle()
        assert transport.writes[-1].endswith(b"\r\n\r\nm:0123456789")

    asyncio.run(scenario())


def test_a_body_over_the_limit_is_refused_and_not_kept() -> None:
    async def scenario() -> None:
        protocol, transport, _ = connection()
        head = b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        protocol.data_received(head)
        chunk = b"%x\r\n%s\r\n" % (600, b"a" * 600)
        protocol.data_received(chunk + chunk)
        cycle = protocol.cycle
        assert isinstance(cycle, DirectCycle)
        assert cycle.chunks == []  # 1200 bytes against a limit of 1000: nothing kept
        await settle()
        assert transport.writes[-1].startswith(b"HTTP/1.1 413 ")
        assert b"1000 bytes" in transport.writes[-1]
        protocol.data_received(chunk + b"0\r\n\r\n")  # the rest is read and dropped
        protocol.data_received(post("/v2/models/m/infer", b"ok"))
        await settle()
        assert transport.writes[-1].endswith(b"m:ok")

    asyncio.run(scenario())


def test_a_refusal_uses_the_error_shape_and_the_connection_goes_on() -> None:
    async def scenario() -> None:
        protocol, transport, _ = connection()
        protocol.data_received(post("/v2/models/missing/infer", b"x"))
        await settle()
        assert transport.writes[-1].startswith(b"HTTP/1.1 404 Not Found\r\n")
        assert transport.writes[-1].endswith(
            b'{"error":"model \'missing\' is not in the repository"}'
        )
        protocol.data_received(post("/v2/models/m/infer", b"y"))
        await settle()
        assert transport.writes[-1].endswith(b"m:y")

    asyncio.run(scenario())


def test_a_bug_in_the_route_is_a_json_500_and_the_connection_goes_on() -> None:
    async def scenario() -> None:
        protocol, transport, _ = connection()
        protocol.data_received(post("/v2/models/boom/infer", b"x"))
        await settle()
        assert transport.writes[-1].startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
        assert transport.writes[-1].endswith(b'{"error":"internal error: RuntimeError"}')
        protocol.data_received(post("/v2/models/m/infer", b"y"))
        await settle()
        assert transport.writes[-1].endswith(b"m:y")

    asyncio.run(scenario())


def test_connection_close_closes_after_the_answer() -> None:
    async def scenario() -> None:
        protocol, transport, _ = connection()
        protocol.data_received(post("/v2/models/m/infer", b"z", b"Connection: close\r\n"))
        await settle()
        assert b"connection: close\r\n" in transport.writes[-1]
        assert transport.closed

    asyncio.run(scenario())


def test_expect_100_continue_is_sent_when_the_body_is_wanted() -> None:
    async def scenario() -> None:
        protocol, transport, _ = connection()
        head = post("/v2/models/m/infer", b"", b"Expect: 100-continue\r\n")
        protocol.data_received(head.replace(b"Content-Length: 0", b"Content-Length: 2"))
        await settle()
        assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
        protocol.data_received(b"hi")
        await settle()
        assert transport.writes[-1].endswith(b"m:hi")

    asyncio.run(scenario())


def test_a_request_pipelined_behind_an_unfinished_answer_waits_its_turn() -> None:
    async def scenario() -> None:
        protocol, transport, _ = connection()
        protocol.data_received(post("/v2/models/m/infer", b"1") + post("/v2/models/n/infer", b"2"))
        await settle()
        bodies = [w.partition(b"\r\n\r\n")[2] for w in transport.writes if w.startswith(b"HTTP")]
        assert bodies[0] == b"m:1"
        assert b"".join(transport.writes).endswith(b"n:2")

    asyncio.run(scenario())


def test_a_hang_up_mid_body_ends_the_request_without_an_answer() -> None:
    async def scenario() -> None:
        protocol, transport, _ = connection()
        protocol.data_received(b"POST /v2/models/m/infer HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
        await settle()
        protocol.connection_lost(None)
        await settle()
        assert transport.writes == []
        assert not protocol.tasks

    asyncio.run(scenario())


def test_a_body_that_stops_arriving_gets_408_and_the_request_ends() -> None:
    async def scenario() -> None:
        protocol, transport, _ = connection()
        protocol.data_received(b"POST /v2/models/m/infer HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
        await settle()
        protocol.check_deadlines(asyncio.get_running_loop().time() + 1000)
        await settle()
        assert len(transport.writes) == 1
        assert transport.writes[0].startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert not protocol.tasks
        protocol.data_received(b"defghij")  # the rest, too late: dropped unanswered
        await settle()
        assert len(transport.writes) == 1

    asyncio.run(scenario())
