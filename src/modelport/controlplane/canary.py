"""Canary rollouts: stepped weights guarded by SLOs, with automatic rollback.

A canary moves a candidate version through weight steps (5, 25, 50, 100 % by
default), one step per interval. On every tick it reads the candidate's
sliding window from the data plane; a breach of the SLO (error rate, p99
latency, shadow agreement) sends all traffic back to the stable version at
once and records why. A step passes only on evidence (enough requests, and
comparisons under an agreement SLO); one that waits too long for it aborts the
canary (``canary_step`` holds these rules). Passing the last step promotes the
candidate.

The controller holds each canary as its typed spec and progress
(``canary_spec``) and turns them into the stored body only when it writes.
Progress is stored after every change, with wall-clock times from the
injected clock, so a server that restarts mid-canary resumes at the step it
was on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from modelport.clock import Clock, SystemClock
from modelport.controlplane.announce import Announce, nobody
from modelport.controlplane.canary_spec import (
    NO_POLICY,
    Canary,
    CanaryProgress,
    CanarySpec,
    PolicyBefore,
    parse_spec,
    to_body,
)
from modelport.controlplane.canary_step import (
    StepWindow,
    comparison_version,
    evidence_timeout,
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
from modelport.controlplane.waiting import wait_any
from modelport.dataplane.routing import Route, TrafficPolicy
from modelport.dataplane.routing.traffic import Traffic
from modelport.dataplane.routing.window import WindowSnapshot
from modelport.errors import InvalidRequest, NotFound

log = logging.getLogger("modelport.canary")

RUNNING = "running"
PAUSED = "paused"
PROMOTED = "promoted"
ROLLED_BACK = "rolled_back"
ABORTED = "aborted"
ACTIVE = (RUNNING, PAUSED)


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
        # Running and paused canaries, typed; the store sees only their bodies.
        self._active: dict[str, Canary] = {}
        self._lock = asyncio.Lock()
        manager.track_canaries(self.versions_in_use, self.restore_point)
        self.announce: Announce = nobody
        """Tells the node's other workers that a model's stored canary changed."""
        self._unannounced: set[str] = set()
        # Set when a canary may need ticks (one became active or changed): while
        # none runs, the controller sleeps until this instead of every tick_s.
        self._wake = asyncio.Event()
        self.windows: Callable[[str, str], Awaitable[WindowSnapshot]] = self._local_window
        """A version's window as the step is judged on it: this server's, or in a node
        of several workers every worker's added up."""

    async def _local_window(self, model: str, version: str) -> WindowSnapshot:
        return self.traffic.window(model, version)

    def versions_in_use(self, model: str) -> set[str]:
        canary = self._active.get(model)
        if canary is None:
            return set()
        return {canary.spec.version, canary.spec.stable_version}

    def is_active(self, model: str) -> bool:
        return model in self._active

    def restore_point(self, model: str, revision: int) -> RestorePoint | None:
        """What rolling back policy ``revision`` puts back (blocking: reads the store)."""
        stored = self.canaries.get(model)
        if stored is None:
            return None
        canary = Canary.from_stored(stored)
        return restore_point(canary.spec, canary.progress, revision)

    def load_stored(self) -> None:
        """Pick up canaries that were running or paused when the server stopped."""
        for stored in self.canaries.list_all(ACTIVE):
            # The windows start empty after a restart, so the step's evidence is
            # gathered afresh: its clock restarts, and the time the server was
            # down counts neither towards the interval nor against the evidence wait.
            canary = Canary.from_stored(stored)
            progress = dataclasses.replace(canary.progress, step_started_at=self.clock())
            self._active[canary.model] = dataclasses.replace(canary, progress=progress)
            self._wake.set()
            log.info(
                "canary resumed",
                extra={"model": canary.model, "step": progress.step, "state": progress.state},
            )

    # ------------------------------------------------------------------- API

    def get(self, model: str) -> StoredCanary:
        active = self._active.get(model)
        if active is not None:
            return active.stored()
        found = self.canaries.get(model)
        if found is None:
            raise NotFound(f"model {model!r} has no canary")
        return found

    async def begin(self, model: str, body: Any, actor: str = LOCAL) -> StoredCanary:
        spec = parse_spec(body)
        async with self._lock:
            if model in self._active:
                raise PolicyConflict(
                    f"model {model!r} already has a canary "
                    f"({self._active[model].progress.state}); abort or promote it first"
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
            spec = spec.model_copy(
                update={"stable": stable, "evidence_timeout_s": evidence_timeout(spec)}
            )
            progress = CanaryProgress(
                state=RUNNING,
                step=0,
                step_started_at=self.clock(),
                # What a rollback of the canary's outcome puts back.
                policy_before=(
                    NO_POLICY if before is None else PolicyBefore(before.revision, before.body)
                ),
            )
            previous = await asyncio.to_thread(self.canaries.get, model)
            await self._apply(model, spec, progress, actor)
            saved = await self._save(
                model,
                spec,
                progress,
                previous.revision if previous is not None else None,
                actor,
                "canary.start",
                f"version {spec.version} against stable {stable}",
            )
            self._reset_windows(model, spec, progress)
        await self._announce()
        return saved

    async def pause(self, model: str, actor: str = LOCAL) -> StoredCanary:
        return await self._set_state(model, PAUSED, "canary.pause", actor, {RUNNING})

    async def resume(self, model: str, actor: str = LOCAL) -> StoredCanary:
        return await self._set_state(model, RUNNING, "canary.resume", actor, {PAUSED})

    async def promote(self, model: str, actor: str = LOCAL) -> StoredCanary:
        async with self._lock:
            canary = self._require_active(model)
            saved = await self._finish(model, canary, PROMOTED, "promoted by operator", actor)
        await self._announce()
        return saved

    async def abort(
        self, model: str, actor: str = LOCAL, reason: str | None = None
    ) -> StoredCanary:
        async with self._lock:
            canary = self._require_active(model)
            why = reason or "aborted by operator"
            saved = await self._finish(model, canary, ABORTED, why, actor)
        await self._announce()
        return saved

    # ------------------------------------------------------------ controller

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set; a failing tick is logged, never fatal.

        Ticks come every ``tick_s`` while a canary runs (or a change waits to be
        announced); otherwise the controller waits for one to start, so a
        server without canaries spends nothing on them.
        """
        while not stop.is_set():
            busy = bool(self._unannounced) or any(
                c.progress.state == RUNNING for c in self._active.values()
            )
            self._wake.clear()
            await wait_any(stop, self._wake, self.tick_s if busy else None)
            if stop.is_set():
                return
            try:
                await self.tick()
            except Exception:
                log.exception("canary tick failed")

    async def tick(self) -> None:
        try:
            async with self._lock:
                for model, canary in list(self._active.items()):
                    if canary.progress.state == RUNNING:
                        await self._step(model, canary)
        finally:
            await self._announce()

    async def _step(self, model: str, canary: Canary) -> None:
        spec, progress = canary.spec, canary.progress
        window = StepWindow.of(
            await self.windows(model, spec.version),
            await self.windows(model, comparison_version(spec, progress)),
            self.traffic.window_s,
        )
        decision = judge_step(spec, progress, window, self.clock())
        if decision.action == "hold":
            return
        if decision.action in ("rollback", "abort"):
            state = ROLLED_BACK if decision.action == "rollback" else ABORTED
            await self._finish(model, canary, state, decision.reason or state, "modelport")
            return
        if decision.action == "promote":
            await self._finish(model, canary, PROMOTED, "every step passed its SLO", "modelport")
            return
        step = progress.step + 1
        progress = dataclasses.replace(progress, step=step, step_started_at=self.clock())
        await self._apply(model, spec, progress, "modelport")
        await self._save(
            model,
            spec,
            progress,
            canary.revision,
            "modelport",
            "canary.step",
            f"step {step + 1} of {len(spec.steps)}: {progress.weight(spec)}%",
        )
        self._reset_windows(model, spec, progress)

    def _reset_windows(self, model: str, spec: CanarySpec, progress: CanaryProgress) -> None:
        """A step is judged on what it saw itself: candidate and comparison windows."""
        self.traffic.reset_window(model, spec.version)
        self.traffic.reset_window(model, comparison_version(spec, progress))

    # --------------------------------------------------------------- helpers

    async def _save(
        self,
        model: str,
        spec: CanarySpec,
        progress: CanaryProgress,
        expected_revision: int | None,
        actor: str,
        action: str,
        reason: str | None = None,
    ) -> StoredCanary:
        """Store the canary's new progress (the only place its body is written)
        and, while it runs or is paused, keep it as the active one."""
        saved = await asyncio.to_thread(
            self.canaries.put,
            model,
            to_body(spec, progress),
            progress.state,
            expected_revision=expected_revision,
            actor=actor,
            action=action,
            reason=reason,
        )
        if progress.state in ACTIVE:
            self._active[model] = Canary(model, spec, progress, saved.revision, saved.updated_at)
        self._unannounced.add(model)
        self._wake.set()
        return saved

    async def _announce(self) -> None:
        """Tell the node's other workers of the canaries stored since the last call.

        Called once the lock is released: a worker that is changing a canary
        itself may be waiting for ours while we wait for it to apply this.
        """
        models, self._unannounced = self._unannounced, set()
        for model in sorted(models):
            await self.announce("canary", {"model": model})

    async def sync(self, model: str) -> None:
        """Take ``model``'s canary as the store holds it, after another worker of the
        node changed it; a new step starts this worker's windows afresh too."""
        async with self._lock:
            stored = await asyncio.to_thread(self.canaries.get, model)
            before = self._active.get(model)
            if stored is None or stored.state not in ACTIVE:
                self._active.pop(model, None)
            else:
                canary = Canary.from_stored(stored)
                self._active[model] = canary
                self._wake.set()
                if before is None or before.progress.step != canary.progress.step:
                    self._reset_windows(model, canary.spec, canary.progress)
        await self.manager.sync(model)

    async def _apply(
        self, model: str, spec: CanarySpec, progress: CanaryProgress, actor: str
    ) -> None:
        """Write the step's weights (and comparison shadow) as the model's traffic policy."""
        await self._put_policy(
            model,
            lambda sticky: step_policy(spec, progress, sticky),
            actor,
            f"canary step {progress.weight(spec)}%",
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
        self, model: str, canary: Canary, state: str, reason: str, actor: str
    ) -> StoredCanary:
        spec = canary.spec
        target = spec.version if state == PROMOTED else spec.stable_version
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
            self._wake.set()
            raise
        progress = dataclasses.replace(
            canary.progress,
            state=state,
            reason=reason,
            finished_at=self.clock(),
            # A rollback from exactly this revision undoes the canary as a whole.
            policy_revision=written.revision,
        )
        saved = await self._save(
            model,
            spec,
            progress,
            canary.revision,
            actor,
            f"canary.{'rollback' if state == ROLLED_BACK else state}",
            reason,
        )
        level = logging.WARNING if state == ROLLED_BACK else logging.INFO
        log.log(level, f"canary {state}", extra={"model": model, "reason": reason})
        return saved

    async def _set_state(
        self, model: str, state: str, action: str, actor: str, allowed: set[str]
    ) -> StoredCanary:
        async with self._lock:
            canary = self._require_active(model)
            current = canary.progress.state
            if current not in allowed:
                raise PolicyConflict(f"model {model!r}'s canary is {current}, not {allowed}")
            progress = dataclasses.replace(canary.progress, state=state)
            if state == RUNNING:
                # The paused time does not count towards the step's interval.
                progress = dataclasses.replace(progress, step_started_at=self.clock())
            saved = await self._save(model, canary.spec, progress, canary.revision, actor, action)
        await self._announce()
        return saved

    def _require_active(self, model: str) -> Canary:
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
