"""The chunk pipeline of ``modelport batch``: a few requests in flight, results in order.

Up to ``concurrency`` chunks are sent at once; they are written strictly in
input order, so memory holds at most that many chunks whatever the file's
size. A chunk the server refuses (or that cannot reach it) is sent once
more, then its rows are failed with the server's message; the run goes on.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from modelport.batchfiles.chunks import prepare, stacked
from modelport.batchfiles.reader import Chunk
from modelport.batchfiles.tensors import (
    HEADER_LENGTH,
    Layout,
    TensorSpec,
    decode_response,
    encode_request,
    row_value,
)
from modelport.batchfiles.writer import OutRow, Progress, Writer

#: Seconds one inference request may take before it counts as refused.
REQUEST_TIMEOUT_S = 300.0
#: Further tries of a refused chunk.
RETRIES = 1


@dataclass
class Target:
    """Where and what to call."""

    url: str
    model: str
    token: str | None
    layout: Layout
    outputs: list[TensorSpec]

    @property
    def infer_url(self) -> str:
        return f"{self.url.rstrip('/')}/v2/models/{self.model}/infer"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def server_message(response: httpx.Response) -> str:
    """The error the server gave, or its status line."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if isinstance(payload, dict) and payload.get("error"):
        return f"{response.status_code}: {payload['error']}"
    return f"{response.status_code}: {response.text.strip()[:200] or response.reason_phrase}"


async def infer_chunk(client: httpx.AsyncClient, target: Target, chunk: Chunk) -> list[OutRow]:
    """One chunk's output rows; bad rows fail alone, a refused request fails its rows."""
    rows, good = prepare(chunk, target.layout)
    if not good:
        return rows
    arrays = stacked(good, target.layout)
    body, head = encode_request(arrays, target.layout.inputs)
    headers = {
        **target.headers(),
        "Content-Type": "application/octet-stream",
        HEADER_LENGTH: str(head),
    }
    error = ""
    for _ in range(1 + RETRIES):
        try:
            response = await client.post(target.infer_url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            error = f"request failed: {exc or type(exc).__name__}"
            continue
        if response.status_code >= 400:
            error = server_message(response)
            continue
        length = response.headers.get(HEADER_LENGTH)
        try:
            outputs = decode_response(response.content, int(length) if length else None)
        except (ValueError, KeyError) as exc:
            error = f"unreadable response: {exc}"
            break
        for index, (out, _) in enumerate(good):
            out.values = {s.name: row_value(outputs[s.name], index) for s in target.outputs}
        return rows
    for out, _ in good:
        out.error = f"row {out.row}: {error}"
    return rows


async def run_chunks(
    chunks: Iterator[Chunk],
    writer: Writer,
    progress: Progress,
    checkpoint: Path | None,
    target: Target,
    concurrency: int,
    advanced: Callable[[Chunk], None],
) -> None:
    """Send, write in order, checkpoint; ``advanced`` is told of each chunk written."""
    pending: deque[tuple[Chunk, asyncio.Task[list[OutRow]]]] = deque()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as client:

        def submit() -> None:
            chunk = next(chunks, None)
            if chunk is not None:
                pending.append((chunk, asyncio.create_task(infer_chunk(client, target, chunk))))

        for _ in range(concurrency):
            submit()
        try:
            while pending:
                chunk, task = pending[0]
                rows = await task
                pending.popleft()
                writer.write(rows)
                for out in rows:
                    if out.error is None:
                        progress.succeeded += 1
                    else:
                        progress.fail(out.row, out.error)
                progress.rows = chunk.rows_after
                progress.offset = chunk.offset_after
                if checkpoint is not None and writer.ready():
                    progress.output_bytes = writer.position()
                    progress.save(checkpoint)
                advanced(chunk)
                submit()
        finally:
            for _, task in pending:
                task.cancel()


def rate(rows: int, started: float) -> float:
    """Rows per second since ``started`` (a ``time.monotonic`` reading)."""
    return rows / max(time.monotonic() - started, 1e-9)
