"""Rate limits: token-bucket math on a fake clock, Redis buckets shared by two
limiters, and the pipeline refusing a model's excess with RateLimited."""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest
import redis.asyncio as aioredis

from modelport.config.model import parse_model_config
from modelport.dataplane.admission import Decision, MemoryRateLimiter
from modelport.dataplane.admission.ratelimit import take
from modelport.dataplane.admission.redis_limiter import RedisRateLimiter
from modelport.dataplane.pipeline import Pipeline
from modelport.dataplane.table import ModelVersion
from modelport.dataplane.transport.grpc.errors import grpc_status, trailing_metadata
from modelport.dataplane.transport.http.errors import http_status, retry_after
from modelport.errors import ConfigError, NotFound, RateLimited, Unavailable
from modelport.observability.metrics import Metrics
from modelport.types import InferenceRequest, ModelSignature, Tensor, TensorSpec
from tests.unit.dataplane.versions import scheduled_version

T = TypeVar("T")
REDIS_URL = "redis://127.0.0.1:6379/0"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


# --- the pure decision -----------------------------------------------------------------


def test_take_refills_up_to_burst_and_reports_the_wait() -> None:
    level, decision = take(0.0, 100.0, rate=2.0, burst=3, cost=1)
    assert level == 2.0
    assert decision == Decision(True, 0.0, 2.0)
    level, decision = take(0.5, 0.0, rate=2.0, burst=3, cost=1)
    assert not decision.allowed
    assert decision.retry_after_s == pytest.approx(0.25)
    assert level == 0.5


def test_a_clock_that_steps_back_refills_nothing() -> None:
    level, decision = take(1.0, -5.0, rate=1.0, burst=3, cost=1)
    assert decision.allowed
    assert level == 0.0


# --- memory limiter ----------------------------------------------------------------------


def test_burst_then_refusal_then_refill() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(clock)
    allowed = [limiter.acquire_now("k", 1.0, 3).allowed for _ in range(5)]
    assert allowed == [True, True, True, False, False]
    clock.now += 0.4
    refused = limiter.acquire_now("k", 1.0, 3)
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(0.6)
    assert refused.remaining == pytest.approx(0.4)
    clock.now += 0.6
    assert limiter.acquire_now("k", 1.0, 3).allowed
    assert not limiter.acquire_now("k", 1.0, 3).allowed


def test_keys_have_separate_buckets_and_the_async_api_agrees() -> None:
    limiter = MemoryRateLimiter(FakeClock())
    assert run(limiter.acquire("a", 1.0, 1)).allowed
    assert not run(limiter.acquire("a", 1.0, 1)).allowed
    assert run(limiter.acquire("b", 1.0, 1)).allowed


def test_cost_takes_several_tokens() -> None:
    limiter = MemoryRateLimiter(FakeClock())
    assert limiter.acquire_now("k", 1.0, 5, cost=4).remaining == pytest.approx(1.0)
    refused = limiter.acquire_now("k", 1.0, 5, cost=4)
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("rate", "burst", "cost", "message"),
    [
        (0.0, 1, 1, "rate must be"),
        (float("inf"), 1, 1, "rate must be"),
        (1.0, 0, 1, "burst must be at least 1"),
        (1.0, 2, 3, "cost must be between 1 and burst (2)"),
        (1.0, 2, 0, "cost must be between 1 and burst (2)"),
    ],
)
def test_impossible_limits_are_refused(rate: float, burst: int, cost: int, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        MemoryRateLimiter(FakeClock()).acquire_now("k", rate, burst, cost)


def test_idle_full_buckets_are_forgotten() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(clock)
    for i in range(100):
        limiter.acquire_now(f"idle-{i}", 10.0, 2)
    assert len(limiter) == 100
    clock.now += 1.0  # 0.2 s refills every bucket
    assert limiter.acquire_now("fresh", 10.0, 2).allowed
    assert len(limiter) == 1


def test_a_flood_of_distinct_keys_is_bounded_and_evicts_least_recently_used() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(clock, max_keys=10)
    limiter.acquire_now("victim", 0.001, 1)  # empties its bucket for ~1000 s
    limiter.acquire_now("busy", 0.001, 1)
    for i in range(9):
        limiter.acquire_now(f"flood-{i}", 0.001, 1)
        assert not limiter.acquire_now("busy", 0.001, 1).allowed  # touched: stays recent
    assert len(limiter) == 10
    # "victim" was least recently used, so it was dropped and starts full again.
    assert limiter.acquire_now("victim", 0.001, 1).allowed
    assert not limiter.acquire_now("busy", 0.001, 1).allowed
    assert len(limiter) == 10


# --- Redis limiter -------------------------------------------------------------------------


def _redis_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


needs_redis = pytest.mark.skipif(
    not _redis_reachable(), reason="no Redis at 127.0.0.1:6379 to test against"
)


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own, so runs and tests never share buckets."""
    return f"modelport-test:{uuid.uuid4().hex}:"


def with_redis(prefix: str, body: Callable[[RedisRateLimiter, aioredis.Redis], Awaitable[T]]) -> T:
    """Run ``body`` with a limiter and a plain client on one loop; clean up the keys."""

    async def main() -> T:
        limiter = RedisRateLimiter.from_url(REDIS_URL, prefix=prefix)
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            return await body(limiter, client)
        finally:
            keys = [k async for k in client.scan_iter(match=prefix + "*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()
            await limiter.close()

    return asyncio.run(main())


@needs_redis
def test_redis_burst_then_refusal_with_its_wait(prefix: str) -> None:
    async def body(limiter: RedisRateLimiter, client: aioredis.Redis) -> list[Decision]:
        return [await limiter.acquire("k", 0.001, 3) for _ in range(5)]

    decisions = with_redis(prefix, body)
    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert decisions[2].remaining == pytest.approx(0.0, abs=0.01)
    # One token at 0.001/s is 1000 s away, less the sliver refilled meanwhile.
    assert 990 < decisions[3].retry_after_s <= 1000


@needs_redis
def test_redis_refills_with_elapsed_server_time(prefix: str) -> None:
    async def body(limiter: RedisRateLimiter, client: aioredis.Redis) -> tuple[bool, bool, bool]:
        first = await limiter.acquire("k", 1.0, 2, cost=2)
        empty = await limiter.acquire("k", 1.0, 2)
        # Move the bucket's last update two seconds into the past: as if time passed.
        stamp = float(await client.hget(prefix + "k", "stamp"))
        await client.hset(prefix + "k", "stamp", repr(stamp - 2.0))
        refilled = await limiter.acquire("k", 1.0, 2, cost=2)
        return first.allowed, empty.allowed, refilled.allowed

    assert with_redis(prefix, body) == (True, False, True)


@needs_redis
def test_redis_keys_expire_once_the_bucket_would_be_full(prefix: str) -> None:
    async def body(limiter: RedisRateLimiter, client: aioredis.Redis) -> int:
        await limiter.acquire("k", 2.0, 10)
        ttl: int = await client.pttl(prefix + "k")
        return ttl

    # 10 tokens at 2/s refill in 5 s; the key lives that long plus a second of slack.
    assert 5000 < with_redis(prefix, body) <= 6000


@needs_redis
def test_two_nodes_share_one_limit(prefix: str) -> None:
    async def body(limiter: RedisRateLimiter, client: aioredis.Redis) -> list[Decision]:
        other = RedisRateLimiter.from_url(REDIS_URL, prefix=prefix)
        try:
            calls = [n.acquire("shared", 0.001, 4) for n in (limiter, other) for _ in range(10)]
            return list(await asyncio.gather(*calls))
        finally:
            await other.close()

    decisions = with_redis(prefix, body)
    assert sum(d.allowed for d in decisions) == 4
    assert all(d.retry_after_s > 0 for d in decisions if not d.allowed)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_unreachable_redis_fails_open_counts_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    failures: list[None] = []
    url = f"redis://127.0.0.1:{_closed_port()}/0"

    async def main() -> list[Decision]:
        limiter = RedisRateLimiter.from_url(
            url, clock=clock, on_failure=lambda: failures.append(None)
        )
        try:
            out = [await limiter.acquire("k", 1.0, 1) for _ in range(3)]
            clock.now += 5.0  # past the retry interval: Redis is tried again, and fails
            out.append(await limiter.acquire("k", 1.0, 1))
            return out
        finally:
            await limiter.close()

    with caplog.at_level(logging.WARNING, logger="modelport.ratelimit"):
        decisions = asyncio.run(main())
    assert all(d.allowed for d in decisions)
    assert len(failures) == 4
    warnings = [r for r in caplog.records if "cannot reach Redis" in r.getMessage()]
    assert len(warnings) == 1
    assert "fail open" in warnings[0].getMessage()


def test_unreachable_redis_can_fail_closed() -> None:
    url = f"redis://127.0.0.1:{_closed_port()}/0"

    async def main() -> None:
        limiter = RedisRateLimiter.from_url(url, fail_open=False)
        try:
            await limiter.acquire("k", 1.0, 1)
        finally:
            await limiter.close()

    with pytest.raises(Unavailable, match="Redis"):
        asyncio.run(main())


# --- the pipeline and the transports -------------------------------------------------------

SIGNATURE = ModelSignature(
    inputs=(TensorSpec("x", "FP32", (-1, 1)),),
    outputs=(TensorSpec("y", "FP32", (-1, 1)),),
    max_batch_size=4,
)


class Echo:
    native = SIGNATURE
    inline_safe = False
    pin_safe = False

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, inputs: Mapping[str, Any], outputs: Sequence[str]) -> dict[str, Any]:
        self.calls += 1
        return {"y": inputs["x"]}

    def unload(self) -> None:
        pass


class Table:
    def __init__(self, *models: ModelVersion) -> None:
        self.models = {m.name: m for m in models}

    def acquire(self, name: str, version: str | None) -> ModelVersion:
        if name not in self.models:
            raise NotFound(f"unknown model {name!r}")
        return self.models[name]

    def versions(self, name: str) -> list[str]:
        return ["1"]

    def ready(self) -> list[ModelVersion]:
        return list(self.models.values())

    def is_ready(self) -> bool:
        return True


class CountingLimiter(MemoryRateLimiter):
    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.keys: list[str] = []

    async def acquire(self, key: str, rate: float, burst: int, cost: int = 1) -> Decision:
        self.keys.append(key)
        return await super().acquire(key, rate, burst, cost)


def _model(name: str, options: dict[str, Any], runtime: Echo) -> ModelVersion:
    config = parse_model_config({"max_batch_size": 4, "modelport": options}, name)
    return scheduled_version(runtime, SIGNATURE, config, name)


def _request(name: str) -> InferenceRequest:
    x = np.ones((1, 1), np.float32)
    return InferenceRequest(name, None, [Tensor("x", "FP32", x.shape, x)])


def test_pipeline_refuses_a_model_over_its_limit_and_spares_the_others() -> None:
    clock = FakeClock()
    limited, free = Echo(), Echo()
    limiter = CountingLimiter(clock)
    metrics = Metrics()
    table = Table(
        _model("capped", {"rate_limit": {"rate": 0.5, "burst": 2}}, limited),
        _model("open", {}, free),
    )
    pipeline = Pipeline(table, metrics, limiter=limiter)

    async def scenario() -> list[object]:
        out: list[object] = []
        for name in ["capped"] * 3 + ["open"] * 5:
            try:
                out.append(await pipeline.infer(_request(name), "http"))
            except RateLimited as exc:
                out.append(exc)
        return out

    results = asyncio.run(scenario())
    refused = results[2]
    assert isinstance(refused, RateLimited)
    assert "model 'capped' is over its rate limit of 0.5 requests/s (burst 2)" in refused.message
    assert refused.retry_after_s == pytest.approx(2.0)
    assert not any(isinstance(r, RateLimited) for r in results[3:])
    assert limited.calls == 2  # the refused request never reached the model
    assert free.calls == 5
    assert limiter.keys == ["model:capped"] * 3  # the unlimited model never asked
    text = metrics.render().decode()
    assert 'modelport_rate_limited_total{model="capped"} 1.0' in text


def test_rate_limit_config_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"modelport\.rate_limit\.burst"):
        parse_model_config({"modelport": {"rate_limit": {"rate": 1, "burst": 0}}}, "m.yaml")
    with pytest.raises(ConfigError, match=r"modelport\.rate_limit\.rate"):
        parse_model_config({"modelport": {"rate_limit": {"rate": -1, "burst": 1}}}, "m.yaml")


@pytest.mark.parametrize(("wait", "header"), [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.01, "2")])
def test_transports_round_the_wait_up_to_whole_seconds(wait: float, header: str) -> None:
    exc = RateLimited("over", wait)
    assert http_status(exc) == 429
    assert retry_after(exc) == header
    assert grpc_status(exc) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert trailing_metadata(exc) == (("retry-after", header),)


def test_other_errors_carry_no_retry_hint() -> None:
    exc = Unavailable("queue full")
    assert retry_after(exc) is None
    assert trailing_metadata(exc) == ()


@pytest.mark.parametrize(("wait", "header"), [(0.2, "1"), (4.5, "5")])
def test_unavailable_with_a_known_wait_carries_it_on_both_transports(
    wait: float, header: str
) -> None:
    exc = Unavailable("model 'm' has too many callers waiting for its load", wait)
    assert http_status(exc) == 503
    assert retry_after(exc) == header
    assert grpc_status(exc) == grpc.StatusCode.UNAVAILABLE
    assert trailing_metadata(exc) == (("retry-after", header),)
