"""The gateway's residency check: Envoy's HTTP external authorization service.

Envoy asks it about every request (same method and path, no body, only the
``Authorization`` and ``X-Data-Residency`` headers) and it always answers
200: it never refuses anything, since the node authenticates and authorizes
the request itself with the same bearer token. What it answers is where the
request may go: the ``x-data-residency`` value for the routes, and the
removal of the "unchecked" mark, which is all that tells the routes the check
took place.

Tokens are looked up the way the nodes look them up (the shared store's API
keys, a salted HMAC compared in constant time) but independently of the
node's admission code, which the gateway must not import. A verified key's
tenant is cached for one second, like the nodes' identity cache, so a
revoked key's residency goes away as quickly as its access. Tokens are never
logged; only their SHA-256 is kept, as a cache key.

Only Envoy may ask: the service listens on a private Unix socket and drops
any connection from another process (``private_socket``), so no local
program can use it to learn which tenant a token belongs to.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from modelport.gateway.authz import (
    RESIDENCY_HEADER,
    UNCHECKED_HEADER,
    Caller,
    TenantLookup,
    decide,
)
from modelport.gateway.private_socket import bind_private, peer_pid

log = logging.getLogger("modelport.gateway")

#: Seconds a verified key's tenant is reused (the nodes' identity cache: 1 s).
CACHE_TTL_S = 1.0

#: Cached keys kept at most; the oldest go first.
MAX_CACHED = 10_000

#: Seconds the store is left alone after it failed: lookups meanwhile say it is unreachable
#: at once instead of each waiting for the connection to fail again.
RETRY_AFTER_S = 1.0

#: Seconds between two warnings that the store is unreachable.
WARN_INTERVAL_S = 30.0

#: Envoy's HTTP ext_authz: a response header listing request headers to remove.
HEADERS_TO_REMOVE = "x-envoy-auth-headers-to-remove"

#: Methods Envoy may forward (the check keeps the request's own method).
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

_API_KEY = re.compile(r"mpk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")


def bearer(header: str | None) -> str | None:
    """The token of ``Bearer <token>``; "" for a header that is not one (unverifiable)."""
    if header is None or not header.strip():
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return ""
    return token.strip()


class KeyTenants:
    """Bearer token -> the caller's tenant, from the fleet's shared key store.

    ``open_store`` returns an object with ``get(key_id)`` (a KeyStore); it is
    called on first use and again after a failure, so a store that was away
    at start is picked up once it answers.
    """

    def __init__(
        self,
        open_store: Callable[[], Any],
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._open_store = open_store
        self._store: Any = None
        self._clock = clock
        self._wall = wall
        self._cache: dict[bytes, tuple[TenantLookup, float]] = {}
        self._warned_at: float | None = None
        self._retry_at = 0.0
        # Lookups run in worker threads at once: one store, one consistent cache.
        self._lock = threading.Lock()

    def lookup(self, header: str | None) -> TenantLookup:
        """Blocking (reads the store): call it in a thread."""
        token = bearer(header)
        if token is None:
            return TenantLookup(Caller.ANONYMOUS)
        match = _API_KEY.fullmatch(token)
        if match is None:
            # Not an API key: a JWT or garbage, neither verifiable here.
            return TenantLookup(Caller.UNKNOWN)
        digest = hashlib.sha256(token.encode("ascii")).digest()
        now = self._clock()
        with self._lock:
            hit = self._cache.get(digest)
        if hit is not None and hit[1] > now:
            return hit[0]
        if now < self._retry_at:
            return TenantLookup(Caller.UNREACHABLE)
        try:
            found = self._verify(match.group(1), match.group(2))
        except Exception as exc:  # the store's driver errors are not one type
            with self._lock:
                self._store = None
                self._retry_at = self._clock() + RETRY_AFTER_S
                self._warn(exc)
            return TenantLookup(Caller.UNREACHABLE)
        with self._lock:
            self._cache.pop(digest, None)
            if found.caller is Caller.KEY:
                if len(self._cache) >= MAX_CACHED:
                    del self._cache[next(iter(self._cache))]
                self._cache[digest] = (found, now + CACHE_TTL_S)
        return found

    def _verify(self, key_id: str, secret: str) -> TenantLookup:
        with self._lock:
            if self._store is None:
                self._store = self._open_store()
            store = self._store
        key = store.get(key_id)
        salt = key.salt if key is not None else "00" * 32
        expected = key.secret_hash if key is not None else "0" * 64
        actual = hmac.new(bytes.fromhex(salt), secret.encode("ascii"), hashlib.sha256)
        if key is None or not hmac.compare_digest(actual.hexdigest(), expected):
            return TenantLookup(Caller.UNKNOWN)
        if key.revoked_at is not None:
            return TenantLookup(Caller.UNKNOWN)
        if key.expires_at is not None and key.expires_at <= self._wall():
            return TenantLookup(Caller.UNKNOWN)
        return TenantLookup(Caller.KEY, key.tenant)

    def _warn(self, exc: Exception) -> None:
        now = self._clock()
        if self._warned_at is None or now - self._warned_at >= WARN_INTERVAL_S:
            self._warned_at = now
            log.warning(
                "cannot read API keys from the state store (%s): callers with a token "
                "stay in the first region",
                type(exc).__name__,
            )


def store_keys(url: str) -> Callable[[], Any]:
    """Opens the key store at ``url`` (imported only when a fleet has a store)."""

    def open_store() -> Any:
        from modelport.controlplane.store.database import Database
        from modelport.controlplane.store.keys import KeyStore

        return KeyStore(Database.open(url))

    return open_store


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the gateway owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _RefusalLog:
    """Says when connections from other processes are dropped, at most every 30 s."""

    def __init__(self) -> None:
        self._warned_at: float | None = None
        self.count = 0

    def refused(self, pid: int | None) -> None:
        self.count += 1
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= WARN_INTERVAL_S:
            self._warned_at = now
            log.warning(
                "residency check: dropped a connection from process %s, which is not "
                "the gateway's Envoy (%d so far)",
                pid if pid is not None else "(unknown)",
                self.count,
            )


def _only_from(allowed: Callable[[int], bool], refusals: _RefusalLog) -> type[HttpToolsProtocol]:
    """uvicorn's HTTP/1.1 protocol (httptools, as uvicorn would pick), closing connections
    whose peer ``allowed`` rejects."""

    class PeerChecked(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            sock = transport.get_extra_info("socket")
            pid = peer_pid(sock) if sock is not None else None
            if pid is None or not allowed(pid):
                refusals.refused(pid)
                # Before a byte is read: the caller learns nothing, not even an error page.
                transport.abort()

    return PeerChecked


class AuthzServer:
    """The check as an HTTP service on a private Unix socket that only Envoy may use."""

    def __init__(
        self,
        regions: Callable[[], Sequence[str]],
        tenant_residency: dict[str, list[str]],
        tenants: KeyTenants | None,
        allowed_peer: Callable[[int], bool] = lambda pid: False,
    ) -> None:
        """``regions``: the fleet's regions now, the first region first.

        ``allowed_peer``: whether a process id may ask (the gateway's Envoy, whose
        id changes when it is restarted).
        """
        self._regions = regions
        self._tenant_residency = tenant_residency
        self._tenants = tenants
        self._allowed_peer = allowed_peer
        self.refusals = _RefusalLog()
        self._socket: socket.socket | None = None
        self._path: Path | None = None
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def path(self) -> Path:
        """The socket's path, for Envoy's cluster."""
        assert self._path is not None, "start() first"
        return self._path

    async def check(self, request: Request) -> Response:
        try:
            headers = await self._decision(request)
        except Exception:
            # Never a refusal: the request stays in the first region, as unchecked ones do.
            log.exception("residency check failed")
            return Response(status_code=200)
        return Response(status_code=200, headers=headers)

    async def _decision(self, request: Request) -> dict[str, str]:
        authorization = request.headers.get("authorization")
        if self._tenants is None:
            # No store to read keys from: a token's tenant cannot be known.
            no_token = bearer(authorization) is None
            lookup = TenantLookup(Caller.ANONYMOUS if no_token else Caller.UNKNOWN)
        else:
            lookup = await asyncio.to_thread(self._tenants.lookup, authorization)
        client = request.headers.get(RESIDENCY_HEADER)
        value = decide(self._regions(), self._tenant_residency, client, lookup)
        headers = {HEADERS_TO_REMOVE: UNCHECKED_HEADER}
        if value is not None:
            headers[RESIDENCY_HEADER] = value
        return headers

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.check, methods=METHODS)])

    async def start(self, path: Path) -> None:
        """Listens at ``path``, whose folder must be private to this user."""
        sock = bind_private(path)
        self._socket, self._path = sock, path
        config = uvicorn.Config(
            self.app(),
            http=_only_from(self._allowed_peer, self.refusals),
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._socket is not None:
            self._socket.close()
        if self._path is not None:
            self._path.unlink(missing_ok=True)
