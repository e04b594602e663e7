"""Authenticator: bearer parsing, the short identity cache, brute-force blocking, audit."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from modelport.dataplane.admission.audit import AUTH_BLOCKED, AUTH_DENIED, AUTH_FAILURE, AuthAudit
from modelport.dataplane.admission.authenticate import Authenticator, bearer_token
from modelport.dataplane.admission.gate import Gate
from modelport.errors import PermissionDenied, RateLimited, Unauthenticated
from modelport.types import Identity, Role


def sync(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test on a fresh event loop (no async plugin in this suite)."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


GOOD = "mpk_0123456789ab_" + "s" * 43
ALICE = Identity("key:0123456789ab", "alice", Role.INVOKER, ("fraud-*",))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Keys:
    """A fake key store that counts lookups."""

    def __init__(self) -> None:
        self.calls = 0
        self.revoked = False

    def verify(self, token: str) -> Identity:
        self.calls += 1
        if token != GOOD or self.revoked:
            raise Unauthenticated("invalid API key")
        return ALICE


def build(burst: int = 3) -> tuple[Authenticator, Keys, Clock, AuthAudit]:
    clock, keys = Clock(), Keys()
    audit = AuthAudit(None, clock=clock)
    auth = Authenticator(
        keys=keys, jwt=None, audit=audit, failure_rate=1.0, failure_burst=burst, clock=clock
    )
    return auth, keys, clock, audit


@pytest.mark.parametrize(
    "header",
    [None, "", "Basic abc", "Bearer", "Bearer  ", "Bearer a\x01b", "Bearer " + "x" * 9000],
)
def test_bearer_refuses_malformed_headers(header: str | None) -> None:
    with pytest.raises(Unauthenticated):
        bearer_token(header)


def test_bearer_scheme_is_case_insensitive() -> None:
    assert bearer_token("bearer tok") == "tok"


@sync
async def test_cache_hit_skips_the_store_until_ttl() -> None:
    auth, keys, clock, _ = build()
    assert await auth.authenticate(f"Bearer {GOOD}", "1.2.3.4") is ALICE
    assert await auth.authenticate(f"Bearer {GOOD}", "1.2.3.4") is ALICE
    assert keys.calls == 1
    keys.revoked = True  # revoked on another node: seen once the entry is 1 s old
    clock.now += 1.01
    with pytest.raises(Unauthenticated):
        await auth.authenticate(f"Bearer {GOOD}", "1.2.3.4")


@sync
async def test_forget_applies_a_revocation_at_once() -> None:
    auth, keys, _, _ = build()
    await auth.authenticate(f"Bearer {GOOD}", "1.2.3.4")
    keys.revoked = True
    auth.forget()
    with pytest.raises(Unauthenticated):
        await auth.authenticate(f"Bearer {GOOD}", "1.2.3.4")


@sync
async def test_expired_identity_is_refused_even_when_cached() -> None:
    clock, wall = Clock(), [1000.0]
    expiring = Identity("key:e", "e", Role.VIEWER, ("*",), expires_at=1000.5)

    class Expiring:
        def verify(self, token: str) -> Identity:
            return expiring

    auth = Authenticator(
        keys=Expiring(), jwt=None, audit=AuthAudit(None), clock=clock, wall=lambda: wall[0]
    )
    await auth.authenticate(f"Bearer {GOOD}", "p")
    wall[0] = 1000.6
    with pytest.raises(Unauthenticated, match="expired"):
        await auth.authenticate(f"Bearer {GOOD}", "p")


@sync
async def test_tokens_of_an_unconfigured_kind_are_refused() -> None:
    auth, _, _, _ = build()
    with pytest.raises(Unauthenticated, match="JWT"):
        await auth.authenticate("Bearer a.b.c", "p")
    with pytest.raises(Unauthenticated, match="neither"):
        await auth.authenticate("Bearer hello", "p")


@sync
async def test_brute_force_blocks_the_peer_without_checking_keys() -> None:
    auth, keys, clock, audit = build(burst=3)
    bad = "Bearer mpk_0123456789ab_" + "x" * 43
    for _ in range(3):
        with pytest.raises(Unauthenticated):
            await auth.authenticate(bad, "6.6.6.6")
    with pytest.raises(RateLimited):
        await auth.authenticate(bad, "6.6.6.6")
    calls = keys.calls
    # Blocked: even a good key is not looked at, and the answer says when to retry.
    with pytest.raises(RateLimited) as refused:
        await auth.authenticate(f"Bearer {GOOD}", "6.6.6.6")
    assert keys.calls == calls and refused.value.retry_after_s > 0
    # Another address is not affected.
    assert await auth.authenticate(f"Bearer {GOOD}", "7.7.7.7") is ALICE
    clock.now += 1.0
    assert await auth.authenticate(f"Bearer {GOOD}", "6.6.6.6") is ALICE
    actions = [e.action for e in audit.pending()]
    # One failure record (the rest of the second is counted, not written) and one block.
    assert actions.count(AUTH_FAILURE) == 1 and actions.count(AUTH_BLOCKED) == 1


@sync
async def test_missing_credentials_do_not_count_toward_blocking() -> None:
    auth, _, _, _ = build(burst=1)
    for _ in range(5):
        with pytest.raises(Unauthenticated):
            await auth.authenticate(None, "1.1.1.1")


def test_audit_samples_per_source_and_window() -> None:
    clock = Clock()
    audit = AuthAudit(None, clock=clock)
    for _ in range(50):
        audit.failure("9.9.9.9", "invalid API key")
    audit.failure("8.8.8.8", "invalid API key")
    clock.now += 1.0
    audit.failure("9.9.9.9", "invalid API key")
    events = audit.pending()
    assert [e.detail["peer"] for e in events] == ["9.9.9.9", "8.8.8.8", "9.9.9.9"]
    assert events[2].detail["suppressed"] == 49


def test_log_injection_stays_data() -> None:
    audit = AuthAudit(None)
    evil = Identity("key:x", 'x\n{"level": "error"}', Role.VIEWER, ("*",))
    audit.denied(evil, Role.INVOKER, "m\nFAKE LINE", "p")
    (event,) = audit.pending()
    assert event.action == AUTH_DENIED
    assert event.detail["requested_model"] == "m\nFAKE LINE"


@sync
async def test_writer_drains_to_the_sink_and_stops() -> None:
    written: list[tuple[str, str, str, dict[str, Any]]] = []
    audit = AuthAudit(lambda *record: written.append(record))
    stop = asyncio.Event()
    task = asyncio.create_task(audit.run(stop))
    audit.failure("1.1.1.1", "invalid API key")
    audit.blocked("1.1.1.1", 1.0)
    stop.set()
    await task
    assert [r[1] for r in written] == [AUTH_FAILURE, AUTH_BLOCKED]


@sync
async def test_gate_denies_and_audits() -> None:
    auth, _, _, audit = build()
    gate = Gate(auth, lambda name: None, audit)
    assert await gate.admit(f"Bearer {GOOD}", "p", Role.INVOKER, "fraud-1") is ALICE
    with pytest.raises(PermissionDenied) as out_of_scope:
        await gate.admit(f"Bearer {GOOD}", "p", Role.INVOKER, "churn")
    with pytest.raises(PermissionDenied) as unknown:
        await gate.admit(f"Bearer {GOOD}", "p", Role.INVOKER, "no-such")
    assert "churn" in out_of_scope.value.message
    assert out_of_scope.value.message.replace("churn", "X") == unknown.value.message.replace(
        "no-such", "X"
    )
    with pytest.raises(PermissionDenied):
        await gate.admit(f"Bearer {GOOD}", "p", Role.OPERATOR, "fraud-1")
    assert [e.action for e in audit.pending()] == [AUTH_DENIED]
