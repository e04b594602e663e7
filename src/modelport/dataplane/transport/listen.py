"""Taking the listening ports before anything slow happens.

The server binds every port first and only then loads models, so a taken
port is reported at once, in one line naming the address and the transport,
rather than after minutes of loading (or as a traceback from inside a
running server). The REST and metrics sockets are bound and listening here
and handed to uvicorn later; gRPC binds its own port (its Python API takes
no socket), and :func:`check_free` lets it fail the same way first.
"""

from __future__ import annotations

import errno
import os
import socket
from contextlib import suppress

from modelport.errors import ListenFailed

#: Connections the kernel queues while models load and before the first accept
#: (uvicorn's own default).
BACKLOG = 2048


def address_of(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 literal."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _failure(host: str, port: int, transport: str, exc: OSError) -> ListenFailed:
    code = exc.errno if exc.errno is not None else errno.EINVAL
    why = os.strerror(code)
    why = why[:1].lower() + why[1:]
    return ListenFailed(f"cannot listen on {address_of(host, port)} ({transport}): {why}")


def _addresses(host: str, port: int, transport: str) -> list[tuple[int, tuple[str, int]]]:
    try:
        found = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ListenFailed(
            f"cannot listen on {address_of(host, port)} ({transport}): {exc.strerror}"
        ) from None
    unique: list[tuple[int, tuple[str, int]]] = []
    for family, _type, _proto, _name, sockaddr in found:
        entry = (int(family), (str(sockaddr[0]), int(sockaddr[1])))
        if entry not in unique:
            unique.append(entry)
    return unique


def bind_listeners(
    host: str, port: int, transport: str, *, shared: bool = False, listen: bool = True
) -> list[socket.socket]:
    """Sockets bound to every address ``host`` resolves to, listening unless ``listen``
    is False.

    As asyncio would bind them: SO_REUSEADDR (a restart does not wait for
    TIME_WAIT) and IPv6 sockets IPv6-only. With port 0 the first socket's
    port is reused for the others, so one number names the listener.
    ``shared`` sets SO_REUSEPORT: the worker processes of one node each
    listen on the port and the kernel spreads connections over them; the
    node's supervisor holds the ports the same way, bound but not
    listening, so no connection is ever queued on its sockets.
    Raises ListenFailed naming the address and ``transport``.
    """
    bound: list[socket.socket] = []
    try:
        for family, (address, wanted) in _addresses(host, port, transport):
            sock = socket.socket(family, socket.SOCK_STREAM)
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if shared:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            chosen = wanted or (bound[0].getsockname()[1] if len(bound) > 1 else 0)
            try:
                sock.bind((address, chosen))
                if listen:
                    sock.listen(BACKLOG)
            except OSError as exc:
                raise _failure(host, chosen or port, transport, exc) from None
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return bound


def check_free(host: str, port: int, transport: str) -> None:
    """Raise ListenFailed if ``host:port`` cannot be bound now.

    For listeners bound by a library that reports failure in its own words
    (gRPC logs a native error and raises a bare RuntimeError): the same
    check, a moment earlier, fails in ours. Port 0 is always free.
    """
    if port == 0:
        return
    for sock in bind_listeners(host, port, transport):
        with suppress(OSError):
            sock.close()


def port_of(sockets: list[socket.socket]) -> int:
    """The port a listener took (the one the kernel chose, for port 0)."""
    port: int = sockets[0].getsockname()[1]
    return port
