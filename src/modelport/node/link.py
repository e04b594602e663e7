"""A worker's part in its node: what it tells the other workers, and what it does when told.

Changes reach the store first (policies, canaries, keys, the audit log are
in the one state database every worker opens), so a message only says
*what* changed and each worker reads the rest where it always reads it:
a message lost to a worker that was restarting costs nothing, since that
worker reads everything when it starts. What lives only in a worker's
memory (the models an operator loaded or unloaded through the repository
extension, the log settings) is copied from a peer by a worker that
replaces one that ended.

The operator's worker applies a change itself, then awaits every other
worker: a repository load answers once every worker has the model READY
(or names the workers where it failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Any

from modelport.controlplane.canary import CanaryController
from modelport.controlplane.registry import Registry
from modelport.controlplane.traffic import TrafficManager
from modelport.dataplane.admission.watch import Tally, TrafficWatch
from modelport.dataplane.routing.traffic import Traffic
from modelport.dataplane.routing.window import WindowSnapshot, merged
from modelport.dataplane.sharedmemory import Registry as Regions
from modelport.dataplane.sharedmemory.registry import Owner
from modelport.errors import Conflict, InvalidRequest, ModelLoadError, ModelportError
from modelport.node.bus import BusServer, Handler, Peers
from modelport.node.forward import outline, run_step
from modelport.node.lease import Lease
from modelport.node.member import NodeMember
from modelport.observability.logs import LogControl
from modelport.observability.metrics import Metrics

log = logging.getLogger("modelport.node")

#: Seconds a worker's load may take before the operator hears it did not follow.
LOAD_WAIT_S = 600.0
#: Seconds any other message may take.
WAIT_S = 10.0
#: Seconds between a worker's reports of its traffic to the anomaly detectors.
REPORT_S = 0.25
_LOADS = ("repository.load", "version.load")


def _snapshot(found: dict[str, Any]) -> WindowSnapshot:
    """A peer's window as its worker sent it (JSON: the histogram as a list)."""
    return WindowSnapshot(
        requests=int(found["requests"]),
        errors=int(found["errors"]),
        error_rate=None,
        p99_ms=None,
        shadow_compared=int(found["shadow_compared"]),
        shadow_agreed=int(found["shadow_agreed"]),
        agreement=None,
        latency=tuple(int(n) for n in found["latency"]),
    )


def _counts(found: object) -> dict[str, int]:
    if not isinstance(found, dict):
        return {}
    return {str(k): v for k, v in found.items() if isinstance(v, int) and v > 0}


def _owner(found: object) -> Owner:
    """A region's owner as JSON carried it: [identity, tenant] or null."""
    if isinstance(found, list) and len(found) == 2 and isinstance(found[0], str):
        tenant = found[1]
        return (found[0], tenant if isinstance(tenant, str) else None)
    return None


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str):
        raise InvalidRequest("a node message without a model name")
    return model


def _version(body: dict[str, Any]) -> int:
    version = body.get("version")
    if not isinstance(version, str) or not version.isdigit():
        raise InvalidRequest("a node message without a version number")
    return int(version)


class NodeLink:
    """The bus server with this worker's handlers, its peers, and the leader lease."""

    def __init__(
        self,
        member: NodeMember,
        registry: Registry,
        manager: TrafficManager,
        canary: CanaryController,
        logs: LogControl,
        metrics: Metrics,
        traffic: Traffic,
    ) -> None:
        self.member = member
        self.registry = registry
        self.manager = manager
        self.canary = canary
        self.logs = logs
        self.metrics = metrics
        self.traffic = traffic
        self.regions: Regions | None = None
        """The shared-memory regions callers registered (set once the transports'
        context exists)."""
        self.peers = Peers(member.directory, member.index)
        self.lease = Lease(member.directory / "leader.lock", member.index)
        self.watch: TrafficWatch | None = None
        """The anomaly detectors, fed with the whole node's traffic on the lease holder."""
        self.tally: Tally | None = None
        """What the gate counts here for them (both None with authentication off)."""
        self.bus = BusServer(member.directory, member.index, self._handlers())

    # ------------------------------------------------------------ telling

    async def announce(self, op: str, body: dict[str, Any]) -> None:
        """Have every other worker apply a change made here; see the module docstring."""
        wait_s = LOAD_WAIT_S if op in _LOADS else WAIT_S
        replies = await self.peers.broadcast(op, body, wait_s)
        failed = [r for r in replies if not r.ok]
        if not failed:
            return
        text = "; ".join(f"worker {r.worker}: {r.error}" for r in failed)
        if op in _LOADS:
            raise ModelLoadError(f"not loaded on every worker of the node: {text}")
        log.error("a worker did not follow a change", extra={"op": op, "failed": text})

    async def peer_metrics(self) -> list[bytes]:
        """Every other worker's full exposition, for a scrape answered for the node."""
        replies = await self.peers.broadcast("metrics", {}, WAIT_S)
        return [r.result.encode() for r in replies if r.ok and isinstance(r.result, str)]

    async def peer_statistics(self) -> list[list[dict[str, Any]]]:
        """Every other worker's statistics entries, for Triton's statistics extension."""
        replies = await self.peers.broadcast("statistics", {}, WAIT_S)
        return [r.result for r in replies if r.ok and isinstance(r.result, list)]

    async def node_window(self, model: str, version: str) -> WindowSnapshot:
        """A version's canary window over every worker of the node."""
        own = self.traffic.window(model, version)
        body = {"model": model, "version": version}
        replies = await self.peers.broadcast("window", body, WAIT_S)
        others = [_snapshot(r.result) for r in replies if r.ok and isinstance(r.result, dict)]
        return merged([own, *others])

    async def report(self, stop: asyncio.Event) -> None:
        """Every ``REPORT_S``, hand what the gate counted to the lease holder's detectors."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), REPORT_S)
            if self.tally is None or self.watch is None:
                continue
            admitted, failed = self.tally.take()
            if not admitted and not failed:
                continue
            if self.lease.held:
                self.watch.feed(admitted, failed)
                continue
            leader = self.lease.holder()
            if leader is not None:
                body = {"admitted": admitted, "failed": failed}
                await self.peers.ask(leader, "watch", body, WAIT_S)

    async def logging_changed(self, actor: str | None, changed: dict[str, Any]) -> None:
        await self.announce("logging", {"changes": changed})

    async def copy_state(self) -> None:
        """Take what lives in a peer's memory only (see the module docstring)."""
        for worker in self.peers.indices():
            reply = await self.peers.ask(worker, "state", {}, WAIT_S)
            if reply is None or not reply.ok or not isinstance(reply.result, dict):
                continue
            for name, unloaded, override in reply.result.get("repository", []):
                try:
                    if unloaded:
                        await self.registry.unload(name)
                    else:
                        await self.registry.load(name, override)
                except Exception as exc:
                    log.error(
                        "could not follow the node's repository state",
                        extra={"model": name, "error": str(exc)},
                    )
            settings = reply.result.get("logging")
            if isinstance(settings, dict):
                self.logs.update(settings)
            for owner, name, key, offset, byte_size in reply.result.get("regions", []):
                try:
                    self._register(_owner(owner), name, key, offset, byte_size)
                except ModelportError as exc:
                    log.error(
                        "could not open a region the node holds",
                        extra={"region": name, "error": exc.message},
                    )
            log.info("copied the node's state", extra={"from_worker": worker})
            return

    # -------------------------------------------------------------- told

    def _handlers(self) -> dict[str, Handler]:
        registry = self.registry

        async def repository_load(body: dict[str, Any]) -> None:
            config = body.get("config")
            await registry.load(_model(body), config if isinstance(config, dict) else None)

        async def repository_unload(body: dict[str, Any]) -> None:
            await registry.unload(_model(body))

        async def version_load(body: dict[str, Any]) -> None:
            await registry.load_model_version(_model(body), _version(body))

        async def version_unload(body: dict[str, Any]) -> None:
            await registry.unload_model_version(_model(body), _version(body))

        async def traffic(body: dict[str, Any]) -> None:
            await self.manager.sync(_model(body))

        async def canary(body: dict[str, Any]) -> None:
            await self.canary.sync(_model(body))

        async def logging_(body: dict[str, Any]) -> None:
            changes = body.get("changes")
            if isinstance(changes, dict):
                self.logs.update(changes)

        async def poll(body: dict[str, Any]) -> None:
            await registry.poll()

        async def state(body: dict[str, Any]) -> dict[str, Any]:
            regions = self.regions.everything() if self.regions is not None else []
            return {
                "repository": registry.operator_state(),
                "logging": self.logs.triton_settings(),
                "regions": [[owner, *status] for owner, status in regions],
            }

        async def shm_register(body: dict[str, Any]) -> None:
            self._register(
                _owner(body.get("owner")),
                body.get("name"),
                body.get("key"),
                body.get("offset"),
                body.get("byte_size"),
            )

        async def shm_unregister(body: dict[str, Any]) -> None:
            if self.regions is not None:
                name = body.get("name")
                self.regions.unregister(
                    _owner(body.get("owner")), name if isinstance(name, str) else None
                )

        async def metrics(body: dict[str, Any]) -> str:
            return self.metrics.render().decode()

        async def watch(body: dict[str, Any]) -> None:
            if self.watch is None or not self.lease.held:
                return  # the lease moved on since the reporter read it: this report is lost
            self.watch.feed(_counts(body.get("admitted")), _counts(body.get("failed")))

        async def window(body: dict[str, Any]) -> dict[str, Any]:
            version = body.get("version")
            if not isinstance(version, str):
                raise InvalidRequest("a node message without a version")
            return dataclasses.asdict(self.traffic.window(_model(body), version))

        async def statistics(body: dict[str, Any]) -> list[dict[str, Any]]:
            return [m.stats.to_json(m.name, m.version) for m in registry.ready()]

        return {
            "repository.load": repository_load,
            "repository.unload": repository_unload,
            "version.load": version_load,
            "version.unload": version_unload,
            "traffic": traffic,
            "canary": canary,
            "logging": logging_,
            "poll": poll,
            "state": state,
            "metrics": metrics,
            "statistics": statistics,
            "window": window,
            "watch": watch,
            "step": lambda body: run_step(registry, body),
            "outline": lambda body: outline(registry, body),
            "shm.register": shm_register,
            "shm.unregister": shm_unregister,
        }

    def _register(
        self, owner: Owner, name: object, key: object, offset: object, byte_size: object
    ) -> None:
        if self.regions is None:
            return
        # Conflict: registered here already (a copy of the node's state raced the message).
        with contextlib.suppress(Conflict):
            self.regions.register(owner, name, key, offset, byte_size)
