"""What the data plane reads about models: the ModelTable protocol.

The control plane implements these protocols; the data plane never imports
it. A ``ModelVersion`` is everything a request needs about one loaded
version, built once at load so the request path does no lookups beyond a
dictionary; its ``servable`` computes the answers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from modelport.config.model import ModelConfig, PayloadLog, RateLimit
from modelport.dataplane.servable import Outcome, Servable
from modelport.errors import ModelportError, NotLoaded
from modelport.observability.payloads import enabled_settings
from modelport.observability.profile import InputProfile
from modelport.observability.statistics import ModelStatistics
from modelport.types import Call, InferenceRequest, ModelSignature, TensorSpec


@dataclass(eq=False)
class ModelVersion:
    """One ready model version."""

    name: str
    version: str
    platform: str
    signature: ModelSignature
    config: ModelConfig
    servable: Servable
    """What computes this version's answers (a runtime behind a scheduler, today)."""
    stats: ModelStatistics
    profile: InputProfile | None = None
    """The version's reference profile (``reference_profile.json``); None costs nothing."""
    inputs: dict[str, TensorSpec] = field(init=False)
    outputs: dict[str, TensorSpec] = field(init=False)
    output_names: tuple[str, ...] = field(init=False)
    cached: bool = field(init=False)
    """Whether responses are cached (Triton's ``response_cache.enable``)."""
    batch_key: str | None = field(init=False)
    rate_limit: RateLimit | None = field(init=False)
    """The model's token bucket (``modelport.rate_limit``), read once at load."""
    payload_log: PayloadLog | None = field(init=False)
    """Payload logging settings when the model turns it on; None costs the request nothing."""
    last_used_ns: int = field(default=0, init=False)
    """When the version last took a request (the pipeline's clock, monotonic): the
    start time the pipeline reads anyway, written once per request, so finding
    idle versions costs the request path nothing more."""

    def __post_init__(self) -> None:
        self.inputs = {s.name: s for s in self.signature.inputs}
        self.outputs = {s.name: s for s in self.signature.outputs}
        self.output_names = tuple(self.outputs)
        self.cached = self.config.response_cache is not None and self.config.response_cache.enable
        self.batch_key = self.config.modelport.batch_key
        self.rate_limit = self.config.modelport.rate_limit
        self.payload_log = enabled_settings(self.config)


class Asleep:
    """The servable of a version unloaded for idleness: it computes nothing.

    A version's outline (name, signature, config) outlives its unload, so the
    transports' first phase can take a request for it and read its body; the
    pipeline then acquires the version afresh and waits for it to load.
    """

    __slots__ = ("label",)

    def __init__(self, label: str) -> None:
        self.label = label

    async def execute(self, call: Call | None, request: InferenceRequest) -> Outcome:
        raise NotLoaded(f"{self.label} is not loaded")

    def refusal(self) -> ModelportError | None:
        return None

    async def drain_and_close(self) -> None:
        return None


def asleep(model: ModelVersion) -> ModelVersion:
    """The outline of ``model`` once unloaded: what it takes, without what computes it."""
    return ModelVersion(
        model.name,
        model.version,
        model.platform,
        model.signature,
        model.config,
        Asleep(f"model {model.name!r} version {model.version}"),
        model.stats,
        model.profile,
    )


@dataclass(frozen=True, slots=True)
class RepositoryEntry:
    """One line of the repository index: a model version and its state."""

    name: str
    version: str
    state: str
    reason: str = ""


class ModelTable(Protocol):
    """Loaded models, looked up by name and version."""

    def acquire(self, name: str, version: str | None) -> ModelVersion:
        """The loaded version to serve: the given one, or the default (highest ready) one.

        Synchronous, so the request path pays no await for a loaded version.
        Raises NotFound for an unknown model or version, ModelNotReady when it
        exists but cannot serve (the reason says why), and its subclass
        NotLoaded when it will serve once loaded: await ``acquire_loading``.
        """
        ...

    async def acquire_loading(
        self, name: str, version: str | None, deadline_ns: int | None = None
    ) -> ModelVersion:
        """The version ``acquire`` refused with NotLoaded, once it has loaded.

        ``deadline_ns`` (monotonic, the pipeline's clock) is the caller's own
        deadline: it waits no longer. Raises what ``acquire`` raises when the
        version is gone, ModelNotReady with the reason when the load fails,
        DeadlineExceeded or Unavailable when the wait is over first.
        """
        ...

    def versions(self, name: str) -> list[str]:
        """Every version of a model the repository offers (NotFound if none)."""
        ...

    def ready(self) -> list[ModelVersion]:
        """Every ready version of every model."""
        ...

    def is_ready(self) -> bool:
        """Whether the server is ready: every model that should serve does."""
        ...


class AdmissionView:
    """The table as admission's first phase reads it, before a request's body.

    A version that loads on first use is admitted as its outline (``asleep``)
    when the table offers ``admit``; the route stage acquires it afresh and
    waits for the load. The lookups are the table's own bound methods, so a
    loaded version costs the request no extra call.
    """

    __slots__ = ("acquire", "table")

    def __init__(self, table: ModelTable) -> None:
        self.table = table
        admit: Callable[[str, str | None], ModelVersion] | None = getattr(table, "admit", None)
        self.acquire: Callable[[str, str | None], ModelVersion] = (
            admit if admit is not None else table.acquire
        )

    async def acquire_loading(
        self, name: str, version: str | None, deadline_ns: int | None = None
    ) -> ModelVersion:
        return await self.table.acquire_loading(name, version, deadline_ns)

    def versions(self, name: str) -> list[str]:
        return self.table.versions(name)

    def ready(self) -> list[ModelVersion]:
        return self.table.ready()

    def is_ready(self) -> bool:
        return self.table.is_ready()


class RepositoryControl(Protocol):
    """Triton's model-repository extension: index, load, unload."""

    def index(self, ready_only: bool) -> list[RepositoryEntry]: ...

    async def load(
        self, name: str, config: dict[str, Any] | None, actor: str | None = None
    ) -> None:
        """Load or reload a model; ``config`` overrides its config file.

        ``actor`` is who asked (the caller's identity), for the audit log."""
        ...

    async def unload(self, name: str, actor: str | None = None) -> None: ...
