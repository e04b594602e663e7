"""The pure decision: which candidate, at which thread count, wins the objective.

Only candidates within the accuracy budget compete, whatever their speed.
``latency`` picks the lowest p50 at batch 1; ``throughput`` the most rows
per second for the whole machine, estimated as one instance's rows/s at its
best batch size times the instances that fit (``cores // threads``): on 8
cores, 1 thread x 8 instances at 900 rows/s each (7,200) beats 8 threads x
1 instance at 5,000.
"""

from __future__ import annotations

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


def decide(outcomes: list[Outcome], objective: str, cores: int) -> Outcome | None:
    """Mark every outcome chosen / lost / out of budget / failed; return the winner."""
    for outcome in outcomes:
        outcome.best = best_timing(outcome.timings, objective, cores)
    eligible = [o for o in outcomes if o.eligible and o.best is not None]
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
