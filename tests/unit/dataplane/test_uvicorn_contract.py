"""What uvicorn_adapter.py relies on, checked against the installed uvicorn.

Each test names the piece of uvicorn it checks; a failure says which
attribute, hook or call is gone, so an upgrade that breaks the adapter
fails here rather than as a wrong answer on the wire. A real protocol
instance is driven over a transport that records writes.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
from collections import deque
from typing import Any

import httptools
import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from modelport.dataplane.transport.http.uvicorn_adapter import (
    SWEEP_SLOT,
    UvicornHttpProtocol,
    UvicornServer,
    bound_tls_handshakes,
    uvicorn_server,
)
from tests.unit.dataplane.fake_transport import Transport

VERSION = uvicorn.__version__


def changed(what: str) -> str:
    return f"uvicorn {VERSION} changed {what}; uvicorn_adapter.py relies on it"


class Recording(UvicornHttpProtocol):
    """Records the hooks uvicorn calls that the adapter's users replace."""

    calls: list[str]

    def send_400_response(self, msg: str) -> None:
        self.calls.append("send_400_response")
        super().send_400_response(msg)

    def _unsupported_upgrade_warning(self) -> None:
        self.calls.append("_unsupported_upgrade_warning")


async def noop_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def connection() -> tuple[Recording, Transport, ServerState]:
    server = uvicorn_server(
        noop_app, host="127.0.0.1", port=0, protocol=Recording, shutdown_grace=0
    )
    server.config.load()
    state = ServerState()
    protocol = Recording(config=server.config, server_state=state, app_state={})
    protocol.calls = []
    transport = Transport()
    protocol.connection_made(transport)
    return protocol, transport, state


def test_the_protocol_class_is_where_the_adapter_imports_it() -> None:
    assert issubclass(UvicornHttpProtocol, HttpToolsProtocol), changed("HttpToolsProtocol")


@pytest.mark.parametrize(
    ("hook", "parameters"),
    [
        ("connection_made", ["self", "transport"]),
        ("connection_lost", ["self", "exc"]),
        ("data_received", ["self", "data"]),
        ("on_message_begin", ["self"]),
        ("on_headers_complete", ["self"]),
        ("on_body", ["self", "body"]),
        ("on_message_complete", ["self"]),
        ("on_response_complete", ["self"]),
        ("send_400_response", ["self", "msg"]),
        ("_unsupported_upgrade_warning", ["self"]),
        ("shutdown", ["self"]),
    ],
)
def test_the_protocol_hooks_keep_their_names_and_parameters(
    hook: str, parameters: list[str]
) -> None:
    method = getattr(HttpToolsProtocol, hook, None)
    assert method is not None, changed(f"HttpToolsProtocol.{hook} (it is gone)")
    found = list(inspect.signature(method).parameters)
    assert found == parameters, changed(f"HttpToolsProtocol.{hook}'s parameters to {found}")


def test_the_protocol_state_before_any_request() -> None:
    async def scenario() -> None:
        protocol, transport, state = connection()
        for name in ("app", "loop", "transport", "flow", "root_path", "pipeline", "parser"):
            assert hasattr(protocol, name), changed(f"the protocol attribute {name!r}")
        assert protocol.served_app is noop_app, changed("protocol.app (not the loaded app)")
        assert protocol.transport is transport, changed("protocol.transport")
        assert isinstance(protocol.pipeline, deque), changed("protocol.pipeline (not a deque)")
        assert isinstance(protocol.request_parser, httptools.HttpRequestParser), changed(
            "protocol.parser (not an httptools parser)"
        )
        for name in ("get_method", "get_http_version", "should_upgrade", "should_keep_alive"):
            assert callable(getattr(protocol.parser, name, None)), changed(f"parser.{name}")
        assert protocol.server_state is state, changed("protocol.server_state")
        assert protocol.request_scope is None, changed("protocol.scope before a request")
        assert protocol.request_cycle is None, changed("protocol.cycle before a request")
        assert protocol.mount_path == "", changed("protocol.root_path")
        flow = protocol.flow
        for name in ("write_paused", "drain", "resume_reading"):
            assert hasattr(flow, name), changed(f"FlowControl.{name}")
        assert protocol.write_paused is False, changed("FlowControl.write_paused")
        await protocol.drain_writes()
        protocol.keep_reading()

    asyncio.run(scenario())


def test_the_server_state() -> None:
    state = ServerState()
    assert isinstance(state.connections, set), changed("ServerState.connections (not a set)")
    assert isinstance(state.tasks, set), changed("ServerState.tasks (not a set)")
    assert isinstance(state.default_headers, list), changed("ServerState.default_headers")
    setattr(state, SWEEP_SLOT, None)  # the deadline sweep hangs its timer here


def test_a_request_sets_the_per_request_state_and_its_cycle() -> None:
    async def scenario() -> None:
        protocol, transport, state = connection()
        assert protocol in state.connections, changed("connection_made (no longer registers)")
        protocol.data_received(
            b"POST /x?q=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
        )
        scope = protocol.request_scope
        assert scope is not None, changed("protocol.scope (not set by on_message_begin)")
        assert scope.get("method") == "POST", changed("scope['method'] after the head")
        assert protocol.request_target == b"/x?q=1", changed("protocol.url")
        assert (b"content-length", b"2") in protocol.request_headers, changed("protocol.headers")
        assert protocol.expects_continue, changed("protocol.expect_100_continue")
        cycle = protocol.request_cycle
        assert cycle is not None, changed("protocol.cycle (not set by on_headers_complete)")
        for name in (
            "more_body",
            "response_started",
            "response_complete",
            "disconnected",
            "keep_alive",
        ):
            assert isinstance(getattr(cycle, name, None), bool), changed(f"cycle.{name}")
        assert callable(getattr(cycle.message_event, "set", None)), changed("cycle.message_event")
        assert len(protocol.tasks) == 1, changed("ServerState.tasks (the ASGI task not in it)")
        assert not protocol.is_queued(cycle)
        protocol.data_received(b"ok")
        await asyncio.sleep(0.05)
        assert cycle.response_complete, changed("the cycle's response_complete")
        assert b"".join(transport.writes).startswith(b"HTTP/1.1 204")

    asyncio.run(scenario())


def test_a_cycle_of_ours_replaces_uvicorns_and_is_told_of_connection_loss() -> None:
    class Cycle:
        more_body = True
        response_started = False
        response_complete = False
        disconnected = False
        keep_alive = True
        told = False

        @property
        def message_event(self) -> Cycle:
            return self

        def set(self) -> None:
            self.told = True

    async def scenario() -> None:
        protocol, _, _ = connection()
        cycle = Cycle()
        protocol.request_cycle = cycle
        done = asyncio.Event()

        async def work() -> None:
            await done.wait()

        protocol.start_request_task(work())
        assert len(protocol.tasks) == 1, changed("ServerState.tasks")
        protocol.connection_lost(None)
        assert cycle.disconnected and cycle.told, changed("connection_lost's use of the cycle")
        done.set()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not protocol.tasks, changed("ServerState.tasks (a finished task stays)")

    asyncio.run(scenario())


def test_a_request_httptools_cannot_parse_goes_to_send_400_response() -> None:
    async def scenario() -> None:
        protocol, _, _ = connection()
        protocol.data_received(b"POST / HTTP/1.1\r\nContent-Length: nope\r\n\r\n")
        assert protocol.calls == ["send_400_response"], changed("the parse error path")

    asyncio.run(scenario())


def test_an_upgrade_uvicorn_will_not_perform_goes_to_the_warning_hook() -> None:
    async def scenario() -> None:
        protocol, _, _ = connection()
        protocol.config.ws_protocol_class = None  # what ws="none" gives
        protocol.ws_protocol_class = None
        protocol.data_received(
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        assert "_unsupported_upgrade_warning" in protocol.calls, changed("the upgrade path")

    asyncio.run(scenario())


def test_the_server_takes_our_config_and_no_signal_handlers() -> None:
    server = uvicorn_server(
        noop_app, host="127.0.0.1", port=0, protocol=Recording, shutdown_grace=1
    )
    assert isinstance(server, uvicorn.Server)
    assert "capture_signals" in vars(uvicorn.Server), changed("Server.capture_signals")
    assert "sockets" in inspect.signature(uvicorn.Server.serve).parameters, changed(
        "Server.serve(sockets=)"
    )
    with UvicornServer.capture_signals(server):
        pass
    config = server.config
    config.load()
    assert config.http_protocol_class is Recording, changed("Config(http=a protocol class)")
    assert config.ws_protocol_class is None, changed('Config(ws="none")')
    assert "ssl_context_factory" in inspect.signature(uvicorn.Config).parameters, changed(
        "Config(ssl_context_factory=)"
    )


def test_startup_creates_listeners_with_ssl_as_a_keyword() -> None:
    """bound_tls_handshakes wraps loop.create_server and reads its ``ssl`` keyword."""

    async def scenario() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        seen: dict[str, Any] = {}
        create_server = loop.create_server

        async def recording(*args: Any, **kwargs: Any) -> asyncio.Server:
            seen.update(kwargs)
            return await create_server(*args, **kwargs)

        loop.create_server = recording  # type: ignore[method-assign]
        bound_tls_handshakes(loop, 3.0)
        server = uvicorn_server(
            noop_app, host="127.0.0.1", port=0, protocol=Recording, shutdown_grace=0
        )
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        try:
            serving = asyncio.create_task(server.serve(sockets=[sock]))
            for _ in range(200):
                if server.started or serving.done():
                    break
                await asyncio.sleep(0.01)
            server.should_exit = True
            await serving
        finally:
            sock.close()
        return seen

    seen = asyncio.run(scenario())
    assert "ssl" in seen, changed("Server.startup (loop.create_server without ssl= keyword)")
    assert "ssl_handshake_timeout" not in seen  # a plain listener is left alone
