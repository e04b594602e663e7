"""A canary step's decisions, judged from spec, progress, window figures and a
clock that moves only when the test says: no server, no sleeps."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from modelport.controlplane.canary_spec import (
    NO_POLICY,
    CanaryProgress,
    CanarySpec,
    PolicyBefore,
    parse_spec,
)
from modelport.controlplane.canary_step import (
    Decision,
    StepWindow,
    comparison_version,
    evidence_timeout,
    judge_step,
    restore_point,
    step_policy,
)
from modelport.dataplane.routing import Route, Shadow, WindowSnapshot
from modelport.errors import InvalidRequest
from tests.fake_clock import FakeClock

WINDOW_S = 60.0
SECOND_NS = 1_000_000_000


def canary(**changes: Any) -> CanarySpec:
    """Version 2 against 1 in steps [10, 100]: 10 s intervals, evidence within 30 s."""
    fields: dict[str, Any] = {
        "version": "2",
        "stable": "1",
        "steps": [10, 100],
        "interval_s": 10.0,
        "evidence_timeout_s": 30.0,
        "min_requests": 20,
    }
    fields.update(changes)
    return parse_spec(fields)


AGREEMENT = {"max_error_rate": 0.01, "max_p99_ms": None, "min_agreement": 0.9}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def started(clock: FakeClock, step: int = 0) -> CanaryProgress:
    """A running canary whose ``step`` began now."""
    return CanaryProgress(state="running", step=step, step_started_at=clock.wall())


def window(requests: int = 0, errors: int = 0, p99_ms: float = 5.0, **more: Any) -> StepWindow:
    return StepWindow(
        span_s=WINDOW_S,
        requests=requests,
        error_rate=errors / requests if requests else None,
        p99_ms=p99_ms if requests else None,
        **more,
    )


def compared(count: int, agreed: int) -> dict[str, Any]:
    return {"compared": count, "agreement": agreed / count if count else None}


def after(clock: FakeClock, seconds: float) -> float:
    """Let ``seconds`` pass and read the wall clock, as the controller does."""
    clock.advance(int(seconds * SECOND_NS))
    return clock.wall()


def test_a_step_without_evidence_holds_then_aborts_after_evidence_timeout_s(
    clock: FakeClock,
) -> None:
    spec, progress = canary(), started(clock)
    assert judge_step(spec, progress, window(), after(clock, 5)) == Decision("hold")
    # The interval is over but nothing reached the candidate: no pass, no promotion.
    assert judge_step(spec, progress, window(), after(clock, 6)) == Decision("hold")
    assert judge_step(spec, progress, window(19), after(clock, 18.9)).action == "hold"
    decision = judge_step(spec, progress, window(7), after(clock, 0.1))
    assert decision == Decision(
        "abort", "step 1: only 7 of min_requests 20 requests reached the candidate in 30.0 s"
    )


def test_the_abort_names_only_what_the_window_can_see(clock: FakeClock) -> None:
    spec, progress = canary(interval_s=100.0, evidence_timeout_s=300.0), started(clock)
    decision = judge_step(spec, progress, window(), after(clock, 300))
    assert decision.reason is not None and decision.reason.endswith(f"in {WINDOW_S:.1f} s")


def test_without_evidence_timeout_s_a_step_waits_five_intervals(clock: FakeClock) -> None:
    spec, progress = canary(evidence_timeout_s=None), started(clock)
    assert judge_step(spec, progress, window(), after(clock, 49.9)).action == "hold"
    assert judge_step(spec, progress, window(), after(clock, 0.1)).action == "abort"


def test_enough_requests_advance_the_step_once_its_interval_is_over(clock: FakeClock) -> None:
    spec, progress = canary(), started(clock)
    assert judge_step(spec, progress, window(20), after(clock, 9.9)).action == "hold"
    assert judge_step(spec, progress, window(20), after(clock, 0.1)) == Decision("advance")


def test_passing_the_last_step_promotes(clock: FakeClock) -> None:
    spec, last = canary(), started(clock, step=1)
    assert judge_step(spec, last, window(), after(clock, 10)).action == "hold"
    assert judge_step(spec, last, window(20), clock.wall()) == Decision("promote")


def test_an_error_rate_breach_rolls_back_before_the_interval_ends(clock: FakeClock) -> None:
    spec, progress = canary(), started(clock)
    decision = judge_step(spec, progress, window(20, errors=5), after(clock, 1))
    assert decision == Decision(
        "rollback", "error rate 0.250 > 0.01 over 20 requests at step 1 (10%)"
    )
    # Too few requests to judge: neither a breach nor a pass.
    assert judge_step(spec, progress, window(5, errors=5), clock.wall()).action == "hold"


def test_a_p99_breach_rolls_back(clock: FakeClock) -> None:
    spec = canary(slo={"max_error_rate": None, "max_p99_ms": 50.0})
    progress = started(clock, step=1)
    decision = judge_step(spec, progress, window(40, p99_ms=80.0), after(clock, 2))
    assert decision == Decision("rollback", "p99 latency 80.0 ms > 50.0 ms at step 2 (100%)")
    assert judge_step(spec, progress, window(40, p99_ms=50.0), clock.wall()).action == "hold"


def test_an_agreement_slo_needs_comparisons_to_pass_and_rolls_back_on_disagreement(
    clock: FakeClock,
) -> None:
    spec, progress = canary(slo=AGREEMENT), started(clock)
    # Plenty of requests, but no comparisons: "no comparisons" is not a pass.
    assert judge_step(spec, progress, window(100), after(clock, 11)).action == "hold"
    assert judge_step(spec, progress, window(100, **compared(40, 40)), clock.wall()) == (
        Decision("advance")
    )
    decision = judge_step(spec, progress, window(100, **compared(40, 0)), clock.wall())
    assert decision == Decision(
        "rollback", "shadow agreement 0.000 < 0.9 over 40 comparisons at step 1 (10%)"
    )
    decision = judge_step(spec, progress, window(100), after(clock, 19))
    assert decision == Decision(
        "abort",
        "step 1: only 0 of min_requests 20 answers were compared with version 1 in 30.0 s",
    )


def test_the_window_view_reads_the_candidate_and_the_comparison_windows() -> None:
    candidate = WindowSnapshot(30, 3, 0.1, 12.0, 0, 0, None)
    comparisons = WindowSnapshot(0, 0, None, None, 25, 20, 0.8)
    assert StepWindow.of(candidate, comparisons, WINDOW_S) == StepWindow(
        span_s=WINDOW_S, requests=30, error_rate=0.1, p99_ms=12.0, compared=25, agreement=0.8
    )


def test_step_policy_shadows_only_under_an_agreement_slo(clock: FakeClock) -> None:
    first, last = started(clock), started(clock, step=1)
    plain = step_policy(canary(), first, "X-User")
    assert plain.routes == (Route("1", 90), Route("2", 10))
    assert plain.sticky_key == "X-User" and plain.shadow is None
    spec = canary(slo={"max_error_rate": None, "min_agreement": 0.99})
    # Below 100 %, stable's answers are copied to the candidate and compared there.
    assert step_policy(spec, first, None).shadow == Shadow("2", 1.0)
    assert comparison_version(spec, first) == "2"
    # At 100 %, the candidate's answers are copied to stable, so the step has evidence too.
    policy = step_policy(spec, last, None)
    assert policy.routes == (Route("2", 100),)
    assert policy.shadow == Shadow("1", 1.0)
    assert comparison_version(spec, last) == "1"


def test_rollback_after_a_canary_restores_the_policy_before_it(clock: FakeClock) -> None:
    before = {"routes": [{"version": "1", "weight": 100}], "sticky_key": "X", "shadow": None}
    finished = dataclasses.replace(
        started(clock, step=1),
        state="promoted",
        policy_before=PolicyBefore(4, before),
        policy_revision=7,
    )
    point = restore_point(canary(), finished, 7)
    assert point is not None and point.body == before
    assert point.why == (
        "restores revision 4, the policy in force before the canary of version 2 (promoted)"
    )
    # A later revision is rolled back as usual, to the one before it.
    assert restore_point(canary(), finished, 8) is None
    assert restore_point(canary(), started(clock), 7) is None
    # A canary stored before the policy was recorded rolls back like any policy.
    unrecorded = dataclasses.replace(finished, policy_before=None)
    assert restore_point(canary(), unrecorded, 7) is None
    aborted = dataclasses.replace(finished, state="aborted", policy_before=NO_POLICY)
    without = restore_point(canary(), aborted, 7)
    assert without is not None
    assert without.body["routes"] == [{"version": "1", "weight": 100}]


def test_evidence_timeout_is_validated_and_defaults_to_five_intervals() -> None:
    assert parse_spec({"version": "2", "interval_s": 4}).evidence_timeout_s is None
    assert evidence_timeout(canary(interval_s=4.0, evidence_timeout_s=None)) == 20.0
    assert evidence_timeout(canary(interval_s=4.0, evidence_timeout_s=9.0)) == 9.0
    with pytest.raises(InvalidRequest, match="evidence_timeout_s: must be at least interval_s"):
        parse_spec({"version": "2", "interval_s": 10, "evidence_timeout_s": 5})
    with pytest.raises(InvalidRequest, match="evidence_timeout_s"):
        parse_spec({"version": "2", "evidence_timeout_s": 0})
