"""The transport's two decisions for asynchronous inference: the Prefer header and the key."""

from __future__ import annotations

import pytest

from modelport.dataplane.transport.http.fastpath import wants_async
from modelport.dataplane.transport.http.routes_v2 import idempotency_key
from modelport.errors import InvalidRequest


@pytest.mark.parametrize(
    ("value", "wanted"),
    [
        (b"respond-async", True),
        (b"Respond-Async", True),
        (b"wait=5, respond-async", True),
        (b"respond-async; foo=bar", True),
        (b"return=minimal", False),
        (b"respond-asynchronously", False),
        (b"", False),
    ],
)
def test_prefer_respond_async(value: bytes, wanted: bool) -> None:
    assert wants_async(value) is wanted


def test_idempotency_key_checked() -> None:
    assert idempotency_key(None) is None
    assert idempotency_key(b"order-42") == "order-42"
    for bad in (b"", b"a b", b"x" * 129, "é".encode()):
        with pytest.raises(InvalidRequest, match="Idempotency-Key"):
            idempotency_key(bad)
