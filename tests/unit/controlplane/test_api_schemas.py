"""The management API's documented bodies against the checks that decide.

``PolicyBody`` describes a traffic policy in the OpenAPI document and is
what FastAPI validates first; ``TrafficPolicy.from_body`` decides. The
document must never refuse a policy the decision accepts, and must refuse by
type what the decision refuses by type, without coercing it into something
acceptable.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from modelport.controlplane.api.schemas import CanaryBody, PolicyBody
from modelport.controlplane.canary_spec import CanarySpec
from modelport.dataplane.routing.policy import TrafficPolicy
from modelport.errors import InvalidRequest

ACCEPTED: list[dict[str, Any]] = [
    {"routes": [{"version": "1", "weight": 100}]},
    {"routes": [{"version": 2, "weight": 60}, {"version": "1", "weight": 40}]},
    {"routes": [{"version": "01", "weight": 100}], "sticky_key": None, "shadow": None},
    {"routes": [{"version": "1", "weight": 100}, {"version": "2", "weight": 0}]},
    {
        "routes": [{"version": "1", "weight": 100}],
        "sticky_key": "X-User-Id",
        "shadow": {"version": "3", "fraction": 1},
    },
    {"routes": [{"version": "1", "weight": 100}], "shadow": {"version": 3, "fraction": 0.2}},
]

REFUSED_BY_TYPE: list[dict[str, Any]] = [
    {"routes": [{"version": "1", "weight": "100"}]},
    {"routes": [{"version": "1", "weight": 100.0}]},
    {"routes": [{"version": "1", "weight": True}]},
    {"routes": [{"version": 1.0, "weight": 100}]},
    {"routes": [{"version": True, "weight": 100}]},
    {"routes": [{"version": "1", "weight": 100}], "shadow": {"version": "2", "fraction": "0.5"}},
    {"routes": [{"version": "1", "weight": 100}], "sticky_key": 7},
    {"routes": [{"version": "1", "weight": 100, "extra": 1}]},
    {"routes": [{"version": "1", "weight": 100}], "bogus": 1},
    {"routes": []},
    {"routes": {"version": "1", "weight": 100}},
]


@pytest.mark.parametrize("body", ACCEPTED)
def test_what_the_policy_check_accepts_the_document_accepts_unchanged(
    body: dict[str, Any],
) -> None:
    parsed = PolicyBody.model_validate(body)
    passed_on = parsed.model_dump(exclude_unset=True, exclude={"reason"})
    assert TrafficPolicy.from_body(passed_on) == TrafficPolicy.from_body(body)


@pytest.mark.parametrize("body", REFUSED_BY_TYPE)
def test_what_the_policy_check_refuses_by_type_the_document_refuses(
    body: dict[str, Any],
) -> None:
    with pytest.raises(InvalidRequest):
        TrafficPolicy.from_body(body)
    with pytest.raises(ValidationError):
        PolicyBody.model_validate(body)


def test_the_canary_body_is_the_controllers_own_model() -> None:
    assert CanaryBody is CanarySpec
