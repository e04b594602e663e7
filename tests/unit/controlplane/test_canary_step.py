"""A canary step's decisions, judged from progress, windows and a clock: no server, no sleeps."""

from __future__ import annotations

from typing import Any

import pytest

from modelport.controlplane.canary import parse_spec
from modelport.controlplane.canary_step import (
    comparison_version,
    evidence_timeout,
    judge_step,
    restore_point,
    step_policy,
)
from modelport.dataplane.routing import Route, Shadow, WindowSnapshot
from modelport.errors import InvalidRequest

EMPTY = WindowSnapshot(0, 0, None, None, 0, 0, None)
WINDOW_S = 60.0


def progress(**changes: Any) -> dict[str, Any]:
    """A canary of version 2 against 1, at its first step (10 %), started at t=1000."""
    body: dict[str, Any] = {
        "version": "2",
        "stable": "1",
        "steps": [10, 100],
        "interval_s": 10.0,
        "evidence_timeout_s": 30.0,
        "min_requests": 20,
        "slo": {"max_error_rate": 0.01, "max_p99_ms": None, "min_agreement": None},
        "step": 0,
        "weight": 10,
        "step_started_at": 1000.0,
    }
    body.update(changes)
    return body


def window(
    requests: int = 0, errors: int = 0, compared: int = 0, agreed: int = 0
) -> WindowSnapshot:
    return WindowSnapshot(
        requests=requests,
        errors=errors,
        error_rate=errors / requests if requests else None,
        p99_ms=5.0 if requests else None,
        shadow_compared=compared,
        shadow_agreed=agreed,
        agreement=agreed / compared if compared else None,
    )


def judge(
    body: dict[str, Any], candidate: WindowSnapshot, at: float, compared: WindowSnapshot = EMPTY
) -> Any:
    return judge_step(body, candidate, compared, at, WINDOW_S)


def test_a_step_without_traffic_holds_then_aborts_with_the_reason() -> None:
    body = progress()
    assert judge(body, EMPTY, 1005.0).action == "hold"
    # The interval is over but nothing reached the candidate: no pass, no promotion.
    assert judge(body, EMPTY, 1011.0).action == "hold"
    assert judge(body, window(requests=19), 1029.9).action == "hold"
    verdict = judge(body, window(requests=7), 1030.0)
    assert verdict.action == "abort"
    assert verdict.reason == (
        "step 1: only 7 of min_requests 20 requests reached the candidate in 30.0 s"
    )


def test_the_abort_names_only_what_the_window_can_see() -> None:
    body = progress(interval_s=100.0, evidence_timeout_s=300.0)
    verdict = judge(body, EMPTY, 1300.0)
    assert verdict.reason is not None and verdict.reason.endswith(f"in {WINDOW_S:.1f} s")


def test_enough_requests_pass_the_step_and_the_last_step_promotes() -> None:
    assert judge(progress(), window(requests=20), 1010.0).action == "advance"
    last = progress(step=1, weight=100)
    assert judge(last, window(requests=20), 1010.0).action == "promote"
    assert judge(last, EMPTY, 1010.0).action == "hold"


def test_slo_breaches_roll_back_before_the_interval_ends() -> None:
    verdict = judge(progress(), window(requests=20, errors=5), 1001.0)
    assert verdict.action == "rollback"
    assert verdict.reason is not None and "error rate 0.250 > 0.01" in verdict.reason
    # Too few requests to judge: neither a breach nor a pass.
    assert judge(progress(), window(requests=5, errors=5), 1001.0).action == "hold"


def test_agreement_slo_needs_comparisons_to_pass() -> None:
    slo = {"max_error_rate": 0.01, "max_p99_ms": None, "min_agreement": 0.9}
    body = progress(slo=slo)
    # Plenty of requests, but no comparisons: "no comparisons" is not a pass.
    assert judge(body, window(requests=100), 1011.0).action == "hold"
    verdict = judge(body, window(requests=100), 1030.0)
    assert verdict.action == "abort"
    assert verdict.reason == (
        "step 1: only 0 of min_requests 20 answers were compared with version 1 in 30.0 s"
    )
    agreeing = window(requests=100, compared=40, agreed=40)
    assert judge(body, window(requests=100), 1011.0, agreeing).action == "advance"
    disagreeing = window(requests=100, compared=40, agreed=0)
    verdict = judge(body, window(requests=100), 1001.0, disagreeing)
    assert verdict.action == "rollback"
    assert verdict.reason is not None and "shadow agreement 0.000 < 0.9" in verdict.reason


def test_step_policy_shadows_only_under_an_agreement_slo() -> None:
    plain = step_policy(progress(), "X-User")
    assert plain.routes == (Route("1", 90), Route("2", 10))
    assert plain.sticky_key == "X-User" and plain.shadow is None
    slo = {"max_error_rate": None, "max_p99_ms": None, "min_agreement": 0.99}
    # Below 100 %, stable's answers are copied to the candidate and compared there.
    early = progress(slo=slo)
    assert step_policy(early, None).shadow == Shadow("2", 1.0)
    assert comparison_version(early) == "2"
    # At 100 %, the candidate's answers are copied to stable, so the step has evidence too.
    last = progress(slo=slo, step=1, weight=100)
    policy = step_policy(last, None)
    assert policy.routes == (Route("2", 100),)
    assert policy.shadow == Shadow("1", 1.0)
    assert comparison_version(last) == "1"


def test_rollback_after_a_canary_restores_the_policy_before_it() -> None:
    before = {"routes": [{"version": "1", "weight": 100}], "sticky_key": "X", "shadow": None}
    body = progress(policy_before={"revision": 4, "policy": before}, policy_revision=7)
    point = restore_point(body, "promoted", 7)
    assert point is not None and point.body == before
    assert point.why == (
        "restores revision 4, the policy in force before the canary of version 2 (promoted)"
    )
    # A later revision is rolled back as usual, to the one before it.
    assert restore_point(body, "promoted", 8) is None
    assert restore_point(progress(), "running", 7) is None
    without = restore_point(progress(policy_before=None, policy_revision=3), "aborted", 3)
    assert without is not None
    assert without.body["routes"] == [{"version": "1", "weight": 100}]


def test_evidence_timeout_is_validated_and_defaults_to_five_intervals() -> None:
    assert parse_spec({"version": "2", "interval_s": 4}).evidence_timeout_s is None
    assert evidence_timeout({"interval_s": 4.0}) == 20.0
    assert evidence_timeout({"interval_s": 4.0, "evidence_timeout_s": 9.0}) == 9.0
    with pytest.raises(InvalidRequest, match="evidence_timeout_s: must be at least interval_s"):
        parse_spec({"version": "2", "interval_s": 10, "evidence_timeout_s": 5})
    with pytest.raises(InvalidRequest, match="evidence_timeout_s"):
        parse_spec({"version": "2", "evidence_timeout_s": 0})
