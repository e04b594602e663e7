"""Where a batch computes: on the event loop itself, or on an instance thread.

``place`` is a pure function of the runtime's declared traits, the version's
recent execution costs, the batch and the scheduling settings, so every rule
below is tested with plain numbers; the scheduler only feeds it and obeys.

A lone request on an idle version of a small model runs on the event loop
("inline"): handing it to an instance thread and back costs two thread
wake-ups, which on an idle machine take longer than the model
(docs/performance.md has the figures). Inline runs only when nothing else is
queued or running, the runtime is ``inline_safe``, the batch is one small
request, and each of the version's last ``INLINE_WINDOW`` executions cost
under ``inline_max_us``; a slow one stops it, since the loop serves every
other request meanwhile. While that holds, a request arriving at an idle
version is batched one loop turn later rather than at once
(``defer_batching``), so requests that arrive together (several connections
readable in one turn) still form one batch.

A small model runs every batch inline, under load too, while all but
``INLINE_BUSY_SLACK`` of its last ``INLINE_WINDOW`` executions cost under
``inline_busy_max_us``: the hand-off, its wake-ups and the GIL traffic
between the loop and an instance thread cost the loop more than such a
model's whole batch, so the instances would only add work. Requests are then
always batched one loop turn later: whatever arrived in that turn is one
execution. A batch over ``INLINE_MAX_BYTES`` still goes to an instance. The
slack keeps a few executions that a loaded machine made slow from flipping
the version between the loop and its instances.

Cost grows with a batch's rows, so the rows a batch may have to run inline
grow only as fast as cheap executions show they may: an execution under
``inline_busy_max_us`` lets batches of up to twice its rows run inline, and
one over it with at least half the allowed rows lowers the allowance to half
its rows. A model that is cheap for one row but not for sixty-four therefore
blocks the loop for at most about twice the bound before its large batches
go to the instances.

An execution's cost is the CPU time of the thread that ran it when the
runtime is ``pin_safe`` (it computes on the calling thread alone): measured
on an instance thread, elapsed time also counts waits for the GIL and for a
core, which under load can be many times the model's own time. Other
runtimes are measured by their execution's duration on the monotonic clock
(``cost_source``).
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from modelport.dataplane.runtime.base import Runtime
from modelport.dataplane.scheduling.policy import SchedulingPolicy
from modelport.dataplane.scheduling.queue import Pending

#: Executions remembered to decide whether a version is small enough to run inline.
INLINE_WINDOW = 32
#: How many of those may cost over ``inline_busy_max_us`` with batches still inline
#: under load: a loaded machine makes a few executions slow that would otherwise flip
#: the version between the loop and its instances.
INLINE_BUSY_SLACK = 4
#: The cost an execution not seen yet (or one that failed to run) counts as: over any bound.
UNKNOWN_COST = 1 << 62
#: Largest batch (input bytes) that may run inline, so an odd huge request never does.
INLINE_MAX_BYTES = 64 * 1024


class Placement(enum.Enum):
    """Where one batch computes."""

    LOOP = "loop"
    """On the event loop's thread, before the loop does anything else."""
    INSTANCE = "instance"
    """On one of the version's instance threads."""


@dataclass(frozen=True, slots=True)
class Traits:
    """What a runtime declares about itself (see ``Runtime``), read once at load."""

    inline_safe: bool
    pin_safe: bool

    @classmethod
    def of(cls, runtime: Runtime) -> Traits:
        return cls(bool(runtime.inline_safe), bool(runtime.pin_safe))


class RecentCosts:
    """One version's last ``INLINE_WINDOW`` execution costs, counted against the bounds.

    Kept as running counts so that noting a cost and deciding a placement are
    O(1): the window is a full ring, and each new cost replaces the oldest.
    """

    __slots__ = ("_window", "defer_busy", "defer_idle", "inline_rows", "over_busy", "over_lone")

    def __init__(self) -> None:
        # An execution not seen yet counts as over both bounds.
        self._window: deque[int] = deque([UNKNOWN_COST] * INLINE_WINDOW, maxlen=INLINE_WINDOW)
        self.over_lone = INLINE_WINDOW
        """Costs in the window at or over ``inline_max_ns``."""
        self.over_busy = INLINE_WINDOW
        """Costs in the window at or over ``inline_busy_max_ns``."""
        self.inline_rows = 1
        """The most rows a batch may have to run inline under load."""
        self.defer_idle = False
        """``defer_batching`` for a version with nothing computing on an instance."""
        self.defer_busy = False
        """``defer_batching`` for a version with a batch computing on an instance."""

    def note(self, cost_ns: int, rows: int, settings: SchedulingPolicy) -> None:
        """Count one finished execution of ``rows`` rows that cost ``cost_ns``."""
        window = self._window
        old = window[0]
        window.append(cost_ns)  # the deque is always full: this drops ``old``
        lone, busy = settings.inline_max_ns, settings.inline_busy_max_ns
        self.over_lone += (cost_ns >= lone) - (old >= lone)
        self.over_busy += (cost_ns >= busy) - (old >= busy)
        if cost_ns < busy:
            self.inline_rows = max(self.inline_rows, 2 * rows)
        elif 2 * rows >= self.inline_rows:
            # Only a batch near the allowance says it is too high; a small batch that
            # was slow says nothing about rows (the slack deals with it).
            self.inline_rows = min(self.inline_rows, max(1, rows // 2))
        # Answered here, once per execution, rather than per request (``defer_batching``).
        self.defer_busy = _every_batch_inline(self)
        self.defer_idle = self.defer_busy or self.over_lone == 0


def inline_enabled(traits: Traits, settings: SchedulingPolicy) -> bool:
    """Whether any batch of this version may ever run on the loop."""
    return traits.inline_safe and (settings.inline_max_ns > 0 or settings.inline_busy_max_ns > 0)


def _every_batch_inline(costs: RecentCosts) -> bool:
    return costs.over_busy <= INLINE_BUSY_SLACK


def defer_batching(costs: RecentCosts, busy: bool) -> bool:
    """Whether a request just queued should wait one loop turn before batching.

    True when the batch it joins may then run inline, so that requests
    arriving in the same turn form one execution; ``busy``: a batch of this
    version is computing on an instance. Asked per request, so only of a
    version whose batches may run inline at all (``inline_enabled``, which the
    scheduler computes once). The answers are kept up to date by
    ``RecentCosts.note``, so this reads one attribute.
    """
    return costs.defer_busy if busy else costs.defer_idle


def place(
    traits: Traits,
    costs: RecentCosts,
    batch: Sequence[Pending],
    idle: bool,
    settings: SchedulingPolicy,
) -> Placement:
    """Where ``batch`` computes (the rules are in the module docstring).

    ``idle``: nothing else of this version is queued or computing. Rows and
    bytes are summed only once the cheaper rules leave the loop possible.
    """
    if not inline_enabled(traits, settings):
        return Placement.INSTANCE
    if _every_batch_inline(costs):
        if sum(p.rows for p in batch) > costs.inline_rows:
            return Placement.INSTANCE
    elif len(batch) != 1 or not idle or costs.over_lone != 0:
        return Placement.INSTANCE
    if sum(a.nbytes for p in batch for a in p.inputs.values()) > INLINE_MAX_BYTES:
        return Placement.INSTANCE
    return Placement.LOOP


def cost_source(traits: Traits) -> Callable[[], int] | None:
    """The clock an execution's cost is read from on the thread that ran it.

    The thread's CPU time for a runtime that computes on its calling thread
    alone; None for any other, whose cost is its execution's duration as the
    scheduler already measures it (no second reading).
    """
    return time.thread_time_ns if traits.pin_safe else None
