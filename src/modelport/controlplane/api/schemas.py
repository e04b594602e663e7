"""What /api/v1 sends and accepts, as pydantic models (they become the OpenAPI document).

The v1 contract: fields and endpoints are only ever added. A field is never
renamed, removed or given a new meaning, so a v1 client keeps working
against every later server.

Request bodies are described field by field, so that the document says what
the server accepts. The canary body is the controller's own model
(``CanarySpec``), so it cannot drift from what a canary takes. A traffic
policy is checked by ``TrafficPolicy.from_body`` (weights summing to 100,
each version once, canonical version numbers); ``PolicyBody`` states the same
shape and bounds, strictly typed so that it never lets through, by coercion,
a value that check refuses.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema

from modelport.controlplane.canary_spec import CanarySpec
from modelport.dataplane.routing.policy import MAX_ROUTES, TOTAL_WEIGHT

#: The body of ``POST .../canary``: the controller validates with this very model.
CanaryBody = CanarySpec


def _version_ref(value: object) -> str | int:
    """A version as sent: a string or an integer, never coerced from anything else.

    One check for both forms (a union would report one error per form); the
    number itself is checked by ``TrafficPolicy.from_body``.
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError('must be a version number such as "2" or 2')
    return value


VersionRef = Annotated[
    str | int,
    PlainValidator(_version_ref),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": "^[0-9]{1,18}$"},
                {"type": "integer", "minimum": 1},
            ],
            "description": 'A version number, as a string ("2") or an integer (2)',
        }
    ),
]


class VersionInfo(BaseModel):
    version: str
    state: str = Field(description="LOADING, READY, UNLOADING or UNAVAILABLE")
    reason: str = ""
    weight: int | None = Field(
        default=None, description="Share of unversioned requests (percent) under the policy"
    )


class ModelInfo(BaseModel):
    name: str
    versions: list[VersionInfo]
    traffic_revision: int = Field(0, description="0 while the model has no traffic policy")
    canary: str | None = Field(None, description="State of the model's latest canary")


class ModelList(BaseModel):
    models: list[ModelInfo]


class VersionChange(BaseModel):
    model: str
    version: str
    state: str
    reason: str = ""


class Route(BaseModel):
    """Send ``weight`` percent of the requests that name no version to ``version``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    version: VersionRef
    weight: int = Field(ge=0, le=TOTAL_WEIGHT, description="Whole percent; all routes sum to 100")


class Shadow(BaseModel):
    """Copy a ``fraction`` of answered requests to ``version`` and compare the answers."""

    model_config = ConfigDict(extra="forbid", strict=True)

    version: VersionRef
    fraction: float = Field(gt=0, le=1)


class PolicyBody(BaseModel):
    """A traffic policy as sent to ``PUT /traffic``; ``reason`` goes to the history."""

    model_config = ConfigDict(extra="forbid", strict=True)

    routes: list[Route] = Field(
        min_length=1, max_length=MAX_ROUTES, description="Each version once; weights sum to 100"
    )
    sticky_key: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]{1,128}$",
        description="Header (or request parameter) whose value pins a caller to a version",
    )
    shadow: Shadow | None = None
    reason: str | None = Field(None, description="Recorded in the history with the change")


class TrafficState(BaseModel):
    model: str
    revision: int = Field(description="Send it back in If-Match to change the policy")
    policy: dict[str, Any] | None = Field(
        description="routes, sticky_key, shadow; null: the highest ready version answers"
    )
    updated_at: datetime | None = None
    updated_by: str | None = None
    windows: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per-version sliding window: requests, errors, error_rate, p99_ms, "
        "shadow_compared, shadow_agreed, agreement",
    )


class CanaryState(BaseModel):
    model: str
    state: str = Field(description="running, paused, promoted, rolled_back or aborted")
    revision: int
    updated_at: datetime
    spec: dict[str, Any] = Field(description="The canary as started, with its progress")
    window: dict[str, Any] | None = Field(None, description="The candidate's sliding window now")


class Reason(BaseModel):
    reason: str | None = None


class EventInfo(BaseModel):
    id: int
    model: str
    at: datetime
    actor: str
    action: str
    detail: dict[str, Any]
    reason: str | None


class History(BaseModel):
    events: list[EventInfo]
    next_before: int | None = Field(None, description="Pass as ?before= for older events")


class ErrorBody(BaseModel):
    error: str
    code: str = Field(description="Machine-readable: not_found, conflict, revision_conflict, ...")
