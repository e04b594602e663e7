"""Request parameters every transport interprets the same way.

Triton defines ``priority`` and ``timeout`` (microseconds) on the request;
they are kept on the InferenceRequest for the scheduler. Sequence batching's
``sequence_id`` (an unsigned integer or a string), ``sequence_start`` and
``sequence_end`` (booleans) are checked here, once, for both transports, and
left in the parameters normalized: a request that names no sequence (id 0
or "", no flag set, as some clients send) carries none of the three keys, so
a servable tells a sequence request by ``SEQUENCE_ID in parameters`` alone.
Whether the model takes sequences is the servable's to say.
"""

from __future__ import annotations

from typing import Any

from modelport.errors import InvalidRequest
from modelport.types import InferenceRequest

SEQUENCE_ID = "sequence_id"
SEQUENCE_START = "sequence_start"
SEQUENCE_END = "sequence_end"

#: Largest sequence id: Triton's correlation ids are uint64.
_MAX_ID = (1 << 64) - 1


def apply_request_parameters(request: InferenceRequest) -> None:
    """Read Triton's request parameters into the request's typed fields."""
    params = request.parameters
    if not params:
        return
    if SEQUENCE_ID in params or SEQUENCE_START in params or SEQUENCE_END in params:
        _check_sequence(params)
    if "priority" in params:
        request.priority = _non_negative_int(params["priority"], "priority")
    if "timeout" in params:
        request.timeout_us = _non_negative_int(params["timeout"], "timeout")


def _check_sequence(params: dict[str, Any]) -> None:
    """Validate and normalize the sequence parameters in place."""
    sid = params.get(SEQUENCE_ID)
    if sid is not None and not ((type(sid) is int and 0 <= sid <= _MAX_ID) or isinstance(sid, str)):
        raise InvalidRequest(
            f"parameter {SEQUENCE_ID!r} must be an unsigned 64-bit integer or a string, got {sid!r}"
        )
    flags = []
    for key in (SEQUENCE_START, SEQUENCE_END):
        value = params.get(key)
        if value is None:
            params.pop(key, None)
            continue
        if type(value) is not bool:
            raise InvalidRequest(f"parameter {key!r} must be a boolean, got {value!r}")
        if value:
            flags.append(key)
    if sid in (None, 0, ""):
        if flags:
            raise InvalidRequest(
                f"parameter {flags[0]!r} needs a non-zero or non-empty {SEQUENCE_ID!r}: "
                "it names which sequence starts or ends"
            )
        for key in (SEQUENCE_ID, SEQUENCE_START, SEQUENCE_END):
            params.pop(key, None)


def sequence_of(params: dict[str, Any]) -> tuple[int | str, bool, bool] | None:
    """The request's sequence id, start and end flags, or None when it names no sequence.

    Reads what ``apply_request_parameters`` normalized; a request built
    without a codec (a library caller) is checked here the same way.
    """
    if SEQUENCE_ID not in params:
        if SEQUENCE_START in params or SEQUENCE_END in params:
            _check_sequence(params)
        return None
    _check_sequence(params)
    sid = params.get(SEQUENCE_ID)
    if sid is None:
        return None
    return sid, bool(params.get(SEQUENCE_START)), bool(params.get(SEQUENCE_END))


def _non_negative_int(value: Any, name: str) -> int:
    if type(value) is not int or value < 0:
        raise InvalidRequest(f"parameter {name!r} must be a non-negative integer, got {value!r}")
    return value
