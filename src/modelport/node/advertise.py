"""The node's registration in the fleet: heartbeats, its ready models, and draining.

A node started with ``--advertise`` writes its record (``NodeStore``) at
once, then every ``HEARTBEAT_S``, and sooner when its ready set changes (it
looks every ``LOOK_S``), so the gateway sees a model load or unload within
a second. With ``--workers N`` only the holder of the node's leader lease
runs this, and it advertises the models ready on every worker that answers
(a model still loading on one worker would fail the requests the kernel
hands that worker). On stop it writes the record once more marked draining,
keeps it fresh for ``drain_seconds`` while the node still serves, so the
gateway moves traffic elsewhere before anything is refused, then removes it.

A store that is down costs log lines, never the node: the heartbeat goes on
trying, and the gateway drops a node whose heartbeat goes stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from modelport.clock import Clock
from modelport.controlplane.registry import Registry
from modelport.controlplane.store.nodes import NodeRecord, NodeStore
from modelport.errors import ModelportError

log = logging.getLogger("modelport.fleet")

#: Seconds between heartbeats when nothing changes.
HEARTBEAT_S = 1.0
#: Seconds between looks at the ready set.
LOOK_S = 0.2

ReadyModels = Callable[[], Awaitable[dict[str, list[str]]]]


@dataclass(frozen=True)
class Placement:
    """What the node says of itself, from its configuration."""

    name: str
    http_url: str
    grpc_address: str | None
    region: str | None
    group: str | None
    weight: int


def default_name(http_url: str) -> str:
    """A name from the advertised URL's host and port (``10.0.0.5-8000``), unique per URL."""
    parts = urlsplit(http_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = re.sub(r"[^A-Za-z0-9._-]+", "-", parts.hostname or "node").strip("-._") or "node"
    suffix = f"-{port}"
    return host[: 64 - len(suffix)] + suffix


def local_ready(registry: Registry) -> dict[str, list[str]]:
    """This process's ready models, each with its configured residency."""
    return {m.name: list(m.config.modelport.residency) for m in registry.ready()}


def common_ready(own: dict[str, list[str]], peers: list[set[str]]) -> dict[str, list[str]]:
    """The models ready here that every answering peer has ready too."""
    return {name: residency for name, residency in own.items() if all(name in p for p in peers)}


class Advertiser:
    """Keeps this node's record in the store fresh, then drains and withdraws it."""

    def __init__(
        self,
        store: NodeStore,
        placement: Placement,
        ready: ReadyModels,
        clock: Clock,
        drain_seconds: float,
    ) -> None:
        self._store = store
        self._placement = placement
        self._ready = ready
        self._clock = clock
        self._drain_seconds = drain_seconds
        self._written: NodeRecord | None = None
        self._failing = False
        self.running = False
        """Whether this process advertises (in a node: holds the leader lease)."""
        self.withdrawn = asyncio.Event()
        """Set once the record is removed after the drain."""

    async def run(self, stop: asyncio.Event) -> None:
        """Heartbeat until ``stop``; then drain for ``drain_seconds`` and remove the record."""
        self.running = True
        try:
            last = -HEARTBEAT_S
            while not stop.is_set():
                models = await self._models()
                now = self._clock.wall()
                written = self._written
                due = written is None or written.models != models or now - last >= HEARTBEAT_S
                if due and await self._write(models, draining=False, now=now):
                    last = now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), LOOK_S)
            await self._drain()
        finally:
            await self._withdraw()

    async def _drain(self) -> None:
        log.info(
            "draining: marked so in the fleet, serving on",
            extra={"node": self._placement.name, "drain_seconds": self._drain_seconds},
        )
        deadline = self._clock.monotonic_ns() + int(self._drain_seconds * 1e9)
        while True:
            await self._write(await self._models(), draining=True, now=self._clock.wall())
            left = (deadline - self._clock.monotonic_ns()) / 1e9
            if left <= 0:
                return
            await asyncio.sleep(min(left, HEARTBEAT_S))

    async def _withdraw(self) -> None:
        try:
            p = self._placement
            await asyncio.to_thread(self._store.remove, p.name, p.http_url)
            log.info("left the fleet", extra={"node": self._placement.name})
        except Exception as exc:
            log.error(
                "could not remove this node's fleet record; it goes stale instead",
                extra={"node": self._placement.name, "error": str(exc)},
            )
        finally:
            self.withdrawn.set()

    async def _models(self) -> dict[str, list[str]]:
        try:
            return await self._ready()
        except Exception:
            log.exception("could not read the node's ready models")
            return self._written.models if self._written is not None else {}

    async def _write(self, models: dict[str, list[str]], *, draining: bool, now: float) -> bool:
        p = self._placement
        record = NodeRecord(
            name=p.name,
            http_url=p.http_url,
            grpc_address=p.grpc_address,
            region=p.region,
            group=p.group,
            weight=p.weight,
            models=models,
            draining=draining,
            heartbeat=now,
        )
        try:
            await asyncio.to_thread(self._store.upsert, record)
        except Exception as exc:
            # A store that is down, or a row another process with this name holds:
            # never the node's end; the next heartbeat tries again.
            if not self._failing:
                error = exc.message if isinstance(exc, ModelportError) else repr(exc)
                log.error(
                    "could not write this node's fleet record; retrying",
                    extra={"node": p.name, "error": error},
                )
            self._failing = True
            return False
        if self._failing:
            log.info("writing this node's fleet record again", extra={"node": p.name})
        self._failing = False
        if self._written is None or self._written.models != models:
            log.info("advertised", extra={"node": p.name, "models": sorted(models)})
        self._written = replace(record)
        return True
