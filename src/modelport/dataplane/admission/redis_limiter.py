"""Token buckets in Redis, so that several nodes enforce one limit together.

Each acquire is one Lua script, which Redis runs atomically: read the bucket,
refill, take, write, set the TTL. Time comes from the Redis server's ``TIME``,
not from the nodes, so nodes whose clocks disagree still compute one refill.
A bucket's key expires once it would have refilled completely
(``burst / rate`` seconds, plus a second of slack), so idle keys cost Redis
nothing; an expired bucket and a full one are the same state.

When Redis cannot be reached, the limiter fails open by default: the request
is allowed, the failure is counted, and a warning is logged at most once a
minute. ``fail_open=False`` refuses with Unavailable (503) instead. After a
failure Redis is left alone for ``retry_interval_s`` so that an outage does
not add a connection attempt to every request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from modelport.dataplane.admission.ratelimit import Decision, check_limit
from modelport.errors import Unavailable

log = logging.getLogger("modelport.ratelimit")

DEFAULT_PREFIX = "modelport:ratelimit:"

#: Seconds between two warnings about an unreachable Redis.
WARN_INTERVAL_S = 60.0

# KEYS[1] the bucket; ARGV rate, burst, cost. Returns {allowed, level, retry_after}
# with the floats as strings (Redis truncates Lua numbers to integers on return).
# replicate_commands lets Redis before 5 write after TIME; later versions always do.
_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local level = tonumber(state[1])
local stamp = tonumber(state[2])
if level == nil or stamp == nil then
  level = burst
  stamp = now
end
local elapsed = now - stamp
if elapsed < 0 then elapsed = 0 end
level = math.min(burst, level + elapsed * rate)
local allowed = 0
local retry = 0
if level >= cost then
  level = level - cost
  allowed = 1
else
  retry = (cost - level) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', level),
           'stamp', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, string.format('%.17g', level), string.format('%.17g', retry)}
"""


class RedisRateLimiter:
    """Token buckets shared by every node that points at the same Redis."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        fail_open: bool = True,
        retry_interval_s: float = 1.0,
        on_failure: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._script = client.register_script(_SCRIPT)
        self._prefix = prefix
        self._fail_open = fail_open
        self._retry_interval_s = retry_interval_s
        self._on_failure = on_failure
        self._clock = clock
        self._down_until = float("-inf")
        self._warned_at = float("-inf")

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 0.5, **options: Any) -> RedisRateLimiter:
        """A limiter on its own connection pool to ``url`` (``redis://host:port/db``).

        Timeouts are short and retries off: a limiter that waits seconds for
        Redis would turn an outage of the limit store into an outage of serving.
        """
        client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1),
        )
        return cls(client, **options)

    async def acquire(self, key: str, rate: float, burst: int, cost: int = 1) -> Decision:
        check_limit(rate, burst, cost)
        if self._clock() < self._down_until:
            return self._unreachable(burst, None)
        try:
            reply = await self._script(keys=[self._prefix + key], args=[rate, burst, cost])
        except (RedisError, OSError) as exc:
            self._down_until = self._clock() + self._retry_interval_s
            return self._unreachable(burst, exc)
        allowed, level, retry = reply
        return Decision(bool(allowed), float(retry), float(level))

    def _unreachable(self, burst: int, exc: Exception | None) -> Decision:
        if self._on_failure is not None:
            self._on_failure()
        now = self._clock()
        if now - self._warned_at >= WARN_INTERVAL_S:
            self._warned_at = now
            log.warning(
                "rate limiter cannot reach Redis; requests are %s",
                "allowed (fail open)" if self._fail_open else "refused (fail closed)",
                extra={"error": repr(exc) if exc is not None else "recent failure"},
            )
        if self._fail_open:
            return Decision(True, 0.0, float(burst))
        raise Unavailable("the rate limiter's store (Redis) is unreachable; try again later")

    async def close(self) -> None:
        await self._client.aclose()
