"""Reading a request body within the size limit, and undoing Content-Encoding.

The declared Content-Length is checked before a byte is read, and the
stream is cut off at the limit whatever the header claimed, so a lying
header or an endless body costs at most the limit. Compressed bodies are
inflated with the same limit on the output (no zip bombs).
"""

from __future__ import annotations

import gzip
import zlib

from starlette.requests import Request
from starlette.types import Receive

from modelport.errors import InvalidRequest, PayloadTooLarge, Unsupported


class ClientDisconnected(Exception):
    """Raised when the client goes away while its body is being read."""


async def read_body(request: Request, limit: int) -> bytes:
    """Read a Starlette request's body (see :func:`receive_body`)."""
    return await receive_body(
        request.receive,
        request.headers.get("content-length"),
        request.headers.get("content-encoding", ""),
        limit,
    )


async def receive_body(
    receive: Receive, declared: str | None, content_encoding: str, limit: int
) -> bytes:
    """Read an ASGI request body within ``limit`` bytes, inflating gzip/deflate."""
    check_declared(declared, limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected("the client closed the connection before sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return decode_content(body, content_encoding, limit)


def check_declared(declared: str | None, limit: int) -> int | None:
    """Refuse a Content-Length that is not a number or is over ``limit``, before reading.

    Returns the declared length, so a caller that checks it once can hand it on.
    """
    if declared is None:
        return None
    if not (declared.isascii() and declared.isdigit()):
        raise InvalidRequest(f"Content-Length {declared!r} is not a number")
    length = int(declared)
    if length > limit:
        raise PayloadTooLarge(
            f"request body of {declared} bytes is over the limit of {limit} bytes"
        )
    return length


def too_large(limit: int) -> PayloadTooLarge:
    """The refusal of a body that grew past ``limit`` whatever its header said."""
    return PayloadTooLarge(f"request body is over the limit of {limit} bytes")


def decode_content(body: bytes, content_encoding: str, limit: int) -> bytes:
    """The body with its Content-Encoding undone (gzip, deflate), within ``limit``."""
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "deflate"):
        return _inflate(body, encoding, limit)
    raise Unsupported(f"Content-Encoding {encoding!r} is not supported (use gzip or deflate)")


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    # wbits: 16+MAX_WBITS reads gzip framing; MAX_WBITS reads zlib (HTTP "deflate").
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        if encoding == "deflate":
            try:  # some clients send raw deflate without the zlib header
                raw = zlib.decompressobj(-zlib.MAX_WBITS)
                out = raw.decompress(body, limit + 1)
            except zlib.error:
                raise InvalidRequest(f"body is not valid {encoding} data: {exc}") from None
        else:
            raise InvalidRequest(f"body is not valid {encoding} data: {exc}") from None
    if len(out) > limit:
        raise PayloadTooLarge(f"decompressed request body is over the limit of {limit} bytes")
    if inflater.eof and inflater.unused_data:
        raise InvalidRequest(
            f"body has {len(inflater.unused_data)} bytes after the {encoding} data"
        )
    return out


def compress(body: bytes, accept_encoding: str) -> tuple[bytes, str | None]:
    """Compress a response body with what the client accepts (gzip preferred)."""
    accepted = {part.split(";")[0].strip().lower() for part in accept_encoding.split(",")}
    if "gzip" in accepted:
        return gzip.compress(body, compresslevel=1), "gzip"
    if "deflate" in accepted:
        return zlib.compress(body, 1), "deflate"
    return body, None
