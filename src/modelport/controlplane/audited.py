"""Triton's repository extension (load, unload) with every call in the audit log.

The transports call :class:`RepositoryControl`; this wrapper passes the call
to the registry and then records who asked for what and how it ended, in
the state store's hash-chained log, so a model loaded or unloaded through
``/v2/repository`` or gRPC is as accountable as one changed through /api/v1.
"""

from __future__ import annotations

import asyncio
from typing import Any

from modelport.controlplane.announce import Announce, nobody
from modelport.controlplane.registry import Registry
from modelport.controlplane.store import AuditLog
from modelport.controlplane.store.tables import MODEL_NAME_MAX
from modelport.controlplane.traffic import LOCAL, TrafficManager
from modelport.dataplane.table import RepositoryEntry
from modelport.errors import ModelportError


class AuditedRepository:
    """Implements the data plane's RepositoryControl over the registry."""

    def __init__(
        self,
        registry: Registry,
        audit: AuditLog,
        traffic: TrafficManager | None = None,
        announce: Announce = nobody,
    ) -> None:
        self.registry = registry
        self.audit = audit
        self.traffic = traffic
        """Refuses to unload versions a traffic policy or canary uses (as /api/v1 does)."""
        self.announce = announce
        """The rest of the node follows; a load answers once every worker has loaded."""

    def index(self, ready_only: bool) -> list[RepositoryEntry]:
        return self.registry.index(ready_only)

    async def load(
        self, name: str, config: dict[str, Any] | None, actor: str | None = None
    ) -> None:
        detail: dict[str, Any] = {"config_override": config is not None}
        try:
            await self.registry.load(name, config)
            await self.announce("repository.load", {"model": name, "config": config})
        except ModelportError as exc:
            await self._record(name, "model.load", actor, {**detail, "error": exc.message})
            raise
        await self._record(name, "model.load", actor, detail)

    async def unload(self, name: str, actor: str | None = None) -> None:
        try:
            if self.traffic is None:
                await self.registry.unload(name)
            else:
                await self.traffic.unload_checked(name, None, lambda: self.registry.unload(name))
            await self.announce("repository.unload", {"model": name})
        except ModelportError as exc:
            await self._record(name, "model.unload", actor, {"error": exc.message})
            raise
        await self._record(name, "model.unload", actor, {})

    async def _record(
        self, name: str, action: str, actor: str | None, detail: dict[str, Any]
    ) -> None:
        await asyncio.to_thread(
            self.audit.record, name[:MODEL_NAME_MAX], action, actor=actor or LOCAL, detail=detail
        )
