"""Requests of Triton's model-repository extension, shared by HTTP and gRPC."""

from __future__ import annotations

from typing import Any

from modelport.dataplane.codec.jsonbody import decode_json
from modelport.errors import InvalidRequest, Unsupported


def load_config_parameter(parameters: Any) -> dict[str, Any] | None:
    """The ``config`` load parameter (a JSON string) as a mapping, or None."""
    if parameters is None:
        return None
    if not isinstance(parameters, dict):
        raise InvalidRequest("'parameters' must be a JSON object")
    for key in parameters:
        if key.startswith("file:"):
            raise Unsupported(f"parameter {key!r}: loading model files over the API is not served")
    raw = parameters.get("config")
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise InvalidRequest("parameter 'config' must be a string holding a JSON object")
    try:
        config = decode_json(raw)
    except InvalidRequest as exc:
        raise InvalidRequest(f"parameter 'config': {exc.message}") from None
    if not isinstance(config, dict):
        raise InvalidRequest("parameter 'config' must hold a JSON object")
    return config
