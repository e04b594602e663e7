"""How many instances a version should run: one pure decision, no clock, no I/O.

The load of a version is what it holds at one moment: requests queued plus
requests computing. The decision compares that load, per instance, with
``target_in_flight_per_instance`` over a window of samples:

- up when every sample of the last ``upscale_delay_s`` was above the target
  for the current count, straight to the count the lightest of those samples
  needs (an overload that lasted the whole delay is real; adding one instance
  per delay would leave callers queueing for several delays);
- down when every sample of the last ``downscale_delay_s`` would have fitted
  in one instance fewer, strictly below the target, to the count the heaviest
  of those samples needs: the gap of one instance between the two rules is
  the hysteresis that keeps a steady load from flapping between two counts;
- never two changes closer than the delay of the second: a new count is
  judged on samples taken after it;
- always within ``max(1, min_instances)..max_instances``. ``min_instances:
  0`` unloads an idle version, which is the registry's work; here it still
  keeps one instance.

The caller (``autoscaler.py``) samples, keeps the window and applies the
count; tests drive this function with made-up times.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from modelport.config.model import Autoscaling

_NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Sample:
    """A version's load at one moment (monotonic nanoseconds)."""

    at_ns: int
    queued: int
    in_flight: int
    """Requests handed to an instance and not yet answered."""

    @property
    def load(self) -> int:
        return self.queued + self.in_flight


@dataclass(frozen=True, slots=True)
class Decision:
    """The count to run and why; ``count == current`` holds it."""

    count: int
    reason: str


def bounds(config: Autoscaling) -> tuple[int, int]:
    """The counts a running version may have; at least 1 while it is loaded."""
    return max(1, config.min_instances), config.max_instances


def needed(load: float, target: float) -> int:
    """The fewest instances that hold ``load`` at or below ``target`` each."""
    return max(1, math.ceil(load / target))


def span(window: Sequence[Sample], delay_ns: int, now_ns: int) -> Sequence[Sample] | None:
    """The samples that describe the last ``delay_ns``, or None without enough history.

    That is every sample after ``now - delay`` and the last one at or before
    it, which stood for the load when the span began. Samples are in time order.
    """
    start = now_ns - delay_ns
    first = None
    for i, sample in enumerate(window):
        if sample.at_ns <= start:
            first = i
        else:
            break
    if first is None:
        return None
    return window[first:]


def trim(window: Sequence[Sample], keep_ns: int, now_ns: int) -> list[Sample]:
    """The window less the samples no decision will read again (the longest delay's span)."""
    kept = span(window, keep_ns, now_ns)
    return list(window if kept is None else kept)


def decide(
    window: Sequence[Sample],
    config: Autoscaling,
    current: int,
    last_change_ns: int,
    now_ns: int,
) -> Decision:
    """The count to run now, from the samples in time order and the last change's time."""
    low, high = bounds(config)
    if current < low:
        return Decision(low, f"below the least count ({low})")
    if current > high:
        return Decision(high, f"above max_instances ({high})")
    target = config.target_in_flight_per_instance
    since_change = now_ns - last_change_ns
    up_ns = round(config.upscale_delay_s * _NS)
    up = span(window, up_ns, now_ns)
    if up and since_change >= up_ns and all(s.load > target * current for s in up):
        lightest = min(s.load for s in up)
        if current >= high:
            return Decision(current, f"overloaded, but already at max_instances ({high})")
        count = min(high, max(current + 1, needed(lightest, target)))
        return Decision(
            count,
            f"overload: at least {lightest} requests in flight for "
            f"{config.upscale_delay_s:g} s, above {target:g} per instance on {current}",
        )
    down_ns = round(config.downscale_delay_s * _NS)
    down = span(window, down_ns, now_ns)
    if (
        down
        and current > low
        and since_change >= down_ns
        and all(s.load < target * (current - 1) for s in down)
    ):
        heaviest = max(s.load for s in down)
        # Strictly below the target on the new count too: the hysteresis kept.
        count = max(low, math.floor(heaviest / target) + 1)
        return Decision(
            count,
            f"underload: at most {heaviest} requests in flight for "
            f"{config.downscale_delay_s:g} s, below {target:g} per instance on {count}",
        )
    return Decision(current, "steady")
