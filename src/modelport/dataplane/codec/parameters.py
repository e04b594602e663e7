"""Request parameters every transport interprets the same way.

Triton defines ``priority`` and ``timeout`` (microseconds) on the request;
they are kept on the InferenceRequest for the scheduler. Sequence batching
(``sequence_id``, ``sequence_start``, ``sequence_end``) is refused clearly
rather than silently treated as stateless.
"""

from __future__ import annotations

from typing import Any

from modelport.errors import InvalidRequest, Unsupported
from modelport.types import InferenceRequest

_SEQUENCE = ("sequence_id", "sequence_start", "sequence_end")


def apply_request_parameters(request: InferenceRequest) -> None:
    """Read Triton's request parameters into the request's typed fields."""
    params = request.parameters
    if not params:
        return
    for key in _SEQUENCE:
        value = params.get(key)
        if value not in (None, 0, False, ""):
            raise Unsupported(
                f"parameter {key!r}: sequence batching is not served by modelport; "
                "send stateless requests"
            )
    if "priority" in params:
        request.priority = _non_negative_int(params["priority"], "priority")
    if "timeout" in params:
        request.timeout_us = _non_negative_int(params["timeout"], "timeout")


def _non_negative_int(value: Any, name: str) -> int:
    if type(value) is not int or value < 0:
        raise InvalidRequest(f"parameter {name!r} must be a non-negative integer, got {value!r}")
    return value
