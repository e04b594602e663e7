"""Job callbacks: the allow-list at submission, the signature, the address check,
and delivery from the store (retries with backoff, abandoned past the limit,
a delivered callback never sent again)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from modelport.controlplane.callbacks import (
    Address,
    CallbackPolicy,
    CallbackSender,
    CallbackSettings,
    Refused,
    Target,
    resolve,
    sign,
)
from modelport.controlplane.store import Database, JobStore, NewJob
from modelport.errors import InvalidRequest
from modelport.types import Origin

SECRET = b"0123456789abcdef-secret"
POLICY = CallbackPolicy(["hooks.example.com", "127.0.0.1:9000", "[::1]:9001"], SECRET)


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/done?job=1",
        "http://hooks.example.com/done",
        "https://HOOKS.example.com:443/done",
        "http://127.0.0.1:9000/cb",
        "http://[::1]:9001/cb",
    ],
)
def test_listed_hosts_are_accepted(url: str) -> None:
    assert POLICY.check(url).url == url


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("https://evil.example.net/done", "evil.example.net"),
        ("https://hooks.example.com:8443/done", "hooks.example.com:8443"),
        ("http://127.0.0.1:9001/cb", "127.0.0.1:9001"),
        ("http://127.0.0.1/cb", "127.0.0.1"),
        ("http://localhost:9000/cb", "localhost:9000"),
    ],
)
def test_other_hosts_are_refused_by_name(url: str, named: str) -> None:
    with pytest.raises(InvalidRequest, match=f"callback host {named!r} is not on"):
        POLICY.check(url)


@pytest.mark.parametrize(
    "url",
    ["ftp://hooks.example.com/x", "hooks.example.com/x", "https://u:p@hooks.example.com/x"],
)
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidRequest):
        POLICY.check(url)


def test_no_allow_list_refuses_every_callback() -> None:
    with pytest.raises(InvalidRequest, match="sends no job callbacks"):
        CallbackPolicy([], SECRET).check("https://hooks.example.com/x")


def test_signature_covers_timestamp_and_body() -> None:
    body = b'{"id":"j"}'
    expected = hmac.new(SECRET, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1700000000, body) == "sha256=" + expected
    assert sign(SECRET, 1700000001, body) != sign(SECRET, 1700000000, body)


def test_a_name_resolving_to_loopback_is_refused_a_literal_is_not() -> None:
    named = Target("http://localhost:9/x", "http", "localhost", 9, "/x", None)
    with pytest.raises(Refused, match="not public"):
        asyncio.run(resolve(named))
    loopback = ipaddress.ip_address("127.0.0.1")
    literal = Target("http://127.0.0.1:9/x", "http", "127.0.0.1", 9, "/x", loopback)
    assert asyncio.run(resolve(literal)) == loopback


def test_jobs_run_as_internal_calls() -> None:
    assert Origin.JOB.internal


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


class Wall:
    def wall(self) -> float:
        return 1700000000.0

    def monotonic_ns(self) -> int:
        return 0


@pytest.fixture
def store(url: str) -> Iterator[tuple[JobStore, Clock]]:
    clock = Clock()
    with Database.open(url, clock=clock) as database:
        yield JobStore(database), clock


class Receiver:
    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.got: list[tuple[Address, dict[str, str], bytes]] = []

    async def __call__(
        self, target: Target, address: Address, headers: dict[str, str], body: bytes
    ) -> int:
        self.got.append((address, headers, body))
        return self.statuses.pop(0) if self.statuses else 200


def _finished_job(jobs: JobStore, url: str) -> None:
    new = NewJob("j1", "", None, None, None, "m", None, b"{}", None, None)
    jobs.add(new, callback_url=url)
    jobs.claim("w", 1, 10)
    assert jobs.finish("j1", "w", status=200, result=b"{}")


def _sender(jobs: JobStore, receiver: Receiver, give_up_s: float = 3600) -> CallbackSender:
    settings = CallbackSettings(backoff_s=2, give_up_s=give_up_s)
    return CallbackSender(jobs, POLICY, settings, post=receiver, clock=Wall())  # type: ignore[arg-type]


def test_retried_with_backoff_until_accepted_then_never_again(
    store: tuple[JobStore, Clock],
) -> None:
    jobs, clock = store
    _finished_job(jobs, "http://127.0.0.1:9000/cb")
    receiver = Receiver([500, 503])
    sender = _sender(jobs, receiver)
    assert asyncio.run(sender.deliver_due()) == 1  # fails: next try in 2 s
    assert asyncio.run(sender.deliver_due()) == 0
    clock.now += timedelta(seconds=2)
    assert asyncio.run(sender.deliver_due()) == 1  # fails again: next in 4 s
    clock.now += timedelta(seconds=3)
    assert asyncio.run(sender.deliver_due()) == 0
    clock.now += timedelta(seconds=1)
    assert asyncio.run(sender.deliver_due()) == 1  # accepted
    clock.now += timedelta(hours=1)
    assert asyncio.run(sender.deliver_due()) == 0
    assert len(receiver.got) == 3
    address, headers, body = receiver.got[-1]
    assert str(address) == "127.0.0.1"
    assert headers["X-Modelport-Signature"] == sign(SECRET, 1700000000, body)
    assert json.loads(body)["id"] == "j1" and headers["X-Modelport-Delivery-Attempt"] == "3"
    state = jobs.callback_of("j1")
    assert state is not None and (state.state, state.attempts) == ("delivered", 3)


def test_abandoned_once_the_retry_time_is_over(store: tuple[JobStore, Clock]) -> None:
    jobs, clock = store
    _finished_job(jobs, "http://127.0.0.1:9000/cb")
    receiver = Receiver([500] * 10)
    sender = _sender(jobs, receiver, give_up_s=5)
    for _ in range(4):
        asyncio.run(sender.deliver_due())
        clock.now += timedelta(seconds=60)
    state = jobs.callback_of("j1")
    assert state is not None and state.state == "abandoned"
    assert state.last_error == "the receiver answered 500"
    assert len(receiver.got) == 2


def test_a_queued_job_has_no_callback_due(store: tuple[JobStore, Clock]) -> None:
    jobs, _ = store
    new = NewJob("j1", "", None, None, None, "m", None, b"{}", None, None)
    jobs.add(new, callback_url="http://127.0.0.1:9000/cb")
    receiver = Receiver([])
    assert asyncio.run(_sender(jobs, receiver).deliver_due()) == 0
    assert receiver.got == []
