"""The ModelTable: which versions are loaded, and keeping that in step with disk.

Requests read two dictionaries (``_serving`` and ``_default``) that are only
replaced whole, on the event loop, after a new version is ready, so a
request never sees a half-loaded model. A version being replaced keeps
serving until its successor is ready, then drains its requests in flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelport.clock import Clock, SystemClock
from modelport.config.model import ModelConfig
from modelport.controlplane.coldstart import HOLD_LIMIT, ColdLoads
from modelport.controlplane.crypto.keys import KeyProvider
from modelport.controlplane.crypto.loading import load_version_at_rest
from modelport.controlplane.lifecycle import (
    LOADING,
    READY,
    UNAVAILABLE,
    ProcessHost,
    ensemble_steps,
    is_cascade,
    is_ensemble,
    load_cascade,
    load_ensemble,
    load_order,
)
from modelport.controlplane.memory import (
    MEMORY_REASON,
    Key,
    MemoryBudget,
    OverBudget,
    evictions,
    refusal,
    worth_waiting,
)
from modelport.controlplane.repository.config_files import read_model_config
from modelport.controlplane.repository.layout import (
    ModelSource,
    check_model_name,
    misnamed_models,
    scan_model,
    scan_repository,
)
from modelport.controlplane.repository.reasons import public_reason
from modelport.dataplane.admission.residency import model_refusal
from modelport.dataplane.ensemble import LateStepRunner
from modelport.dataplane.sequenced import SequencedServable, SequenceRouter
from modelport.dataplane.table import ModelVersion, RepositoryEntry, asleep
from modelport.errors import (
    InvalidRequest,
    ModelLoadError,
    ModelNotReady,
    ModelportError,
    NotFound,
    NotLoaded,
    ResidencyRefused,
)
from modelport.observability.metrics import Metrics

log = logging.getLogger("modelport.registry")

#: The index reason of a version unloaded for idleness; the next request loads it.
IDLE_REASON = "unloaded: idle"


@dataclass
class VersionRecord:
    state: str
    reason: str = ""
    fingerprint: tuple[tuple[str, int, int], ...] = ()
    failed: bool = False
    """The version was meant to serve and could not load (strict readiness counts it);
    False for versions left unloaded on purpose (policy, operator, residency)."""
    cold: bool = False
    """Unloaded for idleness: the next request for it loads it again, and polls
    leave it unloaded. Anything else that replaces the record (an operator's
    load or unload, a policy change) ends it."""
    over_budget: bool = False
    """Not loaded because the memory budget had no room: loads fail with Unavailable."""


@dataclass
class ModelRecord:
    """What the registry knows of one model directory."""

    name: str
    reason: str = ""
    config_fingerprint: tuple[tuple[str, int, int], ...] = ()
    override: dict[str, Any] | None = None
    unloaded: bool = False
    versions: dict[int, VersionRecord] = field(default_factory=dict)
    wanted: dict[int, bool] = field(default_factory=dict)
    """Per-version load (True) or unload (False) asked for through the
    management API; it overrides the version policy until asked otherwise."""
    refused_here: str = ""
    """Why this node may not serve the model (its residency), or empty."""
    steps: tuple[str, ...] = ()
    """An ensemble's: the models its steps name (loaded before it)."""
    steps_seen: tuple[Any, ...] = ()
    """An ensemble's: those models' states when it last loaded; a change reloads it."""


class Registry:
    """Implements the data plane's ModelTable and RepositoryControl protocols."""

    def __init__(
        self,
        repository: Path,
        metrics: Metrics,
        default_timeout: float | None = None,
        keys: KeyProvider | None = None,
        region: str | None = None,
        strict_readiness: bool = True,
        clock: Clock | None = None,
        cold_start_timeout: float = 60.0,
        hold_limit: int = HOLD_LIMIT,
        memory: MemoryBudget | None = None,
    ) -> None:
        """``cold_start_timeout`` bounds how long a request waits for an idle-unloaded
        version to load (and a load for room in the memory budget); ``hold_limit`` how
        many wait for one version at once; ``memory``: the budget (None: none)."""
        self.repository = repository
        self.clock = clock
        self.process_host: ProcessHost | None = None
        """In a node of several workers: which worker hosts each model with process
        instances (once per node, ``node/forward.py``)."""
        self.sequence_router: SequenceRouter | None = None
        """In a node of several workers: each sequence model's steps run on the worker
        that holds the sequence (``node/forward.py``)."""
        """The server's clock, for the schedulers of the versions it loads (None: the system's)."""
        self.strict_readiness = strict_readiness
        """Ready only while nothing has failed to load (Triton's default)."""
        self.keys = keys
        """Opens sealed versions (``modelport encrypt``); None refuses them."""
        self.region = region
        """This node's region; a model whose residency excludes it is not loaded."""
        self.metrics = metrics
        self.default_timeout = default_timeout
        self.memory = memory
        if memory is not None:
            metrics.memory_budget.set(memory.limit)
        self._records: dict[str, ModelRecord] = {}
        self._serving: dict[str, dict[str, ModelVersion]] = {}
        self._default: dict[str, ModelVersion] = {}
        self._lock = asyncio.Lock()
        self._timers: Clock = clock if clock is not None else SystemClock()
        self._now = self._timers.monotonic_ns
        self._cold: ColdLoads[tuple[str, int]] = ColdLoads(clock, cold_start_timeout, hold_limit)
        self._outlines: dict[tuple[str, int], ModelVersion] = {}
        """Versions unloaded for idleness, without what computes them (``admit``)."""
        self._started = False
        self._stopping = False
        self._pins: dict[str, frozenset[int]] = {}
        self._misnamed: dict[str, str] = {}
        self.steps = LateStepRunner()
        """What ensembles run their steps through; the composition root binds the
        pipeline to it once built (after the first load)."""
        """Directories not served for their name (shown escaped) and why; read again
        by every index, load and poll (``_rescan_misnamed``)."""

    # ------------------------------------------------------------ ModelTable

    def acquire(self, name: str, version: str | None) -> ModelVersion:
        """The loaded version (two dictionary lookups), or why there is none."""
        if version is None:
            model = self._default.get(name)
            if model is not None:
                return model
        else:
            versions = self._serving.get(name)
            if versions is not None:
                found = versions.get(version)
                if found is not None:
                    return found
        raise self._why_not(name, version)

    def admit(self, name: str, version: str | None) -> ModelVersion:
        """``acquire`` for admission's first phase: a cold version answers with its
        outline, so its request is read and then waits for the load in the route stage."""
        try:
            return self.acquire(name, version)
        except ModelportError:
            target = self._cold_version(name, version)
            outline = self._outlines.get((name, target)) if target is not None else None
            if outline is None:
                raise
            return outline

    async def acquire_loading(
        self, name: str, version: str | None, deadline_ns: int | None = None
    ) -> ModelVersion:
        """Load a version unloaded for idleness (``acquire`` said NotLoaded) and serve it.

        Callers that arrive while it loads share that one load (``ColdLoads``).
        Only idle unloads are undone here: a version an operator unloaded, or
        one never loaded, answers as ``acquire`` does.
        """
        try:
            return self.acquire(name, version)
        except NotLoaded:
            pass
        target = self._cold_version(name, version)
        if target is None:
            return self.acquire(name, version)
        label = f"model {name!r} version {target}"
        await self._cold.wait(
            (name, target), label, lambda: self._load_cold(name, target), deadline_ns
        )
        found = self._serving.get(name, {}).get(str(target))
        if found is None:
            raise self._why_not(name, str(target))
        return found

    def _cold_version(self, name: str, version: str | None) -> int | None:
        """The version a request means when that one is cold, else None.

        With no version named that is the highest version loaded or cold: the
        one the model's default would be, were nothing unloaded for idleness.
        """
        record = self._records.get(name)
        if record is None:
            return None
        if version is None:
            live = [
                v
                for v, r in record.versions.items()
                if self._asleep(name, v, r) or str(v) in self._serving.get(name, {})
            ]
            if not live:
                return None
            top = max(live)
            return top if self._asleep(name, top, record.versions[top]) else None
        if not version.isdigit():
            return None
        found = record.versions.get(int(version))
        asleep = found is not None and self._asleep(name, int(version), found)
        return int(version) if asleep else None

    def _asleep(self, name: str, version: int, state: VersionRecord) -> bool:
        """Unloaded for idleness, or loading again for that: a request waits for it."""
        return state.cold or self._cold.loading((name, version))

    async def _load_cold(self, name: str, version: int) -> str | None:
        """Load one cold version for the requests held for it: None, or why it did not."""
        async with self._lock:
            record = self._records.get(name)
            state = record.versions.get(version) if record is not None else None
            if record is None or state is None or not state.cold or self._stopping:
                return None  # changed meanwhile: the callers get what acquire says now
            source = await asyncio.to_thread(scan_model, self.repository, name)
            if source is None:
                return f"{name}: no directory in the repository"
            state.cold, state.state, state.reason = False, LOADING, ""
            self.metrics.cold_starts.labels(name).inc()
            log.info("cold start", extra={"model": name, "version": version})
            record = await self._sync(source, override=record.override, force=False)
            after = record.versions.get(version)
            if after is None or not after.cold:
                self._outlines.pop((name, version), None)
        if after is not None and after.over_budget:
            raise OverBudget(after.reason)
        if after is None:
            return self._reason(record)
        if after.state == READY and str(version) in self._serving.get(name, {}):
            return None
        return after.reason or after.state.lower()

    async def unload_idle(self, name: str, version: str, seen_ns: int) -> bool:
        """Unload a version nobody used since ``seen_ns``, keeping it loadable on demand.

        Checked again under the lock, as a request, a pin or a reload may have
        come since the version was found idle: it is not unloaded then (False).
        """
        async with self._lock:
            model = self._serving.get(name, {}).get(version)
            record = self._records.get(name)
            if model is None or record is None or self._stopping:
                return False
            if model.last_used_ns != seen_ns or int(version) in self._pins.get(name, ()):
                return False
            state = record.versions.get(int(version))
            if state is None:
                return False
            state.cold, state.state, state.reason = True, UNAVAILABLE, IDLE_REASON
            self._outlines[(name, int(version))] = asleep(model)
            await self._retire(name, {version})
            state.state, state.reason = UNAVAILABLE, IDLE_REASON
        self.metrics.idle_unloads.labels(name).inc()
        log.info(
            "model version unloaded",
            extra={"model": name, "version": version, "reason": IDLE_REASON},
        )
        return True

    def _why_not(self, name: str, version: str | None) -> ModelportError:
        record = self._records.get(name)
        if record is None:
            return NotFound(f"unknown model {name!r}")
        if version is None:
            cold = self._cold_version(name, None)
            if cold is not None:
                why = record.versions[cold].reason or IDLE_REASON
                return NotLoaded(f"model {name!r} is not ready: {why}")
            return ModelNotReady(f"model {name!r} is not ready: {self._reason(record)}")
        if not version.isdigit() or int(version) not in record.versions:
            return NotFound(f"unknown version {version!r} of model {name!r}")
        v = record.versions[int(version)]
        why = v.reason or v.state.lower()
        if self._asleep(name, int(version), v):
            return NotLoaded(f"model {name!r} version {version} is not ready: {why}")
        return ModelNotReady(f"model {name!r} version {version} is not ready: {why}")

    @staticmethod
    def _reason(record: ModelRecord) -> str:
        if record.reason:
            return record.reason
        reasons = [
            f"version {v}: {r.reason}" for v, r in sorted(record.versions.items()) if r.reason
        ]
        return "; ".join(reasons) or "no version is loaded"

    def versions(self, name: str) -> list[str]:
        record = self._records.get(name)
        if record is None:
            raise NotFound(f"unknown model {name!r}")
        return [str(v) for v in sorted(record.versions)]

    def ready(self) -> list[ModelVersion]:
        return [m for versions in self._serving.values() for m in versions.values()]

    def is_ready(self) -> bool:
        """Started, not stopping, and (strict readiness) no model failed to load.

        As Triton: a version unloaded on purpose (repository unload, the
        management API, version_policy, residency) does not count; a model
        whose config or versions are wrong does, until it is fixed, unloaded
        or removed. A directory with a name that is not a model name does not
        count either: it is no model that failed, and it may not be one at all
        (``lost+found`` at the root of an ext4 volume). The index lists it.
        """
        if not self._started or self._stopping:
            return False
        return not self.strict_readiness or not self._any_failed()

    def _any_failed(self) -> bool:
        for record in self._records.values():
            if record.unloaded:
                continue
            if record.reason or any(v.failed for v in record.versions.values()):
                return True
        return False

    # ---------------------------------------------------- RepositoryControl

    def index(self, ready_only: bool) -> list[RepositoryEntry]:
        entries: list[RepositoryEntry] = []
        if not ready_only:
            self._rescan_misnamed()
            entries += [
                RepositoryEntry(name, "", UNAVAILABLE, why) for name, why in self._misnamed.items()
            ]
        for name, record in sorted(self._records.items()):
            if not record.versions:
                if not ready_only:
                    entries.append(RepositoryEntry(name, "", UNAVAILABLE, self._reason(record)))
                continue
            for v, vr in sorted(record.versions.items()):
                if ready_only and vr.state != READY:
                    continue
                entries.append(RepositoryEntry(name, str(v), vr.state, vr.reason))
        entries.sort(key=lambda e: e.name)  # stable: versions stay in order within a model
        return entries

    async def load(self, name: str, config: dict[str, Any] | None) -> None:
        """Load or reload every version the policy selects; ``config`` replaces the
        config file, except for what only the repository may set.

        Fails (the caller gets an error, never a success) unless every version
        meant to serve loaded: a version that failed, or whose reload failed
        while its previous copy serves on, fails the call.
        """
        check_model_name(name)
        async with self._lock:
            self._rescan_misnamed()
            source = scan_model(self.repository, name)
            if source is None:
                raise NotFound(f"unknown model {name!r}: no directory in the repository")
            if config is not None and not source.problem:
                # An override that would widen what loading may do (another file,
                # backend, pickles ...) is refused before anything changes.
                try:
                    read_model_config(source, config)
                except InvalidRequest:
                    raise
                except ModelportError:
                    pass  # an invalid config: reported through the record, as without one
            record = await self._sync(source, override=config, force=True)
            await self._sync_ensembles()
        if record.reason:
            raise ModelLoadError(f"failed to load {name!r}: {record.reason}")
        self._raise_over_budget(record, record.versions)
        failed = [
            f"version {v}: {r.reason}"
            for v, r in sorted(record.versions.items())
            if r.failed or (r.state == READY and r.reason)
        ]
        if failed:
            raise ModelLoadError(f"failed to load {name!r}: {'; '.join(failed)}")
        if not any(v.state == READY for v in record.versions.values()):
            raise ModelLoadError(f"failed to load {name!r}: {self._reason(record)}")

    async def unload(self, name: str) -> None:
        check_model_name(name)
        async with self._lock:
            record = self._records.get(name)
            if record is None:
                raise NotFound(f"unknown model {name!r}")
            await self._retire(name, set(self._serving.get(name, {})))
            for vr in record.versions.values():
                vr.state, vr.reason, vr.cold = UNAVAILABLE, "unloaded", False
            self._forget_outlines(name)
            record.unloaded = True
            await self._sync_ensembles()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load every model in the repository; broken ones are marked unavailable."""
        await self.poll()
        self._started = True

    async def poll(self) -> None:
        """Bring the loaded versions in step with the repository on disk."""
        async with self._lock:
            found = await asyncio.to_thread(scan_repository, self.repository)
            await asyncio.to_thread(self._rescan_misnamed)
            for name in list(self._records):
                if name not in found:
                    await self._retire(name, set(self._serving.get(name, {})))
                    del self._records[name]
                    self._forget_outlines(name)
                    log.info("model removed", extra={"model": name})
            for name in load_order({n: self._steps_named(s) for n, s in found.items()}):
                source = found[name]
                record = self._records.get(source.name)
                if record is not None and record.unloaded and not self._changed(record, source):
                    continue
                await self._sync(source, override=None, force=False)

    def _rescan_misnamed(self) -> None:
        """Read the misnamed directories again, so a renamed or removed one leaves the index.

        One listing of the repository root (only misnamed entries are looked
        at further), done in place by an index request or a load, so the index
        is right without ``--poll-interval``. A new one is logged once.
        """
        try:
            misnamed = misnamed_models(self.repository)
        except OSError as exc:  # the repository itself is unreadable: keep the last listing
            log.warning("repository not readable", extra={"error": str(exc)})
            return
        for name in sorted(set(misnamed) - set(self._misnamed)):
            log.error("model not served", extra={"model": name, "reason": misnamed[name]})
        self._misnamed = misnamed

    def stop_accepting(self) -> None:
        """Report not ready from now on (shutdown has begun)."""
        self._stopping = True

    async def close(self) -> None:
        """Drain and release every version (server shutdown)."""
        self._stopping = True
        self._cold.cancel()
        async with self._lock:
            for name in list(self._serving):
                await self._retire(name, set(self._serving[name]))

    # ------------------------------------------- versions (management API)

    def version_states(self, name: str) -> dict[str, tuple[str, str]]:
        """Every version of a model on disk with its state and reason."""
        record = self._records.get(name)
        if record is None:
            raise NotFound(f"unknown model {name!r}")
        return {str(v): (r.state, r.reason) for v, r in sorted(record.versions.items())}

    def operator_state(self) -> list[tuple[str, bool, dict[str, Any] | None]]:
        """(model, unloaded by an operator, the config its last load gave) of every
        model an operator changed: what a new worker of a node copies from a peer."""
        return [
            (name, record.unloaded, record.override)
            for name, record in sorted(self._records.items())
            if record.unloaded or record.override is not None
        ]

    def model_names(self) -> list[str]:
        return sorted(self._records)

    def pin(self, name: str, versions: AbstractSet[int]) -> None:
        """Keep these versions loaded whatever the version policy says.

        Traffic policies and canaries pin the versions they send requests to;
        the next load or poll brings pinned versions up.
        """
        if versions:
            self._pins[name] = frozenset(versions)
        else:
            self._pins.pop(name, None)

    def pins(self, name: str) -> frozenset[int]:
        return self._pins.get(name, frozenset())

    def set_wanted(self, wanted: dict[str, dict[int, bool]]) -> None:
        """Restore per-version load/unload choices saved before a restart."""
        for name, choices in wanted.items():
            record = self._records.get(name)
            if record is None:
                record = self._records[name] = ModelRecord(name)
            record.wanted = dict(choices)

    async def load_model_version(self, name: str, version: int) -> None:
        """Load one version, even one the version policy does not select."""
        check_model_name(name)
        async with self._lock:
            source = scan_model(self.repository, name)
            if source is None:
                raise NotFound(f"unknown model {name!r}: no directory in the repository")
            if version not in source.versions:
                raise NotFound(f"unknown version {version} of model {name!r}")
            record = self._records.get(name) or ModelRecord(name)
            self._records[name] = record
            record.wanted[version] = True
            cold = record.versions.get(version)
            if cold is not None:
                cold.cold = False  # an operator's load is no cold start: it loads now
            record = await self._sync(source, override=record.override, force=False)
            await self._sync_ensembles()
        state = record.versions.get(version)
        self._raise_over_budget(record, [version])
        if state is None or state.state != READY:
            why = state.reason if state is not None else self._reason(record)
            raise ModelLoadError(f"failed to load {name!r} version {version}: {why}")

    async def refresh(self, name: str) -> None:
        """Bring one model in step with its pins and choices (load or release versions)."""
        async with self._lock:
            source = scan_model(self.repository, name)
            record = self._records.get(name)
            if source is None or record is None:
                raise NotFound(f"unknown model {name!r}")
            await self._sync(source, override=record.override, force=False)
            await self._sync_ensembles()

    async def unload_model_version(self, name: str, version: int) -> None:
        """Unload one version and keep it unloaded across repository polls."""
        check_model_name(name)
        async with self._lock:
            record = self._records.get(name)
            if record is None:
                raise NotFound(f"unknown model {name!r}")
            if version not in record.versions:
                raise NotFound(f"unknown version {version} of model {name!r}")
            record.wanted[version] = False
            source = scan_model(self.repository, name)
            if source is None:
                raise NotFound(f"unknown model {name!r}: no directory in the repository")
            await self._sync(source, override=record.override, force=False)
            await self._sync_ensembles()

    def _selected(self, record: ModelRecord, config: ModelConfig, on_disk: list[int]) -> list[int]:
        """The version policy's choice, then API choices, then pins (which always win)."""
        chosen = set(config.version_policy.select(on_disk))
        for v, load in record.wanted.items():
            if v in on_disk:
                if load:
                    chosen.add(v)
                else:
                    chosen.discard(v)
        chosen |= self._pins.get(record.name, frozenset()) & set(on_disk)
        return sorted(chosen)

    # --------------------------------------------------------------- helpers

    def _public(self, message: str) -> str:
        """A reason fit for callers: no path outside the repository, none absolute."""
        return public_reason(message, self.repository)

    @staticmethod
    def _changed(record: ModelRecord, source: ModelSource) -> bool:
        if record.config_fingerprint != source.config_fingerprint:
            return True
        on_disk = source.version_fingerprints
        return set(on_disk) != set(record.versions) or any(
            record.versions[v].fingerprint != fp for v, fp in on_disk.items()
        )

    async def _sync(
        self, source: ModelSource, override: dict[str, Any] | None, force: bool
    ) -> ModelRecord:
        name = source.name
        record = self._records.get(name)
        if record is None:
            record = self._records[name] = ModelRecord(name)
        config_changed = (
            force
            or record.config_fingerprint != source.config_fingerprint
            or record.override != override
        )
        record.config_fingerprint = source.config_fingerprint
        record.override = override
        record.unloaded = False
        record.reason = ""
        if source.problem:
            record.reason = self._public(source.problem)
            self._mark_all(record, source, record.reason)
            return record
        try:
            config = read_model_config(source, override)
            wanted = self._selected(record, config, list(source.versions))
        except ModelportError as exc:
            record.reason = self._public(exc.message)
            self._mark_all(record, source, record.reason)
            log.error("model config invalid", extra={"model": name, "reason": exc.message})
            return record
        if not source.versions:
            record.reason = f"{source.name}: no version directories (positive integers)"
            return record
        record.steps = ensemble_steps(config)
        if record.steps:
            seen = self._steps_state(record.steps)
            config_changed = config_changed or seen != record.steps_seen
            record.steps_seen = seen
        serving = self._serving.get(name, {})
        for v in sorted(set(record.versions) - set(source.versions)):
            del record.versions[v]
        for v in source.versions:
            if v not in wanted:
                why = (
                    "unloaded through the management API"
                    if record.wanted.get(v) is False
                    else "not selected by version_policy"
                )
                record.versions[v] = VersionRecord(UNAVAILABLE, why)
        pinned = self._pins.get(name, frozenset())
        for v in wanted:
            fp = source.version_fingerprints[v]
            current = record.versions.get(v)
            if current is not None and current.cold and not force and v not in pinned:
                continue  # unloaded for idleness: the next request loads it, not a poll
            up_to_date = (
                current is not None
                and current.fingerprint == fp
                and str(v) in serving
                and not config_changed
            )
            if up_to_date:
                continue
            await self._load_one(record, source, v, config, fp)
        stale = set(self._serving.get(name, {})) - {str(v) for v in wanted}
        await self._retire(name, stale)
        return record

    def _steps_named(self, source: ModelSource) -> tuple[str, ...]:
        """The models an ensemble's steps name, for the load order (empty otherwise)."""
        if source.problem:
            return ()
        try:
            return ensemble_steps(read_model_config(source, None))
        except ModelportError:
            return ()  # its own load reports the config's problem

    def _steps_state(self, names: tuple[str, ...]) -> tuple[Any, ...]:
        """What an ensemble's validation depended on: its step models' records."""
        state: list[Any] = []
        for name in names:
            record = self._records.get(name)
            if record is None:
                state.append((name, None))
                continue
            versions = tuple(
                (v, r.state, r.fingerprint, r.cold) for v, r in sorted(record.versions.items())
            )
            state.append(
                (name, record.config_fingerprint, record.reason, record.refused_here, versions)
            )
        return tuple(state)

    async def _sync_ensembles(self) -> None:
        """Reload the ensembles whose step models changed since they loaded."""
        for name, record in list(self._records.items()):
            if not record.steps or record.unloaded:
                continue
            if self._steps_state(record.steps) == record.steps_seen:
                continue
            source = await asyncio.to_thread(scan_model, self.repository, name)
            if source is not None:
                await self._sync(source, override=record.override, force=False)

    def _step_model(self, name: str, version: str | None) -> ModelVersion:
        """A step's model as an ensemble's load checks it (``lifecycle.StepModels``)."""
        record = self._records.get(name)
        if record is None:
            raise NotFound(f"unknown model {name!r}: not in the repository")
        if record.refused_here:
            raise ResidencyRefused(record.refused_here)
        return self.admit(name, version)

    async def _load_ensemble(
        self,
        record: ModelRecord,
        version: int,
        config: ModelConfig,
        origin: str,
        fingerprint: tuple[tuple[str, int, int], ...],
    ) -> None:
        """Load an ensemble (or cascade) version on the loop: it only checks itself against
        the loaded step models. One that no longer checks stops serving (its steps would fail)."""
        name = record.name
        try:
            if is_cascade(config):
                answers = self.metrics.cascade_answers

                def answered(stage: str, count: int) -> None:
                    answers.labels(name, stage).inc(count)

                model = load_cascade(
                    name,
                    version,
                    config,
                    origin,
                    self._step_model,
                    self.steps,
                    self.clock,
                    answered,
                )
            else:
                model = load_ensemble(
                    name, version, config, origin, self._step_model, self.steps, self.clock
                )
        except ModelportError as exc:
            reason = self._public(exc.message)
            log.error(
                "model version failed to load",
                extra={"model": name, "version": version, "reason": reason},
            )
            await self._retire(name, {str(version)})
            record.versions[version] = VersionRecord(UNAVAILABLE, reason, fingerprint, failed=True)
            return
        model.last_used_ns = self._now()
        old = self._serving.get(name, {}).get(str(version))
        self._publish(name, {**self._serving.get(name, {}), str(version): model})
        record.versions[version] = VersionRecord(READY, "", fingerprint)
        if old is not None:
            await old.servable.drain_and_close()

    def _mark_all(self, record: ModelRecord, source: ModelSource, reason: str) -> None:
        serving = self._serving.get(record.name, {})
        for v in source.versions:
            if str(v) not in serving:
                record.versions[v] = VersionRecord(UNAVAILABLE, reason, failed=True)

    async def _load_one(
        self,
        record: ModelRecord,
        source: ModelSource,
        version: int,
        config: ModelConfig,
        fingerprint: tuple[tuple[str, int, int], ...],
    ) -> None:
        name = record.name
        previous = record.versions.get(version)
        if previous is None or previous.state != READY:
            record.versions[version] = VersionRecord(LOADING)
        origin = str(source.config_file or source.path)
        refused = model_refusal(self.region, config.modelport.residency)
        if refused is not None:
            # Residency is the law, not a load failure: a copy already serving
            # under an older config stops too, rather than serving on.
            reason = f"not served on this node: {refused}"
            log.error(
                "model version refused by residency",
                extra={"model": name, "version": version, "reason": reason},
            )
            await self._retire(name, {str(version)})
            record.versions[version] = VersionRecord(UNAVAILABLE, reason, fingerprint)
            record.refused_here = reason
            return
        record.refused_here = ""
        if is_ensemble(config) or is_cascade(config):
            await self._load_ensemble(record, version, config, origin, fingerprint)
            return
        key, files = (name, str(version)), source.versions[version]
        before = 0
        if self.memory is not None:
            refused = await self._make_room(key, files)
            if refused is not None:
                self._refuse(record, version, config, fingerprint, refused)
                return
            before = await self.memory.before_load()
        started = self._now()
        try:
            model = await asyncio.to_thread(
                load_version_at_rest,
                self.keys,
                name,
                version,
                source.versions[version],
                config,
                origin,
                self.default_timeout,
                self.clock,
                self.process_host,
            )
        except ModelportError as exc:
            self.metrics.load_duration.labels(name).observe((self._now() - started) / 1e9)
            log.error(
                "model version failed to load",
                extra={"model": name, "version": version, "reason": exc.message},
            )
            if str(version) in self._serving.get(name, {}):
                # The old copy keeps serving; say why the new one did not replace it.
                record.versions[version] = VersionRecord(
                    READY,
                    f"reload failed, previous copy serving: {self._public(exc.message)}",
                    fingerprint,
                )
            else:
                record.versions[version] = VersionRecord(
                    UNAVAILABLE, self._public(exc.message), fingerprint, failed=True
                )
            return
        loaded = self._now()
        self.metrics.load_duration.labels(name).observe((loaded - started) / 1e9)
        if self.memory is not None:
            refused = await self._fit_loaded(key, model, files, before)
            if refused is not None:
                await model.servable.drain_and_close()
                del model
                await self.memory.release()
                self._refuse(record, version, config, fingerprint, refused)
                return
        model.last_used_ns = loaded  # idle from now, not since the clock's origin
        old = self._serving.get(name, {}).get(str(version))
        self._publish(name, {**self._serving.get(name, {}), str(version): model})
        record.versions[version] = VersionRecord(READY, "", fingerprint)
        if old is not None:
            await old.servable.drain_and_close()
            if self.memory is not None:
                del old
                await self.memory.release()

    async def _retire(self, name: str, versions: set[str]) -> None:
        if not versions:
            return
        current = self._serving.get(name, {})
        leaving = [current[v] for v in versions if v in current]
        self._publish(name, {v: m for v, m in current.items() if v not in versions})
        for model in leaving:
            await model.servable.drain_and_close()
            record = self._records.get(name)
            if record is not None and int(model.version) in record.versions:
                record.versions[int(model.version)].state = UNAVAILABLE
        if self.memory is not None and leaving:
            for v in versions:
                self._forget_memory((name, v))
            del leaving, current, model
            await self.memory.release()  # the versions' objects are gone: trim the heap

    # ---------------------------------------------------------- memory budget

    async def _make_room(self, key: Key, files: Path) -> str | None:
        """Evict what ``key``'s load needs room for: None, or why it cannot load.

        When only versions busy now stand in the way, wait for them (up to the
        cold-start timeout) rather than fail a load that could fit in a moment.
        """
        memory = self.memory
        assert memory is not None
        label = f"{key[0]} version {key[1]}"
        needed = memory.estimate(key, files)
        deadline = self._now() + self._cold.timeout_ns
        while True:
            residents = memory.residents(self.ready(), self._pinned, key)
            free = memory.free()
            plan = evictions(residents, needed, free)
            if plan is not None:
                for victim in plan:
                    await self._evict(victim, label)
                return None
            if (
                self._stopping
                or self._now() >= deadline
                or not worth_waiting(residents, needed, free)
            ):
                return refusal(label, needed, memory.limit, free)
            await self._pause(memory.poll_s)

    async def _fit_loaded(
        self, key: Key, model: ModelVersion, files: Path, before: int
    ) -> str | None:
        """Measure a version just loaded and, when it came out larger than its estimate,
        evict what it crossed the budget by: None, or why it cannot stay."""
        memory = self.memory
        assert memory is not None
        size = await memory.measured(key, before, model, files)
        self.metrics.model_memory.labels(*key).set(size)
        residents = memory.residents(self.ready(), self._pinned, key)
        free = memory.limit - (memory.used() - size)
        plan = evictions(residents, size, free)
        if plan is None:
            self._forget_memory(key)
            return refusal(f"{key[0]} version {key[1]}", size, memory.limit, free)
        for victim in plan:
            await self._evict(victim, f"{key[0]} version {key[1]}")
        return None

    async def _evict(self, key: Key, made_room_for: str) -> None:
        """Unload one version for memory, keeping it loadable on demand like an idle one."""
        assert self.memory is not None
        name, version = key
        record = self._records.get(name)
        model = self._serving.get(name, {}).get(version)
        state = record.versions.get(int(version)) if record is not None else None
        if model is None or state is None:
            return
        size = self.memory.sizes.get(key, 0)
        state.cold, state.state, state.reason = True, UNAVAILABLE, MEMORY_REASON
        self._outlines[(name, int(version))] = asleep(model)
        del model
        await self._retire(name, {version})
        state.state, state.reason = UNAVAILABLE, MEMORY_REASON
        self.metrics.evictions.labels(name, version).inc()
        log.info(
            "model version unloaded",
            extra={"model": name, "version": version, "reason": MEMORY_REASON, "bytes": size},
        )
        await self.memory.record(name, version, size, made_room_for)

    def _refuse(
        self,
        record: ModelRecord,
        version: int,
        config: ModelConfig,
        fingerprint: tuple[tuple[str, int, int], ...],
        reason: str,
    ) -> None:
        """Mark a version the budget had no room for.

        One a request was loading stays loadable on demand (the next request tries
        again); one that must stay loaded (``keep_loaded``, pinned) counts as failed.
        A copy already serving (a reload) serves on.
        """
        name = record.name
        log.error(
            "model version not loaded: memory budget",
            extra={"model": name, "version": version, "reason": reason},
        )
        if str(version) in self._serving.get(name, {}):
            why = f"reload failed, previous copy serving: {reason}"
            record.versions[version] = VersionRecord(READY, why, fingerprint, over_budget=True)
            return
        held = config.modelport.keep_loaded or self._pinned(name, version)
        cold = not held and (name, version) in self._outlines
        record.versions[version] = VersionRecord(
            UNAVAILABLE, reason, fingerprint, failed=not cold, cold=cold, over_budget=True
        )

    @staticmethod
    def _raise_over_budget(record: ModelRecord, versions: Iterable[int]) -> None:
        """A load the memory budget refused fails with Unavailable: retrying may work later."""
        for v in versions:
            state = record.versions.get(v)
            if state is not None and state.over_budget:
                raise OverBudget(f"failed to load {record.name!r} version {v}: {state.reason}")

    def _forget_memory(self, key: Key) -> None:
        if self.memory is None or key not in self.memory.sizes:
            return
        self.memory.forget(key)
        self.metrics.model_memory.remove(*key)

    def _pinned(self, name: str, version: int) -> bool:
        return version in self._pins.get(name, frozenset())

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds`` on the server's clock (a fake one in tests)."""
        woken = asyncio.Event()
        timer = self._timers.call_later(int(seconds * 1e9), woken.set)
        try:
            await woken.wait()
        finally:
            timer.cancel()

    def _forget_outlines(self, name: str) -> None:
        for key in [k for k in self._outlines if k[0] == name]:
            del self._outlines[key]

    def _cold_above(self, name: str, version: int) -> bool:
        record = self._records.get(name)
        return record is not None and any(r.cold for v, r in record.versions.items() if v > version)

    def _publish(self, name: str, versions: dict[str, ModelVersion]) -> None:
        """Swap in a model's serving versions; the highest one is the default."""
        if self.sequence_router is not None:
            for model in versions.values():
                if isinstance(model.servable, SequencedServable):
                    model.servable.router = self.sequence_router
        serving = dict(self._serving)
        default = dict(self._default)
        top = max(versions, key=int) if versions else None
        if top is not None and not self._cold_above(name, int(top)):
            serving[name] = versions
            default[name] = versions[top]
        elif top is not None:
            # A higher version sleeps: requests naming none wake it, not this one.
            serving[name] = versions
            default.pop(name, None)
        else:
            serving.pop(name, None)
            default.pop(name, None)
        self._serving, self._default = serving, default
        self.metrics.models_loaded.set(sum(len(v) for v in serving.values()))
