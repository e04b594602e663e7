"""A call's gRPC metadata as the Call's read-only view, read only when asked.

``ServicerContext.invocation_metadata()`` builds its tuple afresh on every
call, so the view keeps the context and reads it on the first lookup, into
a dict the later lookups share: a request whose stages look nothing up pays
nothing. Keys are lower case on the wire; a lookup lowers the name it gets.
Binary (``-bin``) entries hold bytes and are left out.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import grpc


class MetadataView(Mapping[str, str]):
    """A read-only ``str`` view over one call's invocation metadata.

    A repeated key answers its first value, as a lookup by name did before.
    """

    __slots__ = ("_context", "_values")

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context
        self._values: dict[str, str] | None = None

    def _read(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for key, value in self._context.invocation_metadata() or ():
            if isinstance(value, str) and key not in values:
                values[key] = value
        self._values = values
        return values

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        """The first value of ``name``, or ``default``; also the pipeline's ``HeaderLookup``."""
        values = self._values
        if values is None:
            values = self._read()
        return values.get(name.lower(), default)

    def __iter__(self) -> Iterator[str]:
        values = self._values
        return iter(values if values is not None else self._read())

    def __len__(self) -> int:
        values = self._values
        return len(values if values is not None else self._read())
