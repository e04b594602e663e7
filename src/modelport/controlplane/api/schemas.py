"""What /api/v1 sends and accepts, as pydantic models (they become the OpenAPI document).

The v1 contract: fields and endpoints are only ever added. A field is never
renamed, removed or given a new meaning, so a v1 client keeps working
against every later server.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


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
    version: str
    weight: int


class Shadow(BaseModel):
    version: str
    fraction: float


class PolicyBody(BaseModel):
    """A traffic policy as sent to ``PUT /traffic``; ``reason`` goes to the history."""

    routes: list[Route]
    sticky_key: str | None = Field(
        None, description="Header (or request parameter) whose value pins a caller to a version"
    )
    shadow: Shadow | None = None
    reason: str | None = None


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


class SloBody(BaseModel):
    max_error_rate: float | None = 0.01
    max_p99_ms: float | None = None
    min_agreement: float | None = None


class CanaryBody(BaseModel):
    version: str
    steps: list[int] = [5, 25, 50, 100]
    interval_s: float = 60.0
    slo: SloBody = SloBody()
    min_requests: int = 20
    stable: str | None = None


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
