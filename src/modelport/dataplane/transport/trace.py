"""W3C trace context (``traceparent``, ``tracestate``) read from a call's headers or metadata.

Both transports hand it to the Call, so tracing (an observer) and the steps
of a composite continue the caller's trace rather than start one. What the
caller sent is kept only when ``traceparent`` is well formed, as the W3C
Trace Context recommendation asks of a receiver; a malformed one is dropped
with its ``tracestate``, and the request is served all the same.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from types import MappingProxyType

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
#: Longest ``tracestate`` kept: 32 list members of up to 256 characters, plus commas.
MAX_TRACESTATE = 32 * 257

#: version "00" (or a later one) - 32 hex trace id, not all zero - 16 hex parent id - 2 hex flags.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
#: What a call carrying no trace context holds; transports may hand it over without
#: asking :func:`trace_context` when the ``traceparent`` header is absent.
NO_TRACE: Mapping[str, str] = MappingProxyType({})


def trace_context(lookup: Callable[[str], str | None]) -> Mapping[str, str]:
    """The call's trace context, or an empty mapping when it carries none worth keeping."""
    parent = lookup(TRACEPARENT)
    if parent is None:
        return NO_TRACE
    parent = parent.strip()
    match = _TRACEPARENT.fullmatch(parent)
    if match is None:
        return NO_TRACE
    version, trace_id, parent_id, _flags, rest = match.groups()
    if (
        version == "ff"
        or (version == "00" and rest is not None)
        or trace_id == "0" * 32
        or parent_id == "0" * 16
    ):
        return NO_TRACE
    state = lookup(TRACESTATE)
    if state is None or len(state) > MAX_TRACESTATE:
        return MappingProxyType({TRACEPARENT: parent})
    return MappingProxyType({TRACEPARENT: parent, TRACESTATE: state.strip()})
