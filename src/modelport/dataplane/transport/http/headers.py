"""A request's headers as the Call's read-only view, and the REST deadline header.

The infer route already holds the headers as a ``dict`` of ASGI byte pairs;
:class:`HeaderView` reads that dict as ``str`` names and values without
copying it, decoding only what is asked for, so a Call costs no per-header
work. Header names are case-insensitive: a lookup lowers the name it gets.

The deadline header, ``modelport-timeout-ms``, is how a REST caller says
how long it will wait: whole milliseconds from the moment the server takes
the request, after which the request is refused with 504 if it is still
queued (gRPC carries the same thing in its own ``grpc-timeout``). Without it
the request has no deadline of its own; the request's ``timeout`` parameter,
the model's queue policy and the server's ``default_timeout`` still apply in
the scheduler, which keeps the earliest.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from modelport.errors import InvalidRequest

#: The REST request header carrying the caller's timeout, in whole milliseconds.
TIMEOUT_HEADER = b"modelport-timeout-ms"


#: Wire keys of the names looked up so far. The names come from code and
#: configuration (``X-Data-Residency``, ``traceparent``, a sticky-routing
#: header), a handful per server, so each is lowered and encoded once.
_KEYS: dict[str, bytes] = {}
_KEYS_KEPT = 256


def _key(name: str) -> bytes:
    key = name.lower().encode("latin-1")
    if len(_KEYS) < _KEYS_KEPT:
        _KEYS[name] = key
    return key


class HeaderView(Mapping[str, str]):
    """A read-only ``str`` view over a request's ASGI headers (``dict[bytes, bytes]``).

    The dict is the route's own; the view keeps a reference and never
    changes it. Values are decoded as Latin-1, as HTTP/1.1 carries them.
    """

    __slots__ = ("_raw",)

    def __init__(self, raw: Mapping[bytes, bytes]) -> None:
        self._raw = raw

    def __getitem__(self, name: str) -> str:
        return self._raw[name.lower().encode("latin-1")].decode("latin-1")

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        """The header's value, or ``default``; also the pipeline's ``HeaderLookup``."""
        key = _KEYS.get(name)
        if key is None:
            key = _key(name)
        value = self._raw.get(key)
        return default if value is None else value.decode("latin-1")

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower().encode("latin-1") in self._raw

    def __iter__(self) -> Iterator[str]:
        return (name.decode("latin-1") for name in self._raw)

    def __len__(self) -> int:
        return len(self._raw)


def deadline_ns(raw: bytes | str | None, now_ns: int) -> int | None:
    """The monotonic deadline ``modelport-timeout-ms`` sets at ``now_ns``, or None without one.

    InvalidRequest (400) for anything but a whole number of milliseconds:
    a deadline the server cannot read must not silently become none.
    """
    if raw is None:
        return None
    text = raw.strip()
    if not text.isdigit():
        shown = raw.decode("latin-1") if isinstance(raw, bytes) else raw
        raise InvalidRequest(
            f"{TIMEOUT_HEADER.decode()} {shown!r} is not a whole number of milliseconds"
        )
    return now_ns + int(text) * 1_000_000
