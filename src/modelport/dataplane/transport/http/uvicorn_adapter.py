"""Everything modelport takes from uvicorn beyond its documented API, in one module.

uvicorn documents ``Config``, ``Server.serve`` and ``Server.should_exit``.
modelport needs more than that: JSON errors for requests httptools cannot
parse, the ASGI TLS extension, head and body limits enforced before any app
runs, infer requests answered without an ASGI cycle (``direct.py``), and a
time limit on TLS handshakes. Each of those reaches into uvicorn's httptools
protocol or its server. This module is the only one that does; the rest of
the transport uses the names defined here. ``pyproject.toml`` caps uvicorn
below its next minor release, so an upgrade is a deliberate step, and
``tests/unit/dataplane/test_uvicorn_contract.py`` fails, naming the missing
piece, when the installed uvicorn no longer offers one of these.

What is relied on, exactly:

``uvicorn.protocols.http.httptools_impl.HttpToolsProtocol`` (subclassed)
    * uvicorn builds one per connection as ``cls(config=, server_state=,
      app_state=)`` from ``Config(http=cls)``.
    * Attributes: ``app`` (the loaded app), ``loop``, ``transport`` (set by
      ``connection_made``), ``flow`` (``write_paused``, ``drain()``,
      ``resume_reading()``), ``root_path``, ``pipeline`` (a deque of
      ``(cycle, app)`` queued behind an unfinished answer), ``parser`` (the
      httptools parser: ``get_method``, ``get_http_version``,
      ``should_upgrade``, ``should_keep_alive``), ``server_state``.
    * Per request: ``scope`` (None before the first request; it holds
      ``"method"`` once the head is parsed), ``url``, ``headers``,
      ``expect_100_continue``, and ``cycle``, the current request's cycle
      (None before the first). uvicorn reads a cycle's ``more_body``,
      ``response_started``, ``response_complete``, ``disconnected``,
      ``keep_alive`` and calls ``message_event.set()`` on connection loss,
      shutdown and body arrival: :class:`RequestCycle`, which
      ``direct.DirectCycle`` also satisfies.
    * Hooks overridden and chained with ``super()``: ``connection_made``,
      ``connection_lost``, ``data_received``, ``on_message_begin``,
      ``on_headers_complete``, ``on_body``, ``on_message_complete``.
      Replaced: ``send_400_response(msg)`` (uvicorn's answer to a parse
      error) and ``_unsupported_upgrade_warning()`` (called for an upgrade
      it will not perform). Called: ``on_response_complete()`` (counts the
      request and starts the next pipelined one).

``uvicorn.server.ServerState`` (one per listening server)
    ``connections`` (the open protocols), ``tasks`` (request tasks, which
    graceful shutdown waits for), ``default_headers``; it takes one
    attribute of ours, ``modelport_sweep`` (the deadline sweep's timer).

``uvicorn.Server``
    ``capture_signals()``, a context manager around ``serve``, overridden so
    that uvicorn installs no signal handlers; ``startup`` creates each
    listener with the running loop's ``create_server(..., ssl=...)``,
    ``ssl`` passed as a keyword (the seam :func:`bound_tls_handshakes`
    uses). ``Config`` takes ``ssl_context_factory``, ``http=`` a protocol
    class, ``loop="none"`` and ``ws="none"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from collections.abc import Callable, Coroutine, Iterator
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Protocol

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: The attribute of uvicorn's ServerState that holds the deadline sweep's timer.
SWEEP_SLOT = "modelport_sweep"


class _Event(Protocol):
    def set(self) -> None: ...


class RequestCycle(Protocol):
    """What uvicorn's protocol reads and writes of the current request's cycle."""

    more_body: bool
    response_started: bool
    response_complete: bool
    disconnected: bool
    keep_alive: bool

    @property
    def message_event(self) -> _Event: ...


def _set_cycle(protocol: HttpToolsProtocol, cycle: RequestCycle) -> None:
    protocol.cycle = cycle  # type: ignore[assignment]


class UvicornHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, its private state under names this module owns.

    Subclasses use these properties and methods, plus ``loop``, ``transport``
    and the hooks the module docstring lists; nothing else of uvicorn's.

    The per-request reads are properties over ``operator.attrgetter``, which
    run in C: the protocol reads them several times per request, and a
    Python getter there costs a frame each time.
    """

    if TYPE_CHECKING:

        @property
        def served_app(self) -> object:
            """The ASGI app uvicorn loaded, as the server was given it."""

        @property
        def request_cycle(self) -> RequestCycle | None:
            """The cycle of the request being received or answered; None before the first."""

        @request_cycle.setter
        def request_cycle(self, cycle: RequestCycle) -> None: ...

        @property
        def request_parser(self) -> httptools.HttpRequestParser:
            """The httptools parser of this connection."""

        @property
        def request_scope(self) -> dict[str, Any] | None:
            """The scope of the request being received; None before the first
            (uvicorn's ``__init__`` sets it to None)."""

        @property
        def request_target(self) -> bytes:
            """The raw request target of the request being received."""

        @property
        def request_headers(self) -> list[tuple[bytes, bytes]]:
            """The headers received so far, names lower-cased."""

        @property
        def expects_continue(self) -> bool:
            """Whether the request being received sent ``Expect: 100-continue``."""

        @property
        def mount_path(self) -> str:
            """The server's ``root_path`` (empty unless configured)."""

    else:
        served_app = property(attrgetter("app"))
        request_cycle = property(attrgetter("cycle"), _set_cycle)
        request_parser = property(attrgetter("parser"))
        request_scope = property(attrgetter("scope"))
        request_target = property(attrgetter("url"))
        request_headers = property(attrgetter("headers"))
        expects_continue = property(attrgetter("expect_100_continue"))
        mount_path = property(attrgetter("root_path"))

    def is_queued(self, cycle: RequestCycle | None) -> bool:
        """Whether ``cycle`` waits behind an unfinished answer (HTTP pipelining)."""
        return any(c is cycle for c, _ in self.pipeline)

    @property
    def default_headers(self) -> list[tuple[bytes, bytes]]:
        """Headers uvicorn adds to every answer (``date``, ``server`` when on)."""
        return self.server_state.default_headers

    def start_request_task(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as a request task: graceful shutdown waits for it like an ASGI cycle."""
        task = self.loop.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    @property
    def write_paused(self) -> bool:
        """Whether the transport asked us to stop writing (its buffer is over its limit)."""
        paused: bool = self.flow.write_paused
        return paused

    async def drain_writes(self) -> None:
        """Wait until the transport's write buffer is below its limit again."""
        if self.flow.write_paused:
            await self.flow.drain()

    def keep_reading(self) -> None:
        """Undo uvicorn's read pause (taken while a body is buffered or a request queued)."""
        self.flow.resume_reading()

    def sweep_while_connected(
        self, interval: float, visit: Callable[[object, float], None]
    ) -> None:
        """Keep one sweep per server scheduled: ``visit(connection, now)`` for each connection.

        The timer hangs on uvicorn's ServerState, which there is one of per
        listening server, so a thousand connections share one timer; it stops
        once the server has no connection and starts again with the next.
        """
        _sweep_later(self.loop, self.server_state, interval, visit)


def _sweep_later(
    loop: asyncio.AbstractEventLoop,
    state: Any,
    interval: float,
    visit: Callable[[object, float], None],
) -> None:
    if getattr(state, SWEEP_SLOT, None) is None:
        setattr(state, SWEEP_SLOT, loop.call_later(interval, _sweep, loop, state, interval, visit))


def _sweep(
    loop: asyncio.AbstractEventLoop,
    state: Any,
    interval: float,
    visit: Callable[[object, float], None],
) -> None:
    setattr(state, SWEEP_SLOT, None)
    now = loop.time()
    for connection in list(state.connections):
        visit(connection, now)
    if state.connections:
        _sweep_later(loop, state, interval, visit)


class UvicornServer(uvicorn.Server):
    """uvicorn without its own signal handling: the composition root owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def uvicorn_server(
    app: object,
    *,
    host: str,
    port: int,
    protocol: type[UvicornHttpProtocol],
    shutdown_grace: float,
    ssl_context: Callable[[], ssl.SSLContext] | None = None,
) -> UvicornServer:
    """A uvicorn server for ``app`` on the listeners it is later handed, speaking ``protocol``.

    ``ssl_context`` gives the live TLS context (a rotation reloads it in place);
    None serves plain HTTP.
    """
    return UvicornServer(
        uvicorn.Config(
            app,  # type: ignore[arg-type]
            host=host,
            port=port,
            loop="none",
            http=protocol,
            lifespan="off",
            # No route speaks WebSocket: an upgrade request is answered as the plain
            # HTTP request it also is (401, 403, 404 in the usual JSON), never 101.
            ws="none",
            access_log=False,
            log_config=None,
            server_header=False,
            timeout_graceful_shutdown=int(shutdown_grace) or None,
            timeout_keep_alive=30,
            # The peer address is what brute-force blocking and the audit log key
            # on; X-Forwarded-For from any client, the local host included, must
            # not be able to change it. Only a trusted proxy's, known by its
            # client certificate, does (protocol.py, trusted_proxy_identities).
            proxy_headers=False,
            ssl_context_factory=(
                (lambda _config, _default: ssl_context()) if ssl_context is not None else None
            ),
        )
    )


def bound_tls_handshakes(loop: asyncio.AbstractEventLoop, seconds: float) -> None:
    """Give every TLS listener created on ``loop`` from now on ``seconds`` per handshake.

    asyncio bounds a server-side TLS handshake by ``create_server``'s
    ``ssl_handshake_timeout``, 60 s unless given, and uvicorn gives none. So a
    client could open connections to a TLS port, send nothing (or half a
    ClientHello), and hold each for a minute before any limit of ours applies:
    the request-head clock starts only once the handshake is done. The
    handshake gets the time the head gets, ``header_timeout``.

    uvicorn's one seam for this: it calls the running loop's ``create_server``
    with ``ssl=`` as a keyword, so this wraps that method on the loop the
    server runs in; call it before the servers start. A connection whose
    handshake is not done in time is closed. Plain listeners are left alone
    (asyncio refuses the setting without ``ssl``). The contract test and
    ``test_tls.py::test_a_stalled_handshake_is_cut_off_after_header_timeout``
    check that uvicorn still calls it that way.
    """
    create_server = loop.create_server

    @functools.wraps(create_server)
    async def bounded(*args: Any, **kwargs: Any) -> asyncio.Server:
        if kwargs.get("ssl") is not None:
            kwargs.setdefault("ssl_handshake_timeout", seconds)
        return await create_server(*args, **kwargs)

    loop.create_server = bounded  # type: ignore[method-assign]
