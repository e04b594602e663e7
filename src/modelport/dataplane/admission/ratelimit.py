"""Token buckets: the rate-limit decision, and the in-memory limiter of one node.

A bucket holds at most ``burst`` tokens and gains ``rate`` tokens a second; a
request takes ``cost`` tokens or is refused. A bucket nobody has touched for
``burst / rate`` seconds is full again, which is exactly the state of a
bucket that does not exist: that is why idle buckets can be forgotten (here by
eviction, in Redis by a TTL) without changing any decision.

Worked example, rate 1/s and burst 3: three requests at t=0 leave 0 tokens; a
fourth at t=0.4 sees 0.4 tokens and is refused with ``retry_after_s`` 0.6; at
t=1.0 there is one token again and one request passes.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

#: Distinct keys the memory limiter remembers before it forgets the least recently used.
DEFAULT_MAX_KEYS = 100_000


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one acquire."""

    allowed: bool
    retry_after_s: float
    """Seconds until the bucket holds ``cost`` tokens; 0 when allowed."""
    remaining: float
    """Tokens left in the bucket after this decision."""


class RateLimiter(Protocol):
    """Token buckets keyed by any string (``model:<name>`` today, identities later)."""

    async def acquire(self, key: str, rate: float, burst: int, cost: int = 1) -> Decision:
        """Take ``cost`` tokens from ``key``'s bucket, or say when they will be there.

        A refusal is a Decision, not an exception: the caller knows what was
        being limited and names it in the error it raises.
        """
        ...

    async def close(self) -> None:
        """Release connections; the limiter is not used afterwards."""
        ...


def check_limit(rate: float, burst: int, cost: int) -> None:
    """Refuse parameters no bucket can honour, before any state is touched.

    ``cost > burst`` could never be allowed; answering "retry later" would send
    the caller into an endless loop, so it is a programming error instead.
    """
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be a finite number of tokens per second > 0, got {rate}")
    if burst < 1:
        raise ValueError(f"burst must be at least 1 token, got {burst}")
    if not 1 <= cost <= burst:
        raise ValueError(f"cost must be between 1 and burst ({burst}), got {cost}")


def take(
    tokens: float, elapsed_s: float, rate: float, burst: int, cost: int
) -> tuple[float, Decision]:
    """The bucket's new level and the decision: refill for ``elapsed_s``, then take.

    Pure, so the arithmetic is tested without clocks. A negative elapsed time
    (a clock that stepped back) refills nothing rather than draining.
    """
    level = min(float(burst), tokens + max(elapsed_s, 0.0) * rate)
    if level >= cost:
        level -= cost
        return level, Decision(True, 0.0, level)
    return level, Decision(False, (cost - level) / rate, level)


def _full_at(bucket: _Bucket, now: float) -> bool:
    return bucket.tokens + (now - bucket.stamp) * bucket.rate >= bucket.burst


class _Bucket:
    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, tokens: float, stamp: float, rate: float, burst: int) -> None:
        self.tokens = tokens
        self.stamp = stamp
        self.rate = rate
        self.burst = burst


class MemoryRateLimiter:
    """Token buckets in this process: exact for one node, no I/O.

    Memory is bounded two ways. Buckets are kept in least-recently-used order,
    and each acquire drops buckets from the idle end while they have refilled
    completely (forgetting a full bucket changes nothing). Past ``max_keys``
    distinct keys the least recently used bucket is dropped even if not full,
    so a flood of distinct keys costs a bounded amount of memory; the price is
    that the forgotten key starts again from a full bucket, which errs toward
    allowing. Not thread-safe: it is used from the event loop only, and an
    acquire never yields, so concurrent requests cannot interleave inside it.
    """

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, max_keys: int = DEFAULT_MAX_KEYS
    ) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        """Buckets held now (what the memory bound is about)."""
        return len(self._buckets)

    async def acquire(self, key: str, rate: float, burst: int, cost: int = 1) -> Decision:
        return self.acquire_now(key, rate, burst, cost)

    def acquire_now(self, key: str, rate: float, burst: int, cost: int = 1) -> Decision:
        """The synchronous acquire, for callers that are not coroutines."""
        check_limit(rate, burst, cost)
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            self._forget_idle(now)
            if len(self._buckets) >= self._max_keys:
                self._buckets.popitem(last=False)
            level, decision = take(float(burst), 0.0, rate, burst, cost)
            self._buckets[key] = _Bucket(level, now, rate, burst)
            return decision
        self._buckets.move_to_end(key)
        # A changed limit (a reloaded config) applies from now on to the level held.
        bucket.rate, bucket.burst = rate, burst
        level, decision = take(bucket.tokens, now - bucket.stamp, rate, burst, cost)
        bucket.tokens, bucket.stamp = level, now
        self._forget_idle(now)
        return decision

    def _forget_idle(self, now: float) -> None:
        """Drop full buckets from the least recently used end; amortised O(1).

        Stops at the first bucket still refilling: one busy key behind idle ones
        only delays their removal, and ``max_keys`` bounds the total anyway.
        """
        buckets = self._buckets
        while buckets:
            oldest = next(iter(buckets.values()))
            if not _full_at(oldest, now):
                return
            buckets.popitem(last=False)

    async def close(self) -> None:
        self._buckets.clear()
