"""Brute-force blocking for the node: failures counted by one worker's Authenticator
block the peer in every worker that maps the same failure table."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from modelport.dataplane.admission.audit import AUTH_BLOCKED, AUTH_FAILURE, AuthAudit
from modelport.dataplane.admission.authenticate import Authenticator, FailureBuckets
from modelport.dataplane.admission.ratelimit import Decision
from modelport.dataplane.admission.shared_buckets import SharedBuckets
from modelport.errors import RateLimited, Unauthenticated
from modelport.types import Identity, Role


def sync(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a fresh event loop (no async plugin in this suite)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


GOOD = "mpk_0123456789ab_" + "s" * 43
BAD = "Bearer mpk_0123456789ab_" + "x" * 43
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

    def verify(self, token: str) -> Identity:
        self.calls += 1
        if token != GOOD:
            raise Unauthenticated("invalid API key")
        return ALICE


class Counted:
    """Shared buckets that count how often the table itself is consulted."""

    def __init__(self, inner: FailureBuckets) -> None:
        self.inner = inner
        self.levels = 0

    def acquire_now(self, key: str, rate: float, burst: int, cost: int = 1) -> Decision:
        return self.inner.acquire_now(key, rate, burst, cost)

    def level(self, key: str, rate: float, burst: int) -> float:
        self.levels += 1
        return self.inner.level(key, rate, burst)

    def any_empty(self) -> bool:
        return self.inner.any_empty()


class Worker:
    """One worker's Authenticator, on its own handle of the node's failure table."""

    def __init__(self, path: Path, clock: Clock, burst: int, keys: Any = None) -> None:
        self.keys = keys if keys is not None else Keys()
        self.audit = AuthAudit(None, clock=clock)
        self.failures = Counted(SharedBuckets.open(path, capacity=64, clock=clock))
        self.auth = Authenticator(
            keys=self.keys,
            jwt=None,
            audit=self.audit,
            failure_rate=1.0,
            failure_burst=burst,
            clock=clock,
            failures=self.failures,
        )

    def actions(self) -> list[str]:
        return [event.action for event in self.audit.pending()]


@sync
async def test_failures_in_one_worker_block_the_peer_in_another(tmp_path: Path) -> None:
    clock = Clock()
    first, second = (Worker(tmp_path / "authfail", clock, burst=3) for _ in range(2))
    for _ in range(3):
        with pytest.raises(Unauthenticated):
            await first.auth.authenticate(BAD, "6.6.6.6")
    # The other worker refuses the peer before looking at any credential, good or bad.
    with pytest.raises(RateLimited, match="too many failed authentication") as refused:
        await second.auth.authenticate(f"Bearer {GOOD}", "6.6.6.6")
    assert refused.value.retry_after_s == pytest.approx(1.0)
    with pytest.raises(RateLimited):
        await first.auth.authenticate(BAD, "6.6.6.6")
    assert second.keys.calls == 0 and first.keys.calls == 3
    # Another address is not affected.
    assert await second.auth.authenticate(f"Bearer {GOOD}", "7.7.7.7") is ALICE
    clock.now += 0.6
    with pytest.raises(RateLimited) as later:
        await second.auth.authenticate(f"Bearer {GOOD}", "6.6.6.6")
    assert later.value.retry_after_s == pytest.approx(0.4)
    clock.now += 0.4
    assert await second.auth.authenticate(f"Bearer {GOOD}", "6.6.6.6") is ALICE
    # The block is audited once for the node, by the worker whose failure began it.
    assert first.actions() == [AUTH_FAILURE, AUTH_BLOCKED]
    assert AUTH_BLOCKED not in second.actions()


@sync
async def test_failures_add_up_across_workers(tmp_path: Path) -> None:
    clock = Clock()
    first, second = (Worker(tmp_path / "authfail", clock, burst=3) for _ in range(2))
    for worker in (first, second, first):
        with pytest.raises(Unauthenticated):
            await worker.auth.authenticate(BAD, "6.6.6.6")
    for worker in (first, second):
        with pytest.raises(RateLimited):
            await worker.auth.authenticate(f"Bearer {GOOD}", "6.6.6.6")


@sync
async def test_a_failure_finished_after_another_worker_blocked_the_peer(tmp_path: Path) -> None:
    """Verified while the bucket still had tokens, counted after it emptied: refused, not
    audited a second time."""
    clock = Clock()
    entered, release = threading.Event(), threading.Event()

    class SlowKeys(Keys):
        def verify(self, token: str) -> Identity:
            entered.set()
            release.wait(5)
            return super().verify(token)

    slow = Worker(tmp_path / "authfail", clock, burst=2, keys=SlowKeys())
    fast = Worker(tmp_path / "authfail", clock, burst=2)
    pending = asyncio.create_task(slow.auth.authenticate(BAD, "6.6.6.6"))
    await asyncio.to_thread(entered.wait, 5)
    for _ in range(2):
        with pytest.raises(Unauthenticated):
            await fast.auth.authenticate(BAD, "6.6.6.6")
    release.set()
    with pytest.raises(RateLimited):
        await pending
    assert fast.actions().count(AUTH_BLOCKED) == 1
    assert AUTH_BLOCKED not in slow.actions()


@sync
async def test_nobody_blocked_means_the_table_is_not_consulted(tmp_path: Path) -> None:
    clock = Clock()
    worker = Worker(tmp_path / "authfail", clock, burst=3)
    for _ in range(5):
        assert await worker.auth.authenticate(f"Bearer {GOOD}", "1.1.1.1") is ALICE
    for _ in range(2):  # failures that leave tokens block nobody either
        with pytest.raises(Unauthenticated):
            await worker.auth.authenticate(BAD, "6.6.6.6")
    assert await worker.auth.authenticate(f"Bearer {GOOD}", "1.1.1.1") is ALICE
    assert worker.failures.levels == 0
    with pytest.raises(Unauthenticated):
        await worker.auth.authenticate(BAD, "6.6.6.6")
    assert await worker.auth.authenticate(f"Bearer {GOOD}", "1.1.1.1") is ALICE
    assert worker.failures.levels == 1  # someone is blocked now: each request looks


@sync
async def test_missing_credentials_do_not_count_toward_blocking(tmp_path: Path) -> None:
    worker = Worker(tmp_path / "authfail", Clock(), burst=1)
    for _ in range(5):
        with pytest.raises(Unauthenticated):
            await worker.auth.authenticate(None, "1.1.1.1")
    assert await worker.auth.authenticate(f"Bearer {GOOD}", "1.1.1.1") is ALICE
