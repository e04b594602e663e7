"""The direct infer path under ASGI middleware: off, said once at startup, never silently.

A middleware around the fast path must see infer requests, so the protocol
sends them through the ASGI app; ``announce_direct_path`` logs one warning
naming the middleware when the server is built.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from modelport.dataplane.transport.http.direct import DirectCycle
from modelport.dataplane.transport.http.fastpath import InferenceFastPath, InferRoute
from modelport.dataplane.transport.http.guard import DeclaredRoutes
from modelport.dataplane.transport.http.protocol import announce_direct_path, limited_protocol
from tests.unit.dataplane.test_http_direct import EchoRoute, Fallback, Transport, post, settle


class Recorder:
    """An ASGI middleware: notes each path, then passes the request on."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.paths: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.paths.append(scope["path"])
        await self.app(scope, receive, send)


def fast_path() -> InferenceFastPath:
    route: InferRoute = EchoRoute()
    return InferenceFastPath(route, Fallback(), DeclaredRoutes([]))


def direct_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "direct infer path off" in r.getMessage()]


def test_the_bare_fast_path_keeps_the_direct_path_and_logs_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="modelport.http"):
        assert announce_direct_path(fast_path())
    assert direct_warnings(caplog) == []


def test_middleware_around_the_fast_path_turns_it_off_with_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="modelport.http"):
        assert not announce_direct_path(Recorder(Recorder(fast_path())))
    [line] = direct_warnings(caplog)
    assert "Recorder" in line


def test_an_app_without_a_fast_path_has_nothing_to_announce(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="modelport.http"):
        assert not announce_direct_path(Recorder(Fallback()))
    assert direct_warnings(caplog) == []


def test_middleware_sees_infer_requests_and_they_get_the_same_answer() -> None:
    async def scenario() -> None:
        middleware = Recorder(fast_path())
        cls = limited_protocol(32 * 1024, 10.0, 60.0)
        config = uvicorn.Config(
            middleware, http=cls, lifespan="off", log_config=None, proxy_headers=False
        )
        config.load()
        protocol = cls(config=config, server_state=ServerState(), app_state={})
        transport = Transport()
        protocol.connection_made(transport)
        protocol.data_received(post("/v2/models/m/infer", b"abc"))
        assert not isinstance(protocol.cycle, DirectCycle)
        await settle()
        assert middleware.paths == ["/v2/models/m/infer"]
        answer = b"".join(transport.writes)
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert answer.endswith(b"m:abc")

    asyncio.run(scenario())
