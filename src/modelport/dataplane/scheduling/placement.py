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
        # Every batch may run inline while at most the slack's executions were costly.
        self.defer_busy = every = self.over_busy <= INLINE_BUSY_SLACK
        self.defer_idle = every or self.over_lone == 0


def inline_enabled(traits: Traits, settings: SchedulingPolicy) -> bool:
    """Whether any batch of this version may ever run on the loop."""
    return traits.inline_safe and (settings.inline_max_ns > 0 or settings.inline_busy_max_ns > 0)


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
    Called once per batch, so the rules read the answers ``RecentCosts``
    keeps (``defer_busy`` is whether every batch may run inline).
    """
    if not inline_enabled(traits, settings):
        return Placement.INSTANCE
    if costs.defer_busy:
        rows = batch[0].rows if len(batch) == 1 else sum(p.rows for p in batch)
        if rows > costs.inline_rows:
            return Placement.INSTANCE
    elif len(batch) != 1 or not idle or costs.over_lone != 0:
        return Placement.INSTANCE
    size = 0
    for p in batch:
        for a in p.inputs.values():
            size += a.nbytes
    if size > INLINE_MAX_BYTES:
        return Placement.INSTANCE
    return Placement.LOOP


def cost_source(traits: Traits) -> Callable[[], int] | None:
    """The clock an execution's cost is read from on the thread that ran it.

    The thread's CPU time for a runtime that computes on its calling thread
    alone; None for any other, whose cost is its execution's duration as the
    scheduler already measures it (no second reading).
    """
    return time.thread_time_ns if traits.pin_safe else None


#: Longest a request of a loop-bound version waits for others to batch with.
GATHER_MAX_NS = 1_000_000
#: A wait lasts this many times the recent gap between arrivals (up to GATHER_MAX_NS).
GATHER_SPAN = 4
#: One-turn deferrals finding fewer requests than this on average (in 1024ths)
#: form no batches of their own: requests arrive one per loop turn.
LONE_BELOW = 1536
#: Each of the two windows a trial compares (waiting off, then on).
TRIAL_WINDOW_NS = 500_000_000
#: When the first trial starts, after the version's first batch.
TRIAL_FIRST_NS = 1_000_000_000
#: Time between trials, doubled after each that kept waiting off, up to TRIAL_EVERY_MAX_NS.
TRIAL_EVERY_NS = 5_000_000_000
TRIAL_EVERY_MAX_NS = 20_000_000_000
#: Waiting stays on only when it served this much more per second (in 1024ths).
TRIAL_MARGIN = 1075
#: A trial ends early, waiting off, once this many waits found no second request
#: and they are most of its waits (one caller at a time: waiting only adds latency).
TRIAL_UNPAID = 8


class Trial(enum.Enum):
    """Where a version's gathering trial stands."""

    NONE = "none"
    """No trial: waiting stays as the last one decided."""
    OFF = "off"
    """Counting what is served per second without waiting."""
    ON = "on"
    """Counting what is served per second with waiting."""


class Gathering:
    """Whether a loop-bound version waits a little for more requests to batch with.

    A version whose every batch runs on the event loop (a small model under
    load) costs the loop about the same per execution whatever its rows, so
    one execution of four requests is far cheaper than four of one. Batching
    one loop turn later gathers what arrived together (REST: several
    connections readable at once), but when requests reach the scheduler one
    per loop turn (gRPC's server accepts one call per turn) it gathers none
    (``lone``). Then the request that starts a batch may wait for more, for
    ``GATHER_SPAN`` times the recent gap between arrivals and never over
    ``GATHER_MAX_NS``.

    Whether that wait pays depends on the callers, which the server cannot
    see: many callers queued behind the loop fill the wait and the batches
    (more served per second); a few callers that each wait for their answer
    leave the loop idle while it waits (fewer). So it is measured: a trial
    counts the rows served per second for ``TRIAL_WINDOW_NS`` without
    waiting, then as long with it, and keeps waiting on only when that
    served ``TRIAL_MARGIN``/1024 as much or more (a window the version
    spent partly idle is measured again; one in which waiting serves less
    than without ends a quarter of the way in). The first trial starts
    ``TRIAL_FIRST_NS`` after the version's first batch. A trial in which most
    waits found no second request ends at once, waiting off, and so does one
    whose requests stopped arriving one per turn. Trials repeat every
    ``TRIAL_EVERY_NS``, the time doubling after each that changed nothing
    (up to ``TRIAL_EVERY_MAX_NS``), so a steady load pays for a trial rarely
    and a changed one is noticed.

    Pure bookkeeping fed by the scheduler with its clock's readings, so its
    rules are tested with plain numbers.
    """

    __slots__ = (
        "_before",
        "_every",
        "_last_ns",
        "_next_trial",
        "_off_rate",
        "_paid",
        "_rows",
        "_unpaid",
        "_window_start",
        "gap_ns",
        "lone",
        "phase",
        "tracking",
        "waiting",
    )

    def __init__(self) -> None:
        self.gap_ns = GATHER_MAX_NS
        """Mean time between arrivals (an exponentially weighted average)."""
        self.lone = 1024
        """Requests per one-turn deferral, in 1024ths (an exponentially weighted average)."""
        self.waiting = False
        """Whether the request that starts a batch waits for more."""
        self.phase = Trial.NONE
        self.tracking = False
        """Whether arrivals and served rows are counted: while waiting, or in a trial.

        The scheduler asks before each call, so a version that never waits
        pays for no bookkeeping per request."""
        self._before = False
        self._last_ns: int | None = None
        self._next_trial: int | None = None
        self._every = TRIAL_EVERY_NS
        self._window_start = 0
        self._rows = 0
        self._off_rate = 0
        self._paid = 0
        self._unpaid = 0

    def arrived(self, now_ns: int) -> None:
        """Count one arrival at ``now_ns``."""
        last = self._last_ns
        self._last_ns = now_ns
        if last is not None:
            gap = min(now_ns - last, GATHER_MAX_NS)
            self.gap_ns += (gap - self.gap_ns) >> 3

    def deferred(self, requests: int) -> None:
        """A one-turn deferral (no wait) found ``requests`` queued."""
        self.lone += ((requests << 10) - self.lone) >> 3

    def served(self, rows: int) -> None:
        """An execution of ``rows`` rows finished (counted during a trial only)."""
        if self.phase is not Trial.NONE:
            self._rows += rows

    def wait_ns(self) -> int:
        """How long the request that starts a batch waits for others (0: not at all)."""
        if not self.waiting:
            return 0
        return min(GATHER_SPAN * self.gap_ns, GATHER_MAX_NS)

    def waited(self, requests: int) -> None:
        """A wait ended with ``requests`` queued; most finding no one ends a trial."""
        if requests > 1:
            self._paid += 1
        else:
            self._unpaid += 1
        if self.phase is Trial.ON and self._unpaid >= TRIAL_UNPAID and self._unpaid > self._paid:
            self._decide(False, self._window_start)

    def tick(self, now_ns: int) -> None:
        """Move the trial along: start one when due, switch windows, decide."""
        if self._next_trial is None:  # the version's first batches: a trial soon
            self._next_trial = now_ns + TRIAL_FIRST_NS
            return
        if self.phase is Trial.NONE:
            if now_ns >= self._next_trial and self.lone < LONE_BELOW:
                self._before = self.waiting
                self.phase, self.waiting, self.tracking = Trial.OFF, False, True
                self._window_start, self._rows = now_ns, 0
            return
        elapsed = now_ns - self._window_start
        if elapsed < TRIAL_WINDOW_NS:
            if (
                self.phase is Trial.ON
                and 4 * elapsed >= TRIAL_WINDOW_NS
                and self._rows * 1_000_000_000 // elapsed < self._off_rate
            ):
                # A quarter of the window in, waiting serves less: stop paying for it.
                self._decide(False, now_ns)
            return
        if elapsed > 2 * TRIAL_WINDOW_NS:
            # The version went quiet during the window (no batch to tick it): what it
            # served then says nothing about waiting. Measure this window again.
            self._window_start, self._rows = now_ns, 0
            return
        rate = self._rows * 1_000_000_000 // elapsed  # rows per second
        if self.phase is Trial.OFF:
            if self.lone >= LONE_BELOW:  # requests now arrive together: nothing to gather
                self._decide(False, now_ns)
                return
            self._off_rate = rate
            self.phase, self.waiting = Trial.ON, True
            self._window_start, self._rows = now_ns, 0
            self._paid = self._unpaid = 0
            return
        self._decide((rate << 10) >= self._off_rate * TRIAL_MARGIN, now_ns)

    def _decide(self, wait: bool, now_ns: int) -> None:
        self.phase, self.waiting, self.tracking = Trial.NONE, wait, wait
        changed = wait != self._before
        self._every = TRIAL_EVERY_NS if changed else min(2 * self._every, TRIAL_EVERY_MAX_NS)
        self._next_trial = now_ns + self._every
