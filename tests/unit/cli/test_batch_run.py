"""``modelport batch``'s chunk requests against a fake server: bad rows, refusals, retries."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import numpy as np

from modelport.cli.batch_io import Chunk, Record
from modelport.cli.batch_output import OutRow
from modelport.cli.batch_run import Target, infer_chunk
from modelport.cli.batch_tensors import HEADER_LENGTH, Layout, TensorSpec

INPUT = TensorSpec("input", "FP32", (-1, 2))
OUTPUT = TensorSpec("total", "FP32", (-1, 1))


def target() -> Target:
    return Target("http://fake", "m", "t0k", Layout.for_fields([INPUT], None), [OUTPUT])


def summing(request: httpx.Request) -> httpx.Response:
    """A server whose model sums each row, answering with a binary output."""
    head = int(request.headers[HEADER_LENGTH])
    header = json.loads(request.content[:head])
    rows = np.frombuffer(request.content[head:], dtype="<f4").reshape(header["inputs"][0]["shape"])
    raw = rows.sum(axis=1, keepdims=True).astype("<f4").tobytes()
    out = {"name": "total", "datatype": "FP32", "shape": [len(rows), 1]}
    body = json.dumps({"outputs": [{**out, "parameters": {"binary_data_size": len(raw)}}]})
    return httpx.Response(200, content=body.encode() + raw, headers={HEADER_LENGTH: str(len(body))})


def call(handler: Any, records: list[Record]) -> list[OutRow]:
    async def go() -> list[OutRow]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await infer_chunk(client, target(), Chunk(records, len(records), 0))

    return asyncio.run(go())


def test_bad_rows_are_left_out_of_the_request_and_the_rest_answered() -> None:
    sent: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer t0k"
        sent.append(
            json.loads(request.content[: int(request.headers[HEADER_LENGTH])])["inputs"][0][
                "shape"
            ][0]
        )
        return summing(request)

    rows = call(
        handler,
        [Record(1, fields=[1, 2]), Record(2, fields=["x", 1]), Record(3, fields={"input": [3, 4]})],
    )
    assert sent == [2]
    assert [(r.row, r.values, r.error is None) for r in rows] == [
        (1, {"total": 3.0}, True),
        (2, None, False),
        (3, {"total": 7.0}, True),
    ]
    assert rows[1].error is not None and rows[1].error.startswith("row 2")


def test_a_refused_chunk_is_retried_once_then_failed_with_the_servers_message() -> None:
    calls = []

    def refusing(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(400, json={"error": "batch size 2 exceeds max_batch_size 1"})

    rows = call(refusing, [Record(1, fields=[1, 2]), Record(2, fields=[3, 4])])
    assert len(calls) == 2
    assert [r.error for r in rows] == [
        "row 1: 400: batch size 2 exceeds max_batch_size 1",
        "row 2: 400: batch size 2 exceeds max_batch_size 1",
    ]


def test_a_retry_that_succeeds_fails_nothing() -> None:
    answers = iter([httpx.Response(503, json={"error": "busy"})])

    def flaky(request: httpx.Request) -> httpx.Response:
        return next(answers, None) or summing(request)

    rows = call(flaky, [Record(1, fields=[1, 2])])
    assert rows[0].values == {"total": 3.0} and rows[0].error is None
