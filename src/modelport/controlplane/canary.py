"""Canary rollouts: stepped weights guarded by SLOs, with automatic rollback.

A canary moves a candidate version through weight steps (5, 25, 50, 100 % by
default), one step per interval. On every tick it reads the candidate's
sliding window from the data plane; a breach of the SLO (error rate, p99
latency, shadow agreement) sends all traffic back to the stable version at
once and records why. A step passes only on evidence (enough requests, and
comparisons under an agreement SLO); one that waits too long for it aborts the
canary (``canary_step`` holds these rules). Passing the last step promotes the
candidate.

Progress is stored after every change, with wall-clock times, so a server
that restarts mid-canary resumes at the step it was on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from modelport.clock import Clock, SystemClock
from modelport.controlplane.canary_step import (
    EVIDENCE_INTERVALS,
    comparison_version,
    judge_step,
    restore_point,
    step_policy,
)
from modelport.controlplane.store import CanaryStore, PolicyStore, StoredCanary, StoredPolicy
from modelport.controlplane.traffic import (
    LOCAL,
    PolicyConflict,
    RestorePoint,
    TrafficManager,
    stable_version,
)
from modelport.dataplane.routing import Route, TrafficPolicy
from modelport.dataplane.routing.traffic import Traffic
from modelport.errors import InvalidRequest, NotFound

log = logging.getLogger("modelport.canary")

RUNNING = "running"
PAUSED = "paused"
PROMOTED = "promoted"
ROLLED_BACK = "rolled_back"
ABORTED = "aborted"
ACTIVE = (RUNNING, PAUSED)


class Slo(BaseModel):
    """What the candidate must keep to move on; unset fields are not checked."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    max_error_rate: float | None = Field(default=0.01, ge=0, le=1)
    """Highest share of server-side failures (client mistakes do not count)."""
    max_p99_ms: float | None = Field(default=None, gt=0)
    """Highest 99th-percentile latency in milliseconds."""
    min_agreement: float | None = Field(default=None, ge=0, le=1)
    """Lowest share of answers agreeing with the stable version's; while set, the
    canary shadows answers between the two versions to compare them."""


class CanarySpec(BaseModel):
    """The body of ``POST /api/v1/models/{model}/canary``."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

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


def parse_spec(body: Any) -> CanarySpec:
    """Validate a canary request; the error names the field."""
    try:
        return CanarySpec.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        message = first["msg"].removeprefix("Value error, ")
        raise InvalidRequest(f"{where}: {message}") from None


class CanaryController:
    """Runs every model's canary; one per server."""

    def __init__(
        self,
        canaries: CanaryStore,
        policies: PolicyStore,
        manager: TrafficManager,
        traffic: Traffic,
        clock: Clock | None = None,
        tick_s: float = 0.25,
    ) -> None:
        self.canaries = canaries
        self.policies = policies
        self.manager = manager
        self.traffic = traffic
        # Step times are stored and read again after a restart, maybe on another
        # node: wall time, never a monotonic reading.
        self.clock = (clock if clock is not None else SystemClock()).wall
        self.tick_s = tick_s
        self._active: dict[str, StoredCanary] = {}
        self._lock = asyncio.Lock()
        manager.track_canaries(self.versions_in_use, self.restore_point)

    def versions_in_use(self, model: str) -> set[str]:
        canary = self._active.get(model)
        if canary is None:
            return set()
        return {canary.body["version"], canary.body["stable"]}

    def is_active(self, model: str) -> bool:
        return model in self._active

    def restore_point(self, model: str, revision: int) -> RestorePoint | None:
        """What rolling back policy ``revision`` puts back (blocking: reads the store)."""
        canary = self.canaries.get(model)
        return None if canary is None else restore_point(canary.body, canary.state, revision)

    def load_stored(self) -> None:
        """Pick up canaries that were running or paused when the server stopped."""
        for stored in self.canaries.list_all(ACTIVE):
            # The windows start empty after a restart, so the step's evidence is
            # gathered afresh: its clock restarts, and the time the server was
            # down counts neither towards the interval nor against the evidence wait.
            body = {**stored.body, "step_started_at": self.clock()}
            canary = dataclasses.replace(stored, body=body)
            self._active[canary.model] = canary
            log.info(
                "canary resumed",
                extra={"model": canary.model, "step": canary.body["step"], "state": canary.state},
            )

    # ------------------------------------------------------------------- API

    def get(self, model: str) -> StoredCanary:
        found = self._active.get(model) or self.canaries.get(model)
        if found is None:
            raise NotFound(f"model {model!r} has no canary")
        return found

    async def begin(self, model: str, body: Any, actor: str = LOCAL) -> StoredCanary:
        spec = parse_spec(body)
        async with self._lock:
            if model in self._active:
                raise PolicyConflict(
                    f"model {model!r} already has a canary "
                    f"({self._active[model].state}); abort or promote it first"
                )
            states = self.manager.registry.version_states(model)
            if spec.version not in states:
                raise InvalidRequest(f"version: model {model!r} has no version {spec.version}")
            stable = spec.stable or self._stable_for(model, spec.version, states)
            if stable is None:
                raise PolicyConflict(
                    f"model {model!r} has no other ready version to compare "
                    f"version {spec.version} with; a canary needs a stable version"
                )
            if stable == spec.version:
                raise InvalidRequest("stable: must differ from the candidate version")
            if stable not in states:
                raise InvalidRequest(f"stable: model {model!r} has no version {stable}")
            before = await asyncio.to_thread(self.policies.get, model)
            progress = {
                **spec.model_dump(),
                "evidence_timeout_s": spec.evidence_timeout_s
                or EVIDENCE_INTERVALS * spec.interval_s,
                "stable": stable,
                "step": 0,
                "step_started_at": self.clock(),
                "weight": spec.steps[0],
                "reason": None,
                # What a rollback of the canary's outcome puts back (None: no policy).
                "policy_before": (
                    None if before is None else {"revision": before.revision, "policy": before.body}
                ),
            }
            previous = await asyncio.to_thread(self.canaries.get, model)
            await self._apply(model, progress, actor)
            saved = await asyncio.to_thread(
                self.canaries.put,
                model,
                progress,
                RUNNING,
                expected_revision=previous.revision if previous is not None else None,
                actor=actor,
                action="canary.start",
                reason=f"version {spec.version} against stable {stable}",
            )
            self._active[model] = saved
            self._reset_windows(model, progress)
        return saved

    async def pause(self, model: str, actor: str = LOCAL) -> StoredCanary:
        return await self._set_state(model, PAUSED, "canary.pause", actor, {RUNNING})

    async def resume(self, model: str, actor: str = LOCAL) -> StoredCanary:
        return await self._set_state(model, RUNNING, "canary.resume", actor, {PAUSED})

    async def promote(self, model: str, actor: str = LOCAL) -> StoredCanary:
        async with self._lock:
            canary = self._require_active(model)
            return await self._finish(model, canary, PROMOTED, "promoted by operator", actor)

    async def abort(
        self, model: str, actor: str = LOCAL, reason: str | None = None
    ) -> StoredCanary:
        async with self._lock:
            canary = self._require_active(model)
            why = reason or "aborted by operator"
            return await self._finish(model, canary, ABORTED, why, actor)

    # ------------------------------------------------------------ controller

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set; a failing tick is logged, never fatal."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.tick_s)
            try:
                await self.tick()
            except Exception:
                log.exception("canary tick failed")

    async def tick(self) -> None:
        async with self._lock:
            for model, canary in list(self._active.items()):
                if canary.state == RUNNING:
                    await self._step(model, canary)

    async def _step(self, model: str, canary: StoredCanary) -> None:
        body = canary.body
        verdict = judge_step(
            body,
            self.traffic.window(model, body["version"]),
            self.traffic.window(model, comparison_version(body)),
            self.clock(),
            self.traffic.window_s,
        )
        if verdict.action == "hold":
            return
        if verdict.action in ("rollback", "abort"):
            state = ROLLED_BACK if verdict.action == "rollback" else ABORTED
            await self._finish(model, canary, state, verdict.reason or state, "modelport")
            return
        if verdict.action == "promote":
            await self._finish(model, canary, PROMOTED, "every step passed its SLO", "modelport")
            return
        step = body["step"] + 1
        progress = {
            **body,
            "step": step,
            "step_started_at": self.clock(),
            "weight": body["steps"][step],
        }
        await self._apply(model, progress, "modelport")
        saved = await asyncio.to_thread(
            self.canaries.put,
            model,
            progress,
            RUNNING,
            expected_revision=canary.revision,
            actor="modelport",
            action="canary.step",
            reason=f"step {step + 1} of {len(body['steps'])}: {progress['weight']}%",
        )
        self._active[model] = saved
        self._reset_windows(model, progress)

    def _reset_windows(self, model: str, body: dict[str, Any]) -> None:
        """A step is judged on what it saw itself: candidate and comparison windows."""
        self.traffic.reset_window(model, body["version"])
        self.traffic.reset_window(model, comparison_version(body))

    # --------------------------------------------------------------- helpers

    async def _apply(self, model: str, body: dict[str, Any], actor: str) -> None:
        """Write the step's weights (and comparison shadow) as the model's traffic policy."""
        weight = int(body["weight"])
        await self._put_policy(
            model, lambda sticky: step_policy(body, sticky), actor, f"canary step {weight}%"
        )

    async def _put_policy(
        self,
        model: str,
        policy_for: Callable[[str | None], TrafficPolicy],
        actor: str,
        why: str,
    ) -> StoredPolicy:
        """Write ``policy_for(sticky_key)``, keeping the current policy's sticky key."""
        current = await asyncio.to_thread(self.policies.get, model)
        sticky = None
        if current is not None:
            with contextlib.suppress(InvalidRequest):
                sticky = TrafficPolicy.from_body(current.body).sticky_key
        policy = policy_for(sticky)
        return await self.manager.put(
            model,
            policy.to_body(),
            current.revision if current is not None else None,
            actor=actor,
            reason=why,
            by_canary=True,
        )

    async def _finish(
        self, model: str, canary: StoredCanary, state: str, reason: str, actor: str
    ) -> StoredCanary:
        body = canary.body
        target = body["version"] if state == PROMOTED else body["stable"]
        # Drop the canary from the active set first so the policy write below
        # releases the version that no longer takes traffic.
        del self._active[model]
        try:
            written = await self._put_policy(
                model,
                lambda sticky: TrafficPolicy(routes=(Route(target, 100),), sticky_key=sticky),
                actor,
                f"canary {state}: {reason}",
            )
        except Exception:
            self._active[model] = canary
            raise
        progress = {
            **body,
            "reason": reason,
            "finished_at": self.clock(),
            # A rollback from exactly this revision undoes the canary as a whole.
            "policy_revision": written.revision,
        }
        saved = await asyncio.to_thread(
            self.canaries.put,
            model,
            progress,
            state,
            expected_revision=canary.revision,
            actor=actor,
            action=f"canary.{'rollback' if state == ROLLED_BACK else state}",
            reason=reason,
        )
        level = logging.WARNING if state == ROLLED_BACK else logging.INFO
        log.log(level, f"canary {state}", extra={"model": model, "reason": reason})
        return saved

    async def _set_state(
        self, model: str, state: str, action: str, actor: str, allowed: set[str]
    ) -> StoredCanary:
        async with self._lock:
            canary = self._require_active(model)
            if canary.state not in allowed:
                raise PolicyConflict(f"model {model!r}'s canary is {canary.state}, not {allowed}")
            body = dict(canary.body)
            if state == RUNNING:
                # The paused time does not count towards the step's interval.
                body["step_started_at"] = self.clock()
            saved = await asyncio.to_thread(
                self.canaries.put,
                model,
                body,
                state,
                expected_revision=canary.revision,
                actor=actor,
                action=action,
            )
            self._active[model] = saved
            return saved

    def _require_active(self, model: str) -> StoredCanary:
        canary = self._active.get(model)
        if canary is None:
            raise PolicyConflict(f"model {model!r} has no canary running or paused")
        return canary

    def _stable_for(
        self, model: str, candidate: str, states: dict[str, tuple[str, str]]
    ) -> str | None:
        policy = self.traffic.get(model)
        if policy is not None:
            stable = stable_version(policy)
            if stable != candidate:
                return stable
        ready = sorted((v for v, (s, _) in states.items() if s == "READY"), key=int)
        others = [v for v in ready if v != candidate]
        return others[-1] if others else None
