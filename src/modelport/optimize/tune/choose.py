"""The pure decision: which candidate, at which thread count, wins the objective.

Only candidates within the accuracy budget compete, whatever their speed.
``latency`` picks the lowest p50 at batch 1; ``throughput`` the most rows
per second for the whole machine, estimated as one instance's rows/s at its
best batch size times the instances that fit (``cores // threads``): on 8
cores, 1 thread x 8 instances at 900 rows/s each (7,200) beats 8 threads x
1 instance at 5,000.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from modelport.optimize.tune.measure import Timing, instances_for
from modelport.optimize.tune.metrics import Judgement

OBJECTIVES = ("latency", "throughput")


@dataclass
class Outcome:
    """Everything learnt about one candidate, for the choice and the report."""

    name: str
    description: str
    settings: dict[str, str] = field(default_factory=dict)
    size_bytes: int | None = None
    judgement: Judgement | None = None
    timings: list[Timing] = field(default_factory=list)
    failed: str = ""
    """Why building, loading or running it failed; empty when it ran."""
    status: str = ""
    """chosen, lost, out of budget or failed (set by ``decide``)."""
    reason: str = ""
    best: Timing | None = None
    """Its timing at the thread count the objective prefers."""

    @property
    def eligible(self) -> bool:
        return not self.failed and self.judgement is not None and self.judgement.within


def score(timing: Timing, objective: str, cores: int) -> float:
    """Larger is better: negative p50 for latency, machine rows/s for throughput."""
    if objective == "latency":
        return -timing.p50_ms
    return timing.rows_per_s * instances_for(timing.threads, cores)


def best_timing(timings: list[Timing], objective: str, cores: int) -> Timing | None:
    return max(timings, key=lambda t: score(t, objective, cores), default=None)


def _describe(timing: Timing, objective: str, cores: int) -> str:
    if objective == "latency":
        return f"p50 {timing.p50_ms:.3f} ms"
    return f"{score(timing, objective, cores):,.0f} rows/s"


def decide(
    outcomes: list[Outcome], objective: str, cores: int, exclude: str | None = None
) -> Outcome | None:
    """Mark every outcome chosen / lost / out of budget / failed; return the winner.

    ``exclude`` names an outcome that may not win (the current version, when
    the noise check is to compare the best other candidate against it).
    """
    for outcome in outcomes:
        outcome.best = best_timing(outcome.timings, objective, cores)
    eligible = [o for o in outcomes if o.eligible and o.best is not None and o.name != exclude]
    winner = max(
        eligible,
        key=lambda o: score(o.best, objective, cores) if o.best is not None else float("-inf"),
        default=None,
    )
    for outcome in outcomes:
        if outcome.failed:
            outcome.status, outcome.reason = "failed", outcome.failed
        elif outcome.judgement is not None and not outcome.judgement.within:
            outcome.status, outcome.reason = "out of budget", outcome.judgement.why
        elif outcome is winner:
            outcome.status, outcome.reason = "chosen", f"best {objective} within the budget"
        elif winner is not None and winner.best is not None and outcome.best is not None:
            outcome.status = "lost"
            outcome.reason = (
                f"{_describe(outcome.best, objective, cores)} vs "
                f"{_describe(winner.best, objective, cores)} ({winner.name})"
            )
        else:
            outcome.status, outcome.reason = "lost", "not timed"
    return winner


#: Rounds in which the current version and the best candidate are each timed
#: again, alternately. With 5 each, a candidate no faster than the current
#: version wins every round against every round of it by chance once in 252
#: (the orderings of 10 values in which its 5 all come first).
NOISE_ROUNDS = 5


@dataclass(frozen=True)
class NoiseCheck:
    """The current version and the best candidate timed over the same rounds.

    Costs are lower-is-better: seconds of p50 latency (latency objective) or
    seconds per row for the machine (throughput objective).
    """

    current: tuple[float, ...]
    candidate: tuple[float, ...]
    gain: float
    """How much cheaper the candidate's median round is: 0.2 = the current costs 20% more."""
    noise: float
    """Half the spread of a side's rounds over its median, the larger side's: ±noise."""
    beats: bool
    """Every candidate round beat every current round, and the gain exceeds the noise."""


def beyond_noise(current: Sequence[float], candidate: Sequence[float]) -> NoiseCheck:
    """Whether the candidate is faster than the current version beyond measurement noise.

    Two conditions, both needed:

    - separation: the candidate's worst round is cheaper than the current
      version's best round (a rank test: with rounds taken alternately, a
      slow spell of the machine hits both sides, and chance alone separates
      5 rounds from 5 once in 252);
    - size: the gain of the medians exceeds the noise, half the larger
      relative spread (max - min) / median of either side's rounds, so a
      steady 1% gain is not taken where the rounds themselves vary by 10%.

    Example: current rounds 10.0, 10.4, 10.2, 10.1, 10.3 ms and candidate
    rounds 8.0, 8.3, 8.1, 8.2, 8.4 ms: separated, gain 10.2 / 8.2 - 1 = 24%,
    noise max(0.4 / 10.2, 0.4 / 8.2) / 2 = 2.4%: the candidate beats it. With
    candidate rounds 9.9 .. 10.3 instead, they interleave: it does not.
    """
    if not current or not candidate:
        raise ValueError("the noise check needs at least one round of each")
    cur_median = statistics.median(current)
    cand_median = statistics.median(candidate)
    gain = cur_median / cand_median - 1 if cand_median > 0 else float("inf")
    noise = max(_half_spread(current, cur_median), _half_spread(candidate, cand_median))
    separated = max(candidate) < min(current)
    return NoiseCheck(tuple(current), tuple(candidate), gain, noise, separated and gain > noise)


def _half_spread(rounds: Sequence[float], median: float) -> float:
    if median <= 0:
        return 0.0
    return (max(rounds) - min(rounds)) / (2 * median)
