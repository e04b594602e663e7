"""Job callbacks: a signed POST to the caller's URL when a job ends (docs/jobs.md).

Who may be called. A callback URL is checked at submission against the
server's allow-list (``job_callback_hosts``): an entry ``host`` allows that
host on its scheme's default port, ``host:port`` that port. Anything else is
refused with 400 naming the host, so a caller cannot make the server probe
its own network.

DNS rebinding. A name on the list could later resolve elsewhere (to a
loopback or private address, say). So each delivery resolves the name once,
refuses it when any address it got is not a public one, and connects to the
address it checked (the name goes in ``Host`` and, for https, in the TLS
server name, so the certificate is still checked against the name). An
address on a private network or loopback is reached only when the
allow-list names it as an IP literal. Redirects are never followed and
proxy settings of the environment are ignored: the connection goes where
the check said.

What is sent. A small JSON body (the job's id, state, model, status and
where its result is, never the result itself: results may be large or
binary and the caller fetches them with its own credentials), signed with
HMAC-SHA256 over ``timestamp + "." + body`` with the server's
``job_callback_secret``. The receiver recomputes the signature, refuses an
old timestamp (a replay), and drops a job id it has seen (delivery is at
least once).

Delivery. Rows of ``job_callbacks`` are due once their job is finished; a
sender claims one with a lease (like a job), POSTs it, and records the
outcome: any 2xx is delivered, anything else (an error status, a redirect, a
timeout, a refused address) is tried again after a backoff that doubles up
to ``backoff_max_s``, until ``give_up_s`` after the job ended. Pending
deliveries live in the store, so a restarted server (or another worker)
resumes them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from modelport.clock import Clock, SystemClock
from modelport.controlplane.job_writer import JobWriter
from modelport.controlplane.store.jobs import BatchState, JobStore, StoredJob
from modelport.controlplane.waiting import wait_any
from modelport.errors import InvalidRequest, ModelportError

log = logging.getLogger("modelport.jobs.callbacks")

SIGNATURE_HEADER = "X-Modelport-Signature"
TIMESTAMP_HEADER = "X-Modelport-Timestamp"
JOB_HEADER = "X-Modelport-Job"
ATTEMPT_HEADER = "X-Modelport-Delivery-Attempt"
#: The request header naming a job's callback URL at submission.
CALLBACK_HEADER = "X-Callback-Url"
URL_MAX = 2048
JOBS_PATH = "/api/v1/jobs/"
_DEFAULT_PORTS = {"http": 80, "https": 443}

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Target:
    """A checked callback URL, split for a connection pinned to a checked address."""

    url: str
    scheme: str
    host: str
    """Lower case; an IPv6 literal without brackets."""
    port: int
    path: str
    literal: Address | None
    """The host when it is an IP literal: connected to as it is, never resolved."""

    @property
    def host_header(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return shown if self.port == _DEFAULT_PORTS[self.scheme] else f"{shown}:{self.port}"


def _entry(host: str, port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


class CallbackPolicy:
    """The allow-list and the signing key; ``check`` runs at submission."""

    def __init__(self, hosts: Iterable[str], secret: bytes | None) -> None:
        self.hosts = frozenset(h.lower() for h in hosts)
        self.secret = secret

    def check(self, url: str) -> Target:
        """The URL as a Target; InvalidRequest (400) naming what is wrong otherwise."""
        if not self.hosts or self.secret is None:
            raise InvalidRequest(
                "this server sends no job callbacks (its job_callback_hosts is empty)"
            )
        if len(url) > URL_MAX or not url.isascii() or not url.isprintable():
            raise InvalidRequest(f"callback URL is malformed (at most {URL_MAX} ASCII characters)")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise InvalidRequest("callback URL is malformed") from None
        scheme = parts.scheme.lower()
        host = (parts.hostname or "").lower()
        if scheme not in _DEFAULT_PORTS or not host:
            raise InvalidRequest("callback URL must be an absolute http or https URL")
        if parts.username is not None or parts.password is not None:
            raise InvalidRequest("callback URL must not carry credentials")
        effective = port if port is not None else _DEFAULT_PORTS[scheme]
        allowed = _entry(host, effective) in self.hosts or (
            effective == _DEFAULT_PORTS[scheme] and _entry(host, None) in self.hosts
        )
        if not allowed:
            raise InvalidRequest(
                f"callback host {_entry(host, port)!r} is not on this server's job_callback_hosts"
            )
        try:
            literal: Address | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return Target(url, scheme, host, effective, path, literal)


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The signature header's value: HMAC-SHA256 over ``timestamp.body``."""
    digest = hmac.new(secret, str(timestamp).encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def callback_body(job: StoredJob, batch: BatchState | None) -> bytes:
    """What the receiver gets: the job as it ended and where its result is."""
    body: dict[str, Any] = {
        "id": job.id,
        "state": job.state,
        "model": job.model,
        "version": job.version,
        "status": job.status,
        "error": job.error,
        "finished": job.finished_at.isoformat() if job.finished_at is not None else None,
        "location": JOBS_PATH + job.id,
    }
    if job.status is not None:
        body["result"] = JOBS_PATH + job.id + "/result"
    if batch is not None:
        body["batch"] = {
            "output": batch.output,
            "rows": batch.rows,
            "succeeded": batch.succeeded,
            "failed": batch.failed,
        }
    return json.dumps(body, separators=(",", ":")).encode()


class Refused(Exception):
    """The target resolved to an address the allow-list does not cover."""


async def resolve(target: Target) -> Address:
    """The address to connect to: the literal, or the name's, checked to be public."""
    if target.literal is not None:
        return target.literal
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise Refused(f"cannot resolve {target.host}: {exc.strerror or exc}") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses:
        raise Refused(f"{target.host} has no address")
    for address in addresses:
        if not address.is_global or address.is_multicast:
            raise Refused(
                f"{target.host} resolves to {address}, which is not public; "
                "list it as an IP literal in job_callback_hosts to allow it"
            )
    return addresses[0]


class Post(Protocol):
    """Sends one callback; returns the HTTP status, raises OSError/httpx errors."""

    def __call__(
        self, target: Target, address: Address, headers: dict[str, str], body: bytes
    ) -> Awaitable[int]: ...


def http_post(timeout_s: float) -> Callable[..., Awaitable[int]]:
    """POST over a connection to ``address`` only: no redirects, no proxies."""

    async def post(target: Target, address: Address, headers: dict[str, str], body: bytes) -> int:
        host = f"[{address}]" if address.version == 6 else str(address)
        url = f"{target.scheme}://{host}:{target.port}{target.path}"
        extensions = {"sni_hostname": target.host} if target.literal is None else {}
        async with httpx.AsyncClient(
            timeout=timeout_s, follow_redirects=False, trust_env=False
        ) as client:
            response = await client.post(
                url,
                content=body,
                headers={**headers, "Host": target.host_header},
                extensions=extensions,
            )
        return response.status_code

    return post


@dataclass(frozen=True)
class CallbackSettings:
    timeout_s: float = 10.0
    """Seconds one POST may take."""
    backoff_s: float = 1.0
    """Wait before the first retry; doubled after each failure."""
    backoff_max_s: float = 60.0
    give_up_s: float = 3600.0
    """Seconds after the job ended past which a failing delivery is abandoned."""
    lease_s: float = 60.0
    """How long a claimed delivery is this sender's (more than a POST can take)."""
    poll_s: float = 1.0
    """How often the sender looks for deliveries due (jobs ended on other workers)."""
    batch: int = 8
    """Deliveries sent at once."""


class CallbackSender:
    """Sends the callbacks that are due, from the store, until stopped."""

    def __init__(
        self,
        store: JobStore,
        policy: CallbackPolicy,
        settings: CallbackSettings | None = None,
        *,
        post: Post | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.settings = settings if settings is not None else CallbackSettings()
        self.post: Post = post if post is not None else http_post(self.settings.timeout_s)
        self.clock = clock if clock is not None else SystemClock()
        self.wake = asyncio.Event()
        self.writer = JobWriter(store)
        """Where claims and outcomes are written. The job runner hands its own here, so
        every job write of the process shares one writer thread and one write lock
        instead of competing for SQLite's lock (whose busy wait sleeps up to 100 ms)."""

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.wake.clear()
            try:
                sent = await self.deliver_due()
            except ModelportError as exc:
                log.warning("cannot read job callbacks: %s", exc.message)
                sent = 0
            if sent < self.settings.batch:
                await wait_any(stop, self.wake, self.settings.poll_s)

    async def deliver_due(self) -> int:
        """Send every delivery due now (one claim's worth); how many were tried."""
        limit, lease_s = self.settings.batch, self.settings.lease_s
        due = await self.writer.write(
            lambda conn: self.store.claim_callbacks_in(conn, limit, lease_s)
        )
        if due:
            await asyncio.gather(*(self._deliver(job, url, tries) for job, url, tries in due))
        return len(due)

    async def _deliver(self, job: StoredJob, url: str, tries: int) -> None:
        error: str | None = None
        final = False
        try:
            batch = await asyncio.to_thread(self.store.batch_of, job.id)
            body = callback_body(job, batch)
            target = self.policy.check(url)
            address = await resolve(target)
            assert self.policy.secret is not None  # check() refuses without one
            timestamp = int(self.clock.wall())
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "modelport-callback",
                JOB_HEADER: job.id,
                TIMESTAMP_HEADER: str(timestamp),
                SIGNATURE_HEADER: sign(self.policy.secret, timestamp, body),
                ATTEMPT_HEADER: str(tries + 1),
            }
            status = await self.post(target, address, headers, body)
            if not 200 <= status < 300:
                error = f"the receiver answered {status}"
        except InvalidRequest as exc:  # the allow-list changed since submission: never allowed
            error, final = str(exc), True
        except Refused as exc:
            error = str(exc)
        except (OSError, httpx.HTTPError) as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        retry_at = None
        if error is not None:
            wait = min(self.settings.backoff_s * 2**tries, self.settings.backoff_max_s)
            now = self.store.now()
            retry_at = now + timedelta(seconds=wait)
            ended = job.finished_at if job.finished_at is not None else now
            if final or retry_at > ended + timedelta(seconds=self.settings.give_up_s):
                retry_at = None
                log.warning(
                    "job callback abandoned: %s", error, extra={"job": job.id, "tries": tries + 1}
                )
            else:
                log.info("job callback failed: %s", error, extra={"job": job.id})
        try:
            await self.writer.write(
                lambda conn: self.store.callback_done_in(
                    conn, job.id, error=error, retry_at=retry_at
                )
            )
        except ModelportError as exc:  # the claim lapses; the delivery is tried again
            log.warning("cannot record a job callback: %s", exc.message, extra={"job": job.id})
