"""choose_batch: every batching rule as plain numbers, no clocks or sleeps."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from modelport.config.model import parse_model_config
from modelport.dataplane.scheduling.batcher import choose_batch
from modelport.dataplane.scheduling.policy import (
    DEFAULT_MAX_QUEUE_SIZE,
    SchedulingPolicy,
    scheduling_policy,
)
from modelport.dataplane.scheduling.queue import Pending

LOOP = asyncio.new_event_loop()


def policy(**config: Any) -> SchedulingPolicy:
    return scheduling_policy(parse_model_config({"max_batch_size": 8, **config}, "t"), None)


def req(
    rows: int, at: int = 0, key: Any = "k", level: int = 0, deadline: int | None = None
) -> Pending:
    return Pending({}, rows, key, level, at, deadline, LOOP.create_future())


def test_greedy_takes_everything_that_fits_in_order() -> None:
    a, b, c = req(3), req(4), req(2)
    assert list(choose_batch([a, b, c], policy(), 0).batch) == [a, b]


def test_a_lone_request_never_waits_by_default() -> None:
    a = req(1)
    decision = choose_batch([a], policy(), 0)
    assert list(decision.batch) == [a]


def test_different_keys_never_share_a_batch() -> None:
    a, b, c = req(1, key="x"), req(1, key="y"), req(1, key="x")
    assert list(choose_batch([a, b, c], policy(), 0).batch) == [a, c]


def test_queue_delay_waits_until_due_then_sends() -> None:
    p = policy(dynamic_batching={"max_queue_delay_microseconds": 100})
    a = req(1, at=1_000)
    waiting = choose_batch([a], p, 41_000)
    assert waiting.batch == ()
    assert waiting.wake_at_ns == 101_000
    assert list(choose_batch([a], p, 101_000).batch) == [a]


def test_full_or_preferred_batch_goes_without_waiting() -> None:
    p = policy(dynamic_batching={"max_queue_delay_microseconds": 1000, "preferred_batch_size": [4]})
    four = [req(1) for _ in range(4)]
    assert len(choose_batch(four, p, 0).batch) == 4
    three = [req(1) for _ in range(3)]
    assert choose_batch(three, p, 0).batch == ()


def test_a_preferred_size_caps_the_batch_and_leaves_the_rest_queued() -> None:
    # Triton's rule: the largest preferred size a prefix of the queue reaches.
    p = policy(dynamic_batching={"preferred_batch_size": [4]})
    d, e, f, g = req(1), req(1), req(2), req(1)
    assert list(choose_batch([d, e, f, g], p, 0).batch) == [d, e, f]
    eight = [req(4), req(4)]
    assert len(choose_batch(eight, p, 0).batch) == 1


def test_the_largest_preferred_size_reached_wins() -> None:
    p = policy(dynamic_batching={"preferred_batch_size": [2, 4]})
    queue = [req(1) for _ in range(7)]
    assert len(choose_batch(queue, p, 0).batch) == 4
    assert len(choose_batch(queue[:3], p, 0).batch) == 2


def test_without_a_preferred_prefix_greedy_takes_what_fits() -> None:
    # No prefix adds up to 4 (3, then 3 + 3 = 6), so the greedy rule applies.
    p = policy(dynamic_batching={"preferred_batch_size": [4]})
    a, b = req(3), req(3)
    assert list(choose_batch([a, b], p, 0).batch) == [a, b]


def test_preferred_sizes_and_the_instance_share_together() -> None:
    # 12 rows over two free instances: a share of 6, and a preferred 4 inside it.
    p = policy(max_batch_size=16, dynamic_batching={"preferred_batch_size": [4]})
    queue = [req(1) for _ in range(12)]
    assert len(choose_batch(queue, p, 0, free_instances=2).batch) == 4


def test_without_batching_requests_run_alone() -> None:
    p = policy(modelport={"batching": False})
    assert p.max_batch_size == 0
    a, b = req(1), req(1)
    assert list(choose_batch([a, b], p, 0).batch) == [a]
    unbatched = scheduling_policy(parse_model_config({"max_batch_size": 0}, "t"), None)
    assert not unbatched.batching


def test_dynamic_batching_section_turns_batching_on_even_if_block_says_off() -> None:
    p = policy(dynamic_batching={}, modelport={"batching": False})
    assert p.batching


def test_priority_levels_and_defaults() -> None:
    p = policy(
        dynamic_batching={
            "priority_levels": 3,
            "default_priority_level": 2,
            "priority_queue_policy": {1: {"max_queue_size": 4}},
        }
    )
    assert p.level_of(0) == 1
    assert p.level_of(1) == 0
    assert p.level_of(9) == 2
    assert p.levels[0].max_queue_size == 4
    assert p.levels[2].max_queue_size == DEFAULT_MAX_QUEUE_SIZE


def test_timeouts_follow_triton_override_rules() -> None:
    fixed = policy(dynamic_batching={"default_queue_policy": {"default_timeout_microseconds": 500}})
    assert fixed.deadline_ns(0, 100, 0) == 500_000  # no override allowed
    assert fixed.deadline_ns(0, None, 0) == 500_000
    override = policy(
        dynamic_batching={
            "default_queue_policy": {
                "default_timeout_microseconds": 500,
                "allow_timeout_override": True,
            }
        }
    )
    assert override.deadline_ns(0, 100, 0) == 100_000
    assert override.deadline_ns(0, 900, 0) == 500_000  # may shorten, never lengthen
    open_ = policy()
    assert open_.deadline_ns(0, 250, 10) == 250_010
    assert open_.deadline_ns(0, None, 0) is None
    server = scheduling_policy(parse_model_config({"max_batch_size": 8}, "t"), 0.002)
    assert server.deadline_ns(0, None, 0) == 2_000_000


def test_delay_action_lets_timely_requests_go_first() -> None:
    delay = {"default_queue_policy": {"timeout_action": "DELAY"}}
    alone = scheduling_policy(
        parse_model_config({"max_batch_size": 0, "dynamic_batching": delay}, "t"), None
    )
    late = req(1, at=0, deadline=50)
    timely = req(1, at=10, deadline=500)
    assert list(choose_batch([late, timely], alone, 100).batch) == [timely]
    assert list(choose_batch([late, timely], alone, 40).batch) == [late]
    batched = policy(dynamic_batching=delay)
    assert list(choose_batch([late, timely], batched, 100).batch) == [timely, late]


@pytest.mark.parametrize("rows", [1, 5, 8])
def test_rows_of_one_request_are_never_split(rows: int) -> None:
    a, b = req(rows), req(8)
    batch = choose_batch([a, b], policy(), 0).batch
    assert sum(p.rows for p in batch) <= 8
    assert batch[0] is a


def test_free_instances_share_the_queue_in_greedy_mode() -> None:
    queue = [req(1) for _ in range(10)]
    assert len(choose_batch(queue, policy(), 0, free_instances=2).batch) == 5
    assert len(choose_batch(queue, policy(), 0, free_instances=1).batch) == 8
    big_first = [req(6), req(1), req(1)]
    assert [p.rows for p in choose_batch(big_first, policy(), 0, free_instances=2).batch] == [6]
    delayed = policy(dynamic_batching={"max_queue_delay_microseconds": 10})
    assert len(choose_batch(queue, delayed, 0, free_instances=2).batch) == 8


def test_a_freed_instance_leaves_the_busy_one_its_share() -> None:
    """One instance computes 1 row, 9 wait: the free one takes ceil(10 / 2) = 5, not all 8."""
    queue = [req(1) for _ in range(9)]
    free_one = choose_batch(queue, policy(), 0, free_instances=1, busy_rows=1, busy_instances=1)
    assert len(free_one.batch) == 5
    # The busy instance already holds more than half: the free one still takes at least one.
    hoarded = choose_batch(queue[:1], policy(), 0, free_instances=1, busy_rows=8, busy_instances=1)
    assert len(hoarded.batch) == 1
    # A request bigger than the share still goes whole (rows are never split).
    big = [req(6), req(1)]
    took = choose_batch(big, policy(), 0, free_instances=1, busy_rows=1, busy_instances=1)
    assert [p.rows for p in took.batch] == [6]
    # Nothing busy and one instance: greedy as before.
    assert len(choose_batch(queue, policy(), 0, free_instances=1).batch) == 8


def test_max_rows_caps_the_batch_but_never_splits_the_head() -> None:
    queue = [req(1) for _ in range(10)]
    assert len(choose_batch(queue, policy(), 0, max_rows=3).batch) == 3
    assert len(choose_batch(queue, policy(), 0, max_rows=20).batch) == 8  # max_batch_size
    big = [req(5), req(1)]
    assert [p.rows for p in choose_batch(big, policy(), 0, max_rows=2).batch] == [5]
