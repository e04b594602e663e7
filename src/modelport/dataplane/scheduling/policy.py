"""How one model version schedules: batching, priorities, queue bounds, timeouts.

Built once at load from the model's configuration (Triton's
``dynamic_batching`` shape plus the ``modelport`` block), so the request path
reads plain attributes.

Defaults when the configuration says nothing:

- a model with ``max_batch_size > 0`` batches greedily: whenever an instance
  is free it takes everything queued, up to max_batch_size, so a lone
  request never waits and a busy model gets big batches;
- each priority level queues at most ``DEFAULT_MAX_QUEUE_SIZE`` requests;
  one more is refused at once (503 / UNAVAILABLE) instead of waiting.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelport.config.model import DynamicBatching, ModelConfig, QueuePolicy

#: Requests one priority level may hold when no max_queue_size is configured.
DEFAULT_MAX_QUEUE_SIZE = 256
#: Executions at least this long make an instance thread ask for a core (``pin_instances``).
PIN_MIN_NS = 1_000_000


@dataclass(frozen=True, slots=True)
class LevelPolicy:
    """Triton's ModelQueuePolicy for one priority level, resolved."""

    max_queue_size: int
    default_timeout_ns: int | None
    allow_timeout_override: bool
    delay_on_timeout: bool


@dataclass(frozen=True, slots=True)
class SchedulingPolicy:
    max_batch_size: int
    """Rows one execution may hold; 0 means requests run one at a time, unbatched."""
    max_queue_delay_ns: int
    preferred_batch_sizes: frozenset[int]
    levels: tuple[LevelPolicy, ...]
    """Index 0 is priority level 1, the highest."""
    default_level: int
    """0-based level for requests that give no priority."""
    batch_key: str | None
    server_timeout_ns: int | None
    inline_max_ns: int = 0
    """A lone request may run on the event loop when executions cost under this (0: never)."""
    inline_busy_max_ns: int = 0
    """Any batch may run on the event loop when executions cost under this (0: never)."""
    pin_min_ns: int = 0
    """Instance threads whose executions take this long get a core of their own (0: never)."""

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 0

    def level_of(self, priority: int) -> int:
        """0-based level for a request's Triton priority (0 = default; clamped)."""
        if priority <= 0:
            return self.default_level
        return min(priority, len(self.levels)) - 1

    def deadline_ns(self, level: int, timeout_us: int | None, now_ns: int) -> int | None:
        """When a request must have started computing, or None for no limit.

        The level's default timeout applies; a request's own ``timeout`` may
        only shorten it, and only where ``allow_timeout_override`` is set.
        Without a level default, the request's timeout, then the server's.
        """
        lp = self.levels[level]
        timeout: int | None = lp.default_timeout_ns
        requested = timeout_us * 1000 if timeout_us else None
        if timeout is None:
            timeout = requested if requested is not None else self.server_timeout_ns
        elif requested is not None and lp.allow_timeout_override:
            timeout = min(timeout, requested)
        return None if timeout is None else now_ns + timeout


def _level(policy: QueuePolicy | None) -> LevelPolicy:
    if policy is None:
        return LevelPolicy(DEFAULT_MAX_QUEUE_SIZE, None, False, False)
    return LevelPolicy(
        max_queue_size=policy.max_queue_size or DEFAULT_MAX_QUEUE_SIZE,
        default_timeout_ns=policy.default_timeout_microseconds * 1000 or None,
        allow_timeout_override=policy.allow_timeout_override,
        delay_on_timeout=policy.timeout_action == "DELAY",
    )


def with_scheduling_shown(config: ModelConfig) -> ModelConfig:
    """The config as served at ``/config``: batching and queue bounds in effect.

    A model that batches by default gets a ``dynamic_batching`` section, and
    queue policies without ``max_queue_size`` show the default bound, so
    tools that read the config (perf_analyzer, dashboards) see what runs.
    A sequence model is shown as it is: its ``sequence_batching`` schedules it.
    """
    batching = config.max_batch_size > 0 and (
        config.dynamic_batching is not None or config.modelport.batching
    )
    if not batching or config.sequence_batching is not None:
        return config
    db = config.dynamic_batching or DynamicBatching()
    default = db.default_queue_policy or QueuePolicy()
    if default.max_queue_size == 0:
        default = default.model_copy(update={"max_queue_size": DEFAULT_MAX_QUEUE_SIZE})
    levels = {
        level: p
        if p.max_queue_size
        else p.model_copy(update={"max_queue_size": DEFAULT_MAX_QUEUE_SIZE})
        for level, p in db.priority_queue_policy.items()
    }
    db = db.model_copy(update={"default_queue_policy": default, "priority_queue_policy": levels})
    return config.model_copy(update={"dynamic_batching": db})


def scheduling_policy(config: ModelConfig, server_timeout_s: float | None) -> SchedulingPolicy:
    """Resolve a model's scheduling from its validated configuration."""
    db = config.dynamic_batching
    batching = config.max_batch_size > 0 and (db is not None or config.modelport.batching)
    n_levels = max(1, db.priority_levels if db is not None else 0)
    default = db.default_queue_policy if db is not None else None
    levels = tuple(
        _level(db.priority_queue_policy.get(i + 1, default) if db is not None else None)
        for i in range(n_levels)
    )
    default_level = 0
    if db is not None and db.default_priority_level > 0:
        default_level = min(db.default_priority_level, n_levels) - 1
    elif n_levels > 1:
        default_level = n_levels - 1
    return SchedulingPolicy(
        max_batch_size=config.max_batch_size if batching else 0,
        max_queue_delay_ns=(db.max_queue_delay_microseconds * 1000) if db is not None else 0,
        preferred_batch_sizes=frozenset(db.preferred_batch_size if db is not None else ()),
        levels=levels,
        default_level=default_level,
        batch_key=config.modelport.batch_key,
        server_timeout_ns=int(server_timeout_s * 1e9) if server_timeout_s else None,
        inline_max_ns=config.modelport.inline_max_us * 1000,
        inline_busy_max_ns=config.modelport.inline_busy_max_us * 1000,
        pin_min_ns=PIN_MIN_NS if config.modelport.pin_instances else 0,
    )
