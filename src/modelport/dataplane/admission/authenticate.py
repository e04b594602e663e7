"""Authentication: a bearer token → an Identity, the same for HTTP and gRPC.

Two credential kinds travel as ``Authorization: Bearer <token>``: API keys
(``mpk_<id>_<secret>``, verified by the control plane's key store) and JWTs
(three dot-separated parts, verified against an issuer's JWKS). The data
plane does not know how either is stored; it is handed
:class:`CredentialVerifier` objects by the composition root.

Hot path: a verified token's identity is cached for at most ``ttl`` seconds,
keyed by the SHA-256 of the token (secrets are not kept as dictionary keys),
so a busy client costs one hash and one dictionary lookup per request, and a
revoked key stops working everywhere within ``ttl`` (at once on this node
when :meth:`Authenticator.forget` is called). Failures are never cached.

Brute force: every invalid credential from one peer address takes a token
from ``authfail:<peer>`` in a MemoryRateLimiter. Once that bucket is empty
the peer is blocked until it refills: its requests are answered
RateLimited before any credential is looked at, and the block is audited
once.

With ``--workers N`` the buckets are the node's: given ``failures`` (a
:class:`FailureBuckets`, in practice shared_buckets.SharedBuckets over a
file every worker maps), a failure counted by one worker blocks the peer in
all of them. A peer is then blocked while its shared bucket holds less than
one token, which each worker reads before looking at credentials; the
worker whose failure took the last token audits the block, once for the
node. The one difference from the single-process default: the block starts
as the last token is taken, not at the next failed attempt, so a peer that
has used up its failures is refused even with a good credential until a
token is back ("once that bucket is empty", applied exactly). While no
bucket of the table is empty, the check is one unlocked read of the file's
header (:meth:`FailureBuckets.any_empty`), so requests pay nothing for it.

Mutual TLS: a client certificate the TLS layer verified is a credential
too, mapped by :class:`CertificateIdentities`. A bearer token, when sent,
wins: the certificate is used only by requests without an Authorization
header, and a bad token is refused even over a verified certificate.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from typing import Protocol

from modelport.dataplane.admission.audit import AuthAudit
from modelport.dataplane.admission.certificates import CertificateIdentities, ClientCertificate
from modelport.dataplane.admission.ratelimit import Decision, MemoryRateLimiter
from modelport.errors import RateLimited, Unauthenticated
from modelport.types import Identity

#: Prefix of every API key; anything else with two dots is taken for a JWT.
API_KEY_PREFIX = "mpk_"

#: Longest token looked at; longer ones are refused before any parsing.
MAX_TOKEN_LENGTH = 8192

#: Cached identities kept at most; the oldest go first.
MAX_CACHED = 10_000

#: Peers remembered as blocked at most (a flood of addresses costs bounded memory).
MAX_BLOCKED = 10_000


class FailureBuckets(Protocol):
    """Failure buckets shared by the workers of a node (shared_buckets.SharedBuckets).

    Every method is synchronous and short: they are called on the event loop.
    """

    def acquire_now(self, key: str, rate: float, burst: int, cost: int = 1) -> Decision:
        """Take ``cost`` tokens from ``key``'s bucket, or say when they will be there."""
        ...

    def level(self, key: str, rate: float, burst: int) -> float:
        """Tokens in ``key``'s bucket now, taking none (``burst`` for a key never seen)."""
        ...

    def any_empty(self) -> bool:
        """False only when no bucket can hold less than one token now (cheap, no lock)."""
        ...


class CredentialVerifier(Protocol):
    """One kind of credential. ``verify`` may block (database, JWKS fetch): it is
    called in a worker thread, never on the event loop."""

    def verify(self, token: str) -> Identity:
        """The identity ``token`` proves; Unauthenticated (with a reason) if none."""
        ...


def bearer_token(header: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` value, or Unauthenticated."""
    if header is None or not header.strip():
        raise Unauthenticated("authentication required: send Authorization: Bearer <token>")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("malformed Authorization header: expected 'Bearer <token>'")
    token = token.strip()
    if len(token) > MAX_TOKEN_LENGTH or not token.isascii() or not token.isprintable():
        raise Unauthenticated("malformed bearer token")
    return token


class Authenticator:
    """Token → Identity with a short cache, per-peer failure limits and audit."""

    def __init__(
        self,
        *,
        keys: CredentialVerifier | None,
        jwt: CredentialVerifier | None,
        audit: AuthAudit,
        certificates: CertificateIdentities | None = None,
        failure_rate: float = 1.0,
        failure_burst: int = 10,
        ttl: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        failures: FailureBuckets | None = None,
    ) -> None:
        """``failures``: the node's shared failure buckets; None keeps them in this process.

        Shared buckets keep their own clock; it must be the same clock as ``clock``
        (both default to ``time.monotonic``).
        """
        if not 0 < ttl <= 1.0:
            raise ValueError(f"ttl must be in (0, 1] seconds so revocation is prompt, got {ttl}")
        self._keys = keys
        self._jwt = jwt
        self._certificates = certificates
        self._audit = audit
        self._failure_rate = failure_rate
        self._failure_burst = failure_burst
        self._ttl = ttl
        self._clock = clock
        self._wall = wall
        self._failures = MemoryRateLimiter(clock=clock)
        self._shared = failures
        self._cache: dict[bytes, tuple[Identity, float]] = {}
        self._blocked: dict[str, float] = {}

    def forget(self) -> None:
        """Drop every cached identity, so a revocation made here applies at once."""
        self._cache.clear()

    async def authenticate(
        self, header: str | None, peer: str, certificate: ClientCertificate | None = None
    ) -> Identity:
        """The caller's identity, or Unauthenticated / RateLimited (a blocked peer).

        ``certificate`` is the connection's verified client certificate, if any.
        """
        now = self._clock()
        if self._shared is not None:
            if self._shared.any_empty():
                self._check_shared_block(self._shared, peer)
        elif self._blocked:
            self._check_blocked(peer, now)
        if header is None and certificate is not None and self._certificates is not None:
            return self._certificates.identity(certificate)
        try:
            token = bearer_token(header)
        except Unauthenticated as exc:
            self._fail(peer, exc, now, counts=header is not None)
            raise
        digest = hashlib.sha256(token.encode("ascii")).digest()
        hit = self._cache.get(digest)
        if hit is not None:
            identity, until = hit
            if until > now and not self._expired(identity):
                return identity
            del self._cache[digest]
        try:
            identity = await asyncio.to_thread(self._verifier(token).verify, token)
            if self._expired(identity):
                raise Unauthenticated("credentials expired")
        except Unauthenticated as exc:
            self._fail(peer, exc, self._clock(), counts=True)
            raise
        if len(self._cache) >= MAX_CACHED:
            del self._cache[next(iter(self._cache))]
        self._cache[digest] = (identity, self._clock() + self._ttl)
        return identity

    def _verifier(self, token: str) -> CredentialVerifier:
        if token.startswith(API_KEY_PREFIX):
            if self._keys is None:
                raise Unauthenticated("API keys are not accepted by this server")
            return self._keys
        if token.count(".") == 2:
            if self._jwt is None:
                raise Unauthenticated("JWT bearer tokens are not accepted by this server")
            return self._jwt
        raise Unauthenticated("malformed bearer token: neither an API key nor a JWT")

    def _expired(self, identity: Identity) -> bool:
        return identity.expires_at is not None and self._wall() >= identity.expires_at

    def _check_blocked(self, peer: str, now: float) -> None:
        until = self._blocked.get(peer)
        if until is None:
            return
        if until > now:
            raise _blocked_refusal(until - now)
        del self._blocked[peer]

    def _check_shared_block(self, shared: FailureBuckets, peer: str) -> None:
        level = shared.level(f"authfail:{peer}", self._failure_rate, self._failure_burst)
        if level < 1.0:
            raise _blocked_refusal((1.0 - level) / self._failure_rate)

    def _fail(self, peer: str, exc: Unauthenticated, now: float, *, counts: bool) -> None:
        """Audit a failure; an invalid credential also drains the peer's bucket.

        A request with no credentials at all is not a guess, so it is audited
        but does not count toward blocking the address.
        """
        self._audit.failure(peer, exc.message)
        if not counts:
            return
        if self._shared is not None:
            self._fail_shared(self._shared, peer)
            return
        decision = self._failures.acquire_now(
            f"authfail:{peer}", self._failure_rate, self._failure_burst
        )
        if decision.allowed:
            return
        if len(self._blocked) >= MAX_BLOCKED:
            self._blocked = {p: t for p, t in self._blocked.items() if t > now}
            if len(self._blocked) >= MAX_BLOCKED:
                del self._blocked[next(iter(self._blocked))]
        self._blocked[peer] = now + decision.retry_after_s
        self._audit.blocked(peer, decision.retry_after_s)
        raise _blocked_refusal(decision.retry_after_s) from None

    def _fail_shared(self, shared: FailureBuckets, peer: str) -> None:
        """Count a failure in the node's bucket; the failure that empties it audits the block.

        A refusal means the peer was blocked already (another worker's failure
        emptied the bucket while this request was being verified): answered
        like any blocked request, and audited where the block began.
        """
        decision = shared.acquire_now(f"authfail:{peer}", self._failure_rate, self._failure_burst)
        if not decision.allowed:
            raise _blocked_refusal(decision.retry_after_s) from None
        if decision.remaining < 1.0:
            self._audit.blocked(peer, (1.0 - decision.remaining) / self._failure_rate)


def _blocked_refusal(retry_after_s: float) -> RateLimited:
    """The refusal of a blocked peer's requests."""
    return RateLimited(
        "too many failed authentication attempts from this address; "
        f"retry in {retry_after_s:.2f} s",
        retry_after_s,
    )
