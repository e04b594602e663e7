"""Queued requests of one model version, one FIFO per priority level.

A request leaves its queue by being taken into a batch, or is marked
``done`` in place when it times out or its caller goes away; marked entries
are skipped and swept lazily, so cancelling is O(1).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

from modelport.types import Array


@dataclass(eq=False, slots=True)
class Pending:
    """One request waiting for an instance."""

    inputs: dict[str, Array]
    rows: int
    """Rows along the batch dimension (1 for a model that does not batch)."""
    key: Hashable
    """Requests batch together only when their keys are equal (inner shapes, batch_key)."""
    level: int
    enqueued_ns: int
    deadline_ns: int | None
    future: asyncio.Future[Any] = field(repr=False)
    outputs: tuple[str, ...] = ()
    """Outputs the caller asked for."""
    done: bool = False
    """Taken, timed out or cancelled: no longer waiting."""


class LevelQueues:
    """FIFO queues by priority level (index 0 first) with live counts."""

    def __init__(self, levels: int) -> None:
        self.queues: tuple[deque[Pending], ...] = tuple(deque() for _ in range(levels))
        self.waiting = [0] * levels

    def __len__(self) -> int:
        return sum(self.waiting)

    def push(self, p: Pending) -> None:
        self.queues[p.level].append(p)
        self.waiting[p.level] += 1

    def retire(self, p: Pending) -> None:
        """Mark a request as no longer waiting (it stays in its deque until swept)."""
        if not p.done:
            p.done = True
            self.waiting[p.level] -= 1

    def live(self) -> Iterator[Pending]:
        """Waiting requests in priority, then arrival, order; sweeps retired heads."""
        for q in self.queues:
            while q and q[0].done:
                q.popleft()
            for p in q:
                if not p.done:
                    yield p

    def sweep(self) -> None:
        for q in self.queues:
            while q and q[0].done:
                q.popleft()
