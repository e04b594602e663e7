"""A canary's stored body: today's shape and the first release's both load,
and writing them back changes nothing."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pydantic
import pytest

from modelport.controlplane.canary_spec import (
    NO_POLICY,
    Canary,
    CanaryProgress,
    PolicyBefore,
    from_body,
    parse_spec,
    to_body,
)
from modelport.controlplane.store import StoredCanary

BEFORE = {"routes": [{"version": "1", "weight": 100}], "sticky_key": "X-User", "shadow": None}

#: A finished canary as the controller stores it today (keys in the order written).
TODAY: dict[str, Any] = {
    "version": "2",
    "steps": [5, 50, 100],
    "interval_s": 60.0,
    "slo": {"max_error_rate": 0.01, "max_p99_ms": 250.0, "min_agreement": 0.95},
    "min_requests": 20,
    "evidence_timeout_s": 300.0,
    "stable": "1",
    "step": 1,
    "step_started_at": 1765000120.5,
    "weight": 50,
    "reason": "p99 latency 300.0 ms > 250.0 ms at step 2 (50%)",
    "policy_before": {"revision": 3, "policy": BEFORE},
    "finished_at": 1765000150.0,
    "policy_revision": 6,
}

#: A running canary stored by the first release: no evidence wait, no policy before it.
FIRST_RELEASE: dict[str, Any] = {
    "version": "3",
    "steps": [25, 100],
    "interval_s": 30.0,
    "slo": {"max_error_rate": 0.05, "max_p99_ms": None, "min_agreement": None},
    "min_requests": 10,
    "stable": "2",
    "step": 0,
    "step_started_at": 1700000000.0,
    "weight": 25,
    "reason": None,
}


def test_todays_stored_shape_loads_typed() -> None:
    spec, progress = from_body(TODAY, "rolled_back")
    assert (spec.version, spec.stable_version, spec.steps) == ("2", "1", [5, 50, 100])
    assert (spec.interval_s, spec.min_requests, spec.evidence_timeout_s) == (60.0, 20, 300.0)
    assert (spec.slo.max_error_rate, spec.slo.max_p99_ms, spec.slo.min_agreement) == (
        0.01,
        250.0,
        0.95,
    )
    assert progress == CanaryProgress(
        state="rolled_back",
        step=1,
        step_started_at=1765000120.5,
        reason="p99 latency 300.0 ms > 250.0 ms at step 2 (50%)",
        policy_before=PolicyBefore(3, BEFORE),
        finished_at=1765000150.0,
        policy_revision=6,
    )
    assert progress.weight(spec) == 50


def test_the_first_releases_shape_loads_without_the_later_fields() -> None:
    spec, progress = from_body(FIRST_RELEASE, "running")
    assert spec.evidence_timeout_s is None
    assert progress.policy_before is None
    assert (progress.finished_at, progress.policy_revision) == (None, None)


@pytest.mark.parametrize(("body", "state"), [(TODAY, "rolled_back"), (FIRST_RELEASE, "paused")])
def test_writing_a_loaded_canary_back_changes_nothing(body: dict[str, Any], state: str) -> None:
    stored = StoredCanary("m", copy.deepcopy(body), state, 4, datetime(2026, 1, 1, tzinfo=UTC))
    again = Canary.from_stored(stored).stored()
    assert again == stored
    assert list(again.body) == list(body)


def test_a_canary_without_a_policy_before_it_stores_null() -> None:
    spec = parse_spec({"version": "2", "stable": "1", "evidence_timeout_s": 300})
    progress = CanaryProgress("running", 0, 10.0, policy_before=NO_POLICY)
    body = to_body(spec, progress)
    assert body["policy_before"] is None and body["weight"] == 5
    assert from_body(body, "running") == (spec, progress)


def test_a_stored_spec_is_rebuilt_not_checked_again() -> None:
    # A week-long interval defaults to a five-week evidence wait, over the limit
    # a request may ask for; the running canary still loads.
    body = {**FIRST_RELEASE, "interval_s": 604800.0, "evidence_timeout_s": 3024000.0}
    spec, _ = from_body(body, "running")
    assert spec.evidence_timeout_s == 3024000.0


def test_the_spec_is_frozen_and_a_request_need_not_name_stable() -> None:
    spec = parse_spec({"version": "2"})
    with pytest.raises(pydantic.ValidationError):
        spec.version = "3"  # type: ignore[misc]
    with pytest.raises(RuntimeError, match="has not begun"):
        _ = spec.stable_version
