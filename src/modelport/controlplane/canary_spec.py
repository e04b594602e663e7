"""What a canary is: its spec as started, its progress, and the stored body of both.

``CanarySpec`` is what an operator asks for (the API validates the request
with it); once the canary begins, its ``stable`` and ``evidence_timeout_s``
are filled in and it never changes again. ``CanaryProgress`` is everything
that moves: the step, when it began, the state and how the canary ended.

The store keeps the two as one JSON body (``to_body`` / ``from_body``), the
shape every earlier release wrote, so a canary resumes across a restart and
an upgrade::

    {"version": "2", "steps": [5, 25, 50, 100], "interval_s": 60.0,
     "slo": {"max_error_rate": 0.01, "max_p99_ms": null, "min_agreement": null},
     "min_requests": 20, "evidence_timeout_s": 300.0, "stable": "1",
     "step": 0, "step_started_at": 1765000000.0, "weight": 5, "reason": null,
     "policy_before": {"revision": 3, "policy": {...}},
     "finished_at": ..., "policy_revision": ...}

Canaries stored before ``evidence_timeout_s`` and ``policy_before`` existed
lack both keys; they load, and are written back without them.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from modelport.controlplane.store import StoredCanary
from modelport.errors import InvalidRequest


class Slo(BaseModel):
    """What the candidate must keep to move on; unset fields are not checked."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    max_error_rate: float | None = Field(default=0.01, ge=0, le=1)
    """Highest share of server-side failures (client mistakes do not count)."""
    max_p99_ms: float | None = Field(default=None, gt=0)
    """Highest 99th-percentile latency in milliseconds."""
    min_agreement: float | None = Field(default=None, ge=0, le=1)
    """Lowest share of answers agreeing with the stable version's; while set, the
    canary shadows answers between the two versions to compare them."""


class CanarySpec(BaseModel):
    """The body of ``POST /api/v1/models/{model}/canary``."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    version: str = Field(pattern=r"^[0-9]+$")
    """The candidate version."""
    steps: list[int] = Field(default_factory=lambda: [5, 25, 50, 100], min_length=1)
    """The candidate's weight at each step, in percent, rising to 100."""
    interval_s: float = Field(default=60.0, gt=0, le=7 * 24 * 3600)
    """The shortest time a step lasts."""
    slo: Slo = Field(default_factory=Slo)
    """What the candidate must keep throughout."""
    min_requests: int = Field(default=20, ge=1)
    """Requests the candidate must have answered in the window before the SLO is judged
    and before a step may pass (with ``min_agreement``, as many comparisons too)."""
    evidence_timeout_s: float | None = Field(default=None, gt=0, le=30 * 24 * 3600)
    """How long a step may run without that evidence before the canary is aborted,
    from the step's start; at least ``interval_s``, by default five times ``interval_s``."""
    stable: str | None = Field(default=None, pattern=r"^[0-9]+$")
    """The version to roll back to; by default the current policy's main route
    or, without a policy, the highest ready version other than the candidate."""

    @model_validator(mode="after")
    def _steps_rise_to_100(self) -> CanarySpec:
        steps = self.steps
        if any(s <= 0 or s > 100 for s in steps):
            raise ValueError("steps: every step is a percentage from 1 to 100")
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError("steps: each step must be larger than the one before")
        if steps[-1] != 100:
            raise ValueError("steps: the last step must be 100")
        if self.evidence_timeout_s is not None and self.evidence_timeout_s < self.interval_s:
            raise ValueError(
                f"evidence_timeout_s: must be at least interval_s ({self.interval_s:g}); "
                "a step cannot pass before its interval is over"
            )
        return self

    @property
    def stable_version(self) -> str:
        """The version a rollback returns to.

        ``CanaryController.begin`` fills ``stable`` in before the canary is
        stored, so every started canary names it; only a request may leave it out.
        """
        if self.stable is None:
            raise RuntimeError(f"the canary of version {self.version} has not begun")
        return self.stable


def parse_spec(body: Any) -> CanarySpec:
    """Validate a canary request; the error names the field."""
    try:
        return CanarySpec.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        message = first["msg"].removeprefix("Value error, ")
        raise InvalidRequest(f"{where}: {message}") from None


@dataclass(frozen=True, slots=True)
class PolicyBefore:
    """The traffic policy in force when a canary began: what a rollback of the
    canary's outcome puts back."""

    revision: int | None
    """Its revision; None when no policy was in force."""
    policy: dict[str, Any] | None
    """Its body; None when no policy was in force."""


NO_POLICY = PolicyBefore(None, None)


@dataclass(frozen=True, slots=True)
class CanaryProgress:
    """Where a canary stands; every change is a new value, stored before it counts."""

    state: str
    """running, paused, promoted, rolled_back or aborted (kept beside the body)."""
    step: int
    """Index into the spec's ``steps`` of the step being run (or the last one run)."""
    step_started_at: float
    """Wall-clock start of the step, moved to now on resume and after a restart,
    so time the canary did not run counts neither towards the interval nor
    against the evidence wait."""
    reason: str | None = None
    """Why the canary finished, once it has."""
    policy_before: PolicyBefore | None = None
    """The policy a rollback of the outcome restores; None for canaries stored
    before this was recorded, whose outcome rolls back like any policy."""
    finished_at: float | None = None
    """Wall-clock time the canary finished."""
    policy_revision: int | None = None
    """The policy revision the finished canary wrote."""

    def weight(self, spec: CanarySpec) -> int:
        """The candidate's weight in percent at this step."""
        return spec.steps[self.step]


def to_body(spec: CanarySpec, progress: CanaryProgress) -> dict[str, Any]:
    """The stored body of a canary (the module docstring shows its shape)."""
    body = spec.model_dump()
    if spec.evidence_timeout_s is None:
        del body["evidence_timeout_s"]
    body["step"] = progress.step
    body["step_started_at"] = progress.step_started_at
    body["weight"] = progress.weight(spec)
    body["reason"] = progress.reason
    before = progress.policy_before
    if before is not None:
        body["policy_before"] = (
            None
            if before.revision is None
            else {"revision": before.revision, "policy": before.policy}
        )
    if progress.finished_at is not None:
        body["finished_at"] = progress.finished_at
    if progress.policy_revision is not None:
        body["policy_revision"] = progress.policy_revision
    return body


def from_body(body: Mapping[str, Any], state: str) -> tuple[CanarySpec, CanaryProgress]:
    """A stored canary's spec and progress.

    The spec was validated when the canary began and is rebuilt, not checked
    again: a limit added later must not strand a canary already running (a
    week-long ``interval_s`` stores a default evidence wait of five weeks,
    longer than a request may ask for).
    """
    slo = body["slo"]
    spec = CanarySpec.model_construct(
        version=str(body["version"]),
        steps=[int(s) for s in body["steps"]],
        interval_s=float(body["interval_s"]),
        slo=Slo.model_construct(
            max_error_rate=_number(slo.get("max_error_rate")),
            max_p99_ms=_number(slo.get("max_p99_ms")),
            min_agreement=_number(slo.get("min_agreement")),
        ),
        min_requests=int(body["min_requests"]),
        evidence_timeout_s=_number(body.get("evidence_timeout_s")),
        stable=str(body["stable"]),
    )
    before: PolicyBefore | None = None
    if "policy_before" in body:
        stored = body["policy_before"]
        before = (
            NO_POLICY
            if stored is None
            else PolicyBefore(int(stored["revision"]), dict(stored["policy"]))
        )
    finished_at = body.get("finished_at")
    policy_revision = body.get("policy_revision")
    progress = CanaryProgress(
        state=state,
        step=int(body["step"]),
        step_started_at=float(body["step_started_at"]),
        reason=body.get("reason"),
        policy_before=before,
        finished_at=None if finished_at is None else float(finished_at),
        policy_revision=None if policy_revision is None else int(policy_revision),
    )
    return spec, progress


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True, slots=True)
class Canary:
    """A model's canary as the controller holds it: typed, with its store revision."""

    model: str
    spec: CanarySpec
    progress: CanaryProgress
    revision: int
    """The stored revision, expected by the next write."""
    updated_at: datetime

    @classmethod
    def from_stored(cls, stored: StoredCanary) -> Canary:
        spec, progress = from_body(stored.body, stored.state)
        return cls(stored.model, spec, progress, stored.revision, stored.updated_at)

    def stored(self) -> StoredCanary:
        """The canary as the store and the API show it."""
        body = to_body(self.spec, self.progress)
        return StoredCanary(self.model, body, self.progress.state, self.revision, self.updated_at)
