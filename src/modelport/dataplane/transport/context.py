"""What both transports need, handed in by the composition root."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

from modelport.dataplane.info import InfoService
from modelport.dataplane.pipeline import Pipeline
from modelport.dataplane.sharedmemory import Registry
from modelport.dataplane.sharedmemory.registry import Owner
from modelport.dataplane.table import ModelTable, RepositoryControl
from modelport.observability.logs import LogControl
from modelport.observability.metrics import Metrics
from modelport.types import Identity

#: Triton protocol extensions served on both transports.
EXTENSIONS = (
    "binary_tensor_data",
    "model_repository",
    "model_repository(unload_dependents)",
    "model_configuration",
    "statistics",
    "system_shared_memory",
    "sequence",
    "sequence(string_id)",
    "logging",
    "generate",
)


class AcceptedJob(Protocol):
    """A job the queue took: what the 202 answer names."""

    @property
    def id(self) -> str: ...
    @property
    def state(self) -> str: ...


class JobQueue(Protocol):
    """Where an infer request asking ``Prefer: respond-async`` goes once admitted.

    The composition root provides it (``jobs_setup.py``); the transport only
    decides "async or not", runs the same admission a synchronous call gets,
    and hands over the body it read.
    """

    async def submit(
        self,
        *,
        model: str,
        version: str | None,
        identity: Identity | None,
        body: bytes,
        header_length: int | None,
        residency: str | None,
        idempotency_key: str | None,
        callback_url: str | None = None,
    ) -> AcceptedJob:
        """Store a queued job; with an idempotency key this caller used already,
        the first job instead. ``callback_url`` (``X-Callback-Url``) is called when
        the job ends; a host the server does not allow is refused (InvalidRequest)."""
        ...


@dataclass(frozen=True)
class TransportContext:
    pipeline: Pipeline
    table: ModelTable
    repository: RepositoryControl
    metrics: Metrics
    server_name: str
    server_version: str
    max_body_bytes: int
    max_elements: int
    log_control: LogControl | None = None
    """Triton's logging extension (REST's /v2/logging, gRPC's LogSettings); None
    where a server is built without one (tests of other parts)."""
    announce: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None
    """In a node of several workers: has every other worker apply a change made here
    (shared-memory regions, which each worker holds open itself)."""
    jobs: JobQueue | None = None
    """Asynchronous inference (``Prefer: respond-async``); None: the header is ignored."""

    async def register_region(
        self, owner: Owner, name: object, key: object, offset: object, byte_size: object
    ) -> None:
        """Register a caller's region here and, in a node, on every worker, so a
        request naming it may reach whichever worker the kernel picks."""
        self.shared_memory.register(owner, name, key, offset, byte_size)
        if self.announce is not None:
            body = {"owner": owner, "name": name, "key": key, "offset": offset}
            await self.announce("shm.register", {**body, "byte_size": byte_size})

    async def unregister_region(self, owner: Owner, name: str | None) -> None:
        self.shared_memory.unregister(owner, name)
        if self.announce is not None:
            await self.announce("shm.unregister", {"owner": owner, "name": name})

    @cached_property
    def info(self) -> InfoService:
        """Metadata, configuration, statistics and the index, answered once for both
        transports (built on first use, from the table and repository above)."""
        return InfoService(
            self.table, self.repository, self.server_name, self.server_version, EXTENSIONS
        )

    @cached_property
    def shared_memory(self) -> Registry:
        """The system shared-memory regions callers registered, shared by both transports
        (built on first use; docs/shared-memory.md)."""
        return Registry()
