"""Deciding the next batch: a pure function of the queue, the policy and the time.

``choose_batch`` never sleeps and never touches a clock of its own, so every
rule is tested with plain numbers. Rules, in order:

1. The head is the oldest waiting request of the highest priority level. At a
   level whose ``timeout_action`` is DELAY, requests past their deadline
   yield to that level's requests still in time.
2. Requests whose key equals the head's join in the same order while their
   rows fit in ``max_batch_size``; rows of one request are never split.
   Greedy batching with several instances shares the work between them:
   a batch takes at most its instance's share of the rows in the system
   (those queued plus those the busy instances compute), so two free
   instances compute two halves at once, and an instance that frees up
   while the other still computes does not take everything, leaving the
   other to find its share waiting when it finishes, which keeps tail
   latency down (docs/performance.md).
3. With ``preferred_batch_size`` set, as in Triton: if a prefix of those
   requests adds up to a preferred size, the batch is the longest such prefix
   and goes now; the rest stay queued for the next free instance. A model
   whose cost per row does not fall with the batch size keeps every instance
   busy this way, because a finished instance finds work already waiting
   instead of one instance holding every request.
   When the scheduler runs every batch of the version on the event loop
   (``placement.py``) there is one instance to share with, the loop, and the
   batch is capped at the rows it may have there instead (``max_rows``):
   one execution of everything that arrived rather than halves of halves.
4. Otherwise the batch goes now if batching is off, if it is full, or if
   nothing more can join (greedy: ``max_queue_delay`` of 0). Otherwise it
   waits until the head has waited ``max_queue_delay``.

Worked example: max_batch_size 8, delay 0, one free instance, queue [A(3
rows), B(4), C(2)] all with one key → batch [A, B] (7 rows; C would make 9
and waits for the next instance). With two free instances the share is
ceil(9 / 2) = 5 rows: [A] now (B would make 7), then [B] ... With one free
instance and the other computing 7 rows, the share is ceil((9 + 7) / 2) = 8:
[A, B] now. With delay
100 µs and only A queued for 40 µs → wait 60 µs more. With
``preferred_batch_size: [4]`` and queue [D(1), E(1), F(2), G(1)] → [D, E, F]
now (4 rows); G waits for the next instance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from modelport.dataplane.scheduling.policy import SchedulingPolicy
from modelport.dataplane.scheduling.queue import Pending


@dataclass(frozen=True, slots=True)
class Decision:
    batch: Sequence[Pending]
    """Requests to run now, in order (empty: nothing to run yet)."""
    wake_at_ns: int | None = None
    """When to decide again if nothing arrives before (only with an empty batch)."""


def _candidates(waiting: Sequence[Pending], policy: SchedulingPolicy, now_ns: int) -> list[Pending]:
    """Waiting requests in service order, DELAY-expired ones after the rest of their level."""
    ordered: list[Pending] = []
    for level, lp in enumerate(policy.levels):
        at_level = [p for p in waiting if p.level == level]
        if lp.delay_on_timeout:
            late = [p for p in at_level if p.deadline_ns is not None and p.deadline_ns <= now_ns]
            if late:
                in_time = [p for p in at_level if p not in late]
                at_level = in_time + late
        ordered.extend(at_level)
    return ordered


def choose_batch(
    waiting: Sequence[Pending],
    policy: SchedulingPolicy,
    now_ns: int,
    free_instances: int = 1,
    busy_rows: int = 0,
    busy_instances: int = 0,
    max_rows: int | None = None,
) -> Decision:
    """The next batch to run from ``waiting`` (priority, then arrival order).

    ``busy_rows`` are the rows the ``busy_instances`` are computing now.
    ``max_rows`` caps the batch below ``max_batch_size`` (the rows a batch
    may have to run on the event loop, when every batch of the version does);
    the head is taken whatever its rows.
    """
    if not waiting:
        return Decision(())
    if any(lp.delay_on_timeout for lp in policy.levels):
        waiting = _candidates(waiting, policy, now_ns)
    head = waiting[0]
    if not policy.batching:
        return Decision((head,))
    limit = policy.max_batch_size if max_rows is None else min(policy.max_batch_size, max_rows)
    instances = free_instances + busy_instances
    if policy.max_queue_delay_ns == 0 and instances > 1:
        rows_in_system = sum(p.rows for p in waiting) + busy_rows
        limit = min(limit, max(head.rows, -(-rows_in_system // instances)))
    preferred = policy.preferred_batch_sizes
    batch = [head]
    rows = head.rows
    preferred_end = 1 if rows in preferred else 0
    for p in waiting[1:]:
        if rows >= limit:
            break
        if p.key == head.key and rows + p.rows <= limit:
            batch.append(p)
            rows += p.rows
            if rows in preferred:
                preferred_end = len(batch)
    if preferred_end:
        return Decision(batch[:preferred_end])
    if rows >= limit or policy.max_queue_delay_ns == 0:
        return Decision(batch)
    due = head.enqueued_ns + policy.max_queue_delay_ns
    if now_ns >= due:
        return Decision(batch)
    return Decision((), wake_at_ns=due)
