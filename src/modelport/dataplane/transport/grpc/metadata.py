"""A call's gRPC metadata as the Call's read-only view, read only when asked.

``ServicerContext.invocation_metadata()`` builds its tuple afresh on every
call, so the view keeps the context and reads it on a lookup: a request
whose stages look nothing up (no residency, no sticky routing) pays nothing.
Keys are lower case on the wire; a lookup lowers the name it gets. Binary
(``-bin``) entries hold bytes and are left out.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import grpc


class MetadataView(Mapping[str, str]):
    """A read-only ``str`` view over one call's invocation metadata.

    A repeated key answers its first value, as a lookup by name did before.
    """

    __slots__ = ("_context",)

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context

    def _pairs(self) -> Iterator[tuple[str, str]]:
        for key, value in self._context.invocation_metadata() or ():
            if isinstance(value, str):
                yield key, value

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        """The first value of ``name``, or ``default``; also the pipeline's ``HeaderLookup``."""
        key = name.lower()
        for k, v in self._pairs():
            if k == key:
                return v
        return default

    def __iter__(self) -> Iterator[str]:
        seen: set[str] = set()
        for k, _ in self._pairs():
            if k not in seen:
                seen.add(k)
                yield k

    def __len__(self) -> int:
        return len({k for k, _ in self._pairs()})
