"""Traffic policies: validated, stored durably, pinned in the registry, applied to routing.

The store is the source of truth; the data plane's ``Traffic`` table is a copy
that this module keeps in step. Every write goes store first (with the
caller's revision, so concurrent writers cannot overwrite each other), then
registry pins, then the live table, so a policy a request can see always
names versions that are loaded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

from modelport.controlplane.announce import Announce, nobody
from modelport.controlplane.lifecycle import READY
from modelport.controlplane.registry import Registry
from modelport.controlplane.store import (
    TRAFFIC_UPDATE,
    AuditLog,
    PolicyStore,
    RevisionConflict,
    StoredPolicy,
)
from modelport.dataplane.routing import Route, TrafficPolicy
from modelport.dataplane.routing.traffic import Traffic
from modelport.errors import FailedPrecondition, InvalidRequest, NotFound

log = logging.getLogger("modelport.traffic")

#: Who made a change, until authentication gives callers an identity.
LOCAL = "local"


class PolicyConflict(FailedPrecondition):
    """Raised when a change would break what a traffic policy or canary relies on
    (409; gRPC FAILED_PRECONDITION: change the policy or canary first)."""


@dataclass(frozen=True, slots=True)
class RestorePoint:
    """A policy a rollback puts back instead of the previous revision, and why."""

    body: dict[str, Any]
    why: str


class TrafficManager:
    """Owns every model's traffic policy; the API and the canary controller call it."""

    def __init__(
        self, policies: PolicyStore, audit: AuditLog, registry: Registry, traffic: Traffic
    ) -> None:
        self.policies = policies
        self.audit = audit
        self.registry = registry
        self.traffic = traffic
        self._canary_versions: Callable[[str], set[str]] = lambda _model: set()
        self._restore_point: Callable[[str, int], RestorePoint | None] = lambda _m, _r: None
        self._lock = asyncio.Lock()
        self.announce: Announce = nobody
        """Tells the node's other workers that a model's stored policy changed."""

    def track_canaries(
        self,
        versions_of: Callable[[str], set[str]],
        restore_point: Callable[[str, int], RestorePoint | None] | None = None,
    ) -> None:
        """Let the canary controller tell which versions its canaries use and, for
        a policy revision a finished canary wrote, what a rollback puts back."""
        self._canary_versions = versions_of
        if restore_point is not None:
            self._restore_point = restore_point

    # ----------------------------------------------------------------- start

    def pin_stored(self) -> None:
        """Before the first repository scan: pin every stored policy's versions and
        restore the versions operators loaded or unloaded (the latest choice wins)."""
        for stored in self.policies.list_all():
            policy = self._parse(stored)
            if policy is not None:
                self._pin(stored.model, policy)
        choices: dict[str, dict[int, bool]] = {}
        before: int | None = None
        while True:
            page = self.audit.history(None, limit=1000, before_id=before)
            for event in page:
                if event.action in ("version.load", "version.unload"):
                    version = str(event.detail.get("version", ""))
                    if version.isdigit():
                        chosen = choices.setdefault(event.model, {})
                        chosen.setdefault(int(version), event.action == "version.load")
            if len(page) < 1000:
                break
            before = page[-1].id
        self.registry.set_wanted(choices)

    async def start(self) -> None:
        """Apply stored policies after the models loaded; fall back loudly where needed."""
        for stored in await asyncio.to_thread(self.policies.list_all):
            policy = self._parse(stored)
            if policy is None:
                continue
            missing = sorted(v for v in policy.versions() if not self._is_ready(stored.model, v))
            if missing:
                try:
                    await self._fall_back(stored, policy, missing)
                except RevisionConflict:
                    # Another worker of the node wrote the fallback first: apply its policy.
                    await self.sync(stored.model)
                continue
            self.traffic.set(stored.model, policy)

    def _parse(self, stored: StoredPolicy) -> TrafficPolicy | None:
        try:
            return TrafficPolicy.from_body(stored.body)
        except InvalidRequest as exc:
            log.error(
                "stored traffic policy is invalid and is ignored",
                extra={"model": stored.model, "error": exc.message},
            )
            return None

    async def _fall_back(
        self, stored: StoredPolicy, policy: TrafficPolicy, missing: list[str]
    ) -> None:
        """A policy naming versions that are gone sends everything to the stable one."""
        stable = stable_version(policy)
        ready = self._ready_versions(stored.model)
        target = stable if stable not in missing else (ready[-1] if ready else None)
        log.error(
            "traffic policy names versions that are not available; falling back",
            extra={"model": stored.model, "missing": missing, "fallback": target},
        )
        if target is None:
            self.traffic.set(stored.model, None)
            return
        fallback = TrafficPolicy(routes=(Route(target, 100),), sticky_key=policy.sticky_key)
        reason = f"version(s) {', '.join(missing)} not available at start; all traffic to {target}"
        saved = await asyncio.to_thread(
            self.policies.put,
            stored.model,
            fallback.to_body(),
            expected_revision=stored.revision,
            actor="modelport",
            reason=reason,
        )
        self._pin(stored.model, fallback)
        self.traffic.set(saved.model, fallback)

    # ------------------------------------------------------------ read/write

    def get(self, model: str) -> StoredPolicy | None:
        self.registry.version_states(model)  # NotFound for unknown models
        return self.policies.get(model)

    async def put(
        self,
        model: str,
        body: dict[str, Any],
        expected_revision: int | None,
        actor: str = LOCAL,
        reason: str | None = None,
        by_canary: bool = False,
    ) -> StoredPolicy:
        """Validate, load what it needs, store with the caller's revision, apply."""
        policy = TrafficPolicy.from_body(body)
        async with self._lock:
            if not by_canary and self._canary_versions(model):
                raise PolicyConflict(
                    f"model {model!r} has a canary in progress, which owns its traffic "
                    "policy; pause, abort or promote the canary first"
                )
            states = self.registry.version_states(model)
            unknown = sorted(v for v in policy.versions() if v not in states)
            if unknown:
                raise InvalidRequest(
                    f"model {model!r} has no version {', '.join(unknown)} "
                    f"(versions: {', '.join(states) or 'none'})"
                )
            current = await asyncio.to_thread(self.policies.get, model)
            stale = (current.revision if current is not None else None) != expected_revision
            if stale:
                have = current.revision if current is not None else 0
                raise RevisionConflict(
                    f"model {model!r}'s traffic policy is at revision {have}, not "
                    f"{expected_revision or 0}; read it again and send its revision in If-Match",
                    current,
                )
            await self._ensure_loaded(model, policy)
            saved = await asyncio.to_thread(
                self.policies.put,
                model,
                policy.to_body(),
                expected_revision=expected_revision,
                actor=actor,
                reason=reason,
            )
            self._pin(model, policy)
            self.traffic.set(model, policy)
            # Versions no longer named are released (unless the version policy keeps them).
            await self.registry.refresh(model)
        # Outside the lock: another worker applying its own change may be waiting
        # for ours while we wait for it.
        await self.announce("traffic", {"model": model})
        log.info(
            "traffic policy changed",
            extra={"model": model, "revision": saved.revision, "actor": actor},
        )
        return saved

    async def delete(
        self, model: str, expected_revision: int, actor: str = LOCAL, reason: str | None = None
    ) -> None:
        async with self._lock:
            self.registry.version_states(model)
            if self._canary_versions(model):
                raise PolicyConflict(
                    f"model {model!r} has a canary in progress; abort or promote it first"
                )
            await asyncio.to_thread(
                self.policies.delete,
                model,
                expected_revision=expected_revision,
                actor=actor,
                reason=reason,
            )
            self.registry.pin(model, set())
            self.traffic.set(model, None)
            await self.registry.refresh(model)
        await self.announce("traffic", {"model": model})

    async def sync(self, model: str) -> None:
        """Apply the stored policy of ``model`` as another worker of the node wrote it:
        its versions pinned and loaded, then the routing table set."""
        async with self._lock:
            stored = await asyncio.to_thread(self.policies.get, model)
            policy = self._parse(stored) if stored is not None else None
            if policy is None:
                canary = {int(v) for v in self._canary_versions(model)}
                self.registry.pin(model, canary)
                self.traffic.set(model, None)
                await self.registry.refresh(model)
                return
            self._pin(model, policy)
            await self.registry.refresh(model)
            missing = sorted(v for v in policy.versions() if not self._is_ready(model, v))
            if missing:
                log.error(
                    "a version of the node's traffic policy did not load on this worker",
                    extra={"model": model, "missing": missing},
                )
            self.traffic.set(model, policy)

    async def rollback(
        self, model: str, actor: str = LOCAL, reason: str | None = None
    ) -> StoredPolicy:
        """Put back the policy that was in force before the current one.

        That is the previous revision, unless a finished canary wrote the
        current one: then it is the policy from before the canary began, since
        the previous revision is the canary's own last step. The history's
        reason names the revision restored and why.
        """
        current = await asyncio.to_thread(self.policies.get, model)
        if current is None:
            self.registry.version_states(model)
            raise PolicyConflict(f"model {model!r} has no traffic policy to roll back")
        point = await asyncio.to_thread(self._restore_point, model, current.revision)
        if point is not None:
            previous: object = point.body
            restored = point.why
        else:
            events = await asyncio.to_thread(self.audit.history, model, limit=1000)
            previous = next(
                (
                    e.detail.get("policy")
                    for e in events
                    if e.action == TRAFFIC_UPDATE
                    and e.detail.get("revision") == current.revision - 1
                ),
                None,
            )
            restored = f"restores revision {current.revision - 1}"
        if not isinstance(previous, dict):
            raise PolicyConflict(
                f"model {model!r} has no earlier traffic policy than revision {current.revision}"
            )
        what = f"rollback from revision {current.revision}: {restored}"
        why = f"{reason} ({what})" if reason else what
        return await self.put(model, previous, current.revision, actor=actor, reason=why)

    def check_unload(self, model: str, versions: Collection[str] | None = None) -> None:
        """Refuse to unload versions a traffic policy or canary sends requests to.

        ``versions`` None is the whole model (Triton's repository unload);
        otherwise the versions to unload (/api/v1's version unload). Versions
        pinned in the registry count too. PolicyConflict (409 /
        FAILED_PRECONDITION) names the versions and what uses them.
        """
        policy = self.traffic.get(model)
        in_policy = set(policy.versions()) if policy is not None else set()
        in_canary = self._canary_versions(model)
        pinned = {str(v) for v in self.registry.pins(model)}
        used = in_policy | in_canary | pinned
        hit = sorted(used if versions is None else used & set(versions), key=int)
        if not hit:
            return
        users = []
        if set(hit) & (in_policy | (pinned - in_canary)):
            stored = self.policies.get(model)
            revision = f" (revision {stored.revision})" if stored is not None else ""
            users.append(f"the model's traffic policy{revision}")
        if set(hit) & in_canary:
            users.append("its canary")
        which = f"version {hit[0]} is" if len(hit) == 1 else f"versions {', '.join(hit)} are"
        what = "the model" if versions is None else ("it" if len(hit) == 1 else "them")
        raise PolicyConflict(
            f"model {model!r} {which} used by {' and '.join(users)}; change the policy "
            f"(/api/v1/models/{model}/traffic) or end the canary before unloading {what}"
        )

    async def unload_checked(
        self,
        model: str,
        versions: Collection[str] | None,
        unload: Callable[[], Awaitable[None]],
    ) -> None:
        """Run ``unload`` unless ``check_unload`` refuses it.

        Under the policy lock, so no policy can start using the versions
        between the check and the unload.
        """
        async with self._lock:
            self.check_unload(model, versions)
            await unload()

    # --------------------------------------------------------------- helpers

    async def _ensure_loaded(self, model: str, policy: TrafficPolicy) -> None:
        """Pin and load every version the policy names; one that fails gets no traffic."""
        before = self.registry.pins(model)
        self.registry.pin(model, before | {int(v) for v in policy.versions()})
        await self.registry.refresh(model)
        for version in sorted(policy.versions(), key=int):
            if not self._is_ready(model, version):
                _, why = self.registry.version_states(model).get(version, ("", "not loaded"))
                self.registry.pin(model, before)
                raise PolicyConflict(
                    f"version {version} of model {model!r} cannot take traffic: {why}"
                )

    def _pin(self, model: str, policy: TrafficPolicy) -> None:
        canary = {int(v) for v in self._canary_versions(model)}
        self.registry.pin(model, {int(v) for v in policy.versions()} | canary)

    def _is_ready(self, model: str, version: str) -> bool:
        try:
            state, _ = self.registry.version_states(model).get(version, ("", ""))
        except NotFound:
            return False
        return state == READY

    def _ready_versions(self, model: str) -> list[str]:
        try:
            states = self.registry.version_states(model)
        except NotFound:
            return []
        return sorted((v for v, (s, _) in states.items() if s == READY), key=int)


def stable_version(policy: TrafficPolicy) -> str:
    """The route with the most weight (the lowest version on a tie)."""
    best = max(policy.routes, key=lambda r: (r.weight, -int(r.version)))
    return best.version
