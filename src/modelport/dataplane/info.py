"""What the server says about itself and its models, for every transport.

Server and model metadata, a model's completed configuration, readiness,
statistics and the repository index are answered here once, as plain objects;
REST encodes them as JSON and gRPC as protobuf, and neither decides anything
about them. In particular a caller sees only the models its visibility test
allows in the two listings (statistics of every model, the repository index),
and that filter is applied in one place, :func:`only_visible`, so the
transports cannot drift apart on who sees what.

A request that names one model is authorized for that model before it
arrives here (the route's or rpc's declared role), so the visibility test
only ever removes models the caller did not name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from modelport.dataplane.table import ModelTable, ModelVersion, RepositoryControl, RepositoryEntry
from modelport.errors import ModelportError, NotFound
from modelport.observability.merge import merge_statistics
from modelport.types import TensorSpec

#: Whether the caller may see the model of that name; None lets it see every model
#: (authentication off).
Visible = Callable[[str], bool] | None


class _Named(Protocol):
    @property
    def name(self) -> str: ...


_N = TypeVar("_N", bound=_Named)


def only_visible(items: Iterable[_N], visible: Visible) -> list[_N]:
    """The items whose model the caller may see: the one visibility filter."""
    if visible is None:
        return list(items)
    return [item for item in items if visible(item.name)]


@dataclass(frozen=True, slots=True)
class ServerMetadata:
    """The server's name, version and the protocol extensions it serves."""

    name: str
    version: str
    extensions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """A model's metadata as the Open Inference Protocol answers it."""

    name: str
    versions: list[str]
    """The version asked for, or every version the repository offers."""
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether a model version can serve, and the error that says why not."""

    name: str
    error: ModelportError | None = None
    """NotFound for an unknown model or version, ModelNotReady for one that cannot serve."""

    @property
    def ready(self) -> bool:
        return self.error is None


class InfoService:
    """Answers the read-only questions of both transports from the model table.

    Unknown models and versions raise the same errors the model table raises
    (NotFound, ModelNotReady), whichever transport asks.
    """

    def __init__(
        self,
        table: ModelTable,
        repository: RepositoryControl,
        server_name: str,
        server_version: str,
        extensions: tuple[str, ...],
    ) -> None:
        self.table = table
        self.repository = repository
        self.server = ServerMetadata(server_name, server_version, extensions)
        self.peer_statistics: Callable[[], Awaitable[list[list[dict[str, Any]]]]] | None = None
        """Every other worker's entries (all versions it serves), in a node of several
        workers: the statistics extension then answers for the node."""

    def server_metadata(self) -> ServerMetadata:
        return self.server

    def model_metadata(self, name: str, version: str | None) -> ModelMetadata:
        """The version asked for, or the one served by default when ``version`` is None."""
        model = self.table.acquire(name, version)
        versions = [version] if version is not None else self.table.versions(name)
        return ModelMetadata(
            model.name,
            versions,
            model.platform,
            model.signature.inputs,
            model.signature.outputs,
        )

    def model_config(self, name: str, version: str | None) -> dict[str, Any]:
        """The completed configuration the version was loaded with (Triton's JSON shape)."""
        return self.table.acquire(name, version).config.to_json()

    def model_ready(self, name: str, version: str | None) -> Readiness:
        """Never raises: a transport answers "not ready" its own way (REST with the
        error's status, gRPC with ``ready=false``)."""
        try:
            self.table.acquire(name, version)
        except ModelportError as exc:
            return Readiness(name, exc)
        return Readiness(name)

    def statistics(
        self, name: str | None, version: str | None, visible: Visible
    ) -> list[dict[str, Any]]:
        """Triton's ``model_stats`` entries, ordered by model and version.

        With no ``name``, every ready version of every model the caller may
        see. A named model must exist (NotFound otherwise); a named version of
        it must be loaded (NotFound otherwise).
        """
        models = self.table.ready()
        if name is not None:
            self.table.versions(name)  # NotFound for an unknown model
            models = [m for m in models if m.name == name]
            if version is not None:
                models = [m for m in models if m.version == version]
                if not models:
                    raise NotFound(f"model {name!r} version {version!r} is not loaded")
        shown: list[ModelVersion] = only_visible(models, visible)
        shown.sort(key=lambda m: (m.name, int(m.version)))
        return [m.stats.to_json(m.name, m.version) for m in shown]

    async def node_statistics(
        self, name: str | None, version: str | None, visible: Visible
    ) -> list[dict[str, Any]]:
        """:meth:`statistics`, summed over the workers of a node (this one alone otherwise)."""
        entries = self.statistics(name, version, visible)
        if self.peer_statistics is None:
            return entries
        others = [
            [
                e
                for e in theirs
                if (name is None or e.get("name") == name)
                and (version is None or e.get("version") == version)
                and (visible is None or visible(str(e.get("name"))))
            ]
            for theirs in await self.peer_statistics()
        ]
        return merge_statistics([entries, *others])

    def repository_index(self, ready_only: bool, visible: Visible) -> list[RepositoryEntry]:
        """Every model version of the repository the caller may see, with its state."""
        return only_visible(self.repository.index(ready_only), visible)
