"""Decoding JSON bodies with one error story for every route.

msgspec reports bad JSON as DecodeError, but invalid UTF-8 as
UnicodeDecodeError and absurd nesting as RecursionError; all three are the
caller's mistake and become an InvalidRequest that says which.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from modelport.errors import InvalidRequest

T = TypeVar("T")

_any_decoder = msgspec.json.Decoder()


def decode_json(
    body: bytes | memoryview | str, decoder: msgspec.json.Decoder[T] | None = None
) -> T | Any:
    """Decode with ``decoder`` (or to plain Python values); raise InvalidRequest."""
    try:
        return (decoder or _any_decoder).decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"request JSON: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"malformed request JSON: {exc}") from None
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            f"request JSON is not valid UTF-8 (byte {exc.start}: {exc.reason})"
        ) from None
    except RecursionError:
        raise InvalidRequest("request JSON nests too deeply") from None
