"""Batch jobs over files: a JSONL, CSV or parquet file under ``batch_dir`` run through
the pipeline (parquet when pyarrow is installed on the server).

``POST /api/v1/jobs/batch`` names a model, an input and an output, both
relative to the server's ``batch_dir`` (docs/jobs.md). The job runner runs
it like any job, at the model's lowest priority: a chunk of rows at a time,
with the readers, writers and row conversion ``modelport batch`` uses
(:mod:`modelport.batchfiles`), so a file gives the same output rows (in
input order, a failed row keeping its place) whichever side runs it.

Confinement. A name is relative, without ``..``, and the path it gives,
symbolic links resolved, must stay under ``batch_dir``; the check runs at
submission and again when the job starts, before a file is opened.

Resuming. After each chunk is written and flushed, the checkpoint (rows
done, the input's byte offset, the output's length, the counts and the first
failures) goes to the store, only while this worker holds the job. A job
that is run again (a restart, a lapsed lease) cuts its output back to the
checkpoint's length and reads on from its offset, so at most one chunk is
computed twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from modelport.batchfiles.chunks import prepare, stacked
from modelport.batchfiles.parquet import ParquetWriter
from modelport.batchfiles.reader import PARQUET_HINT, Chunk, Reader, file_format
from modelport.batchfiles.tensors import (
    Layout,
    TensorSpec,
    UsageError,
    encode_request,
    row_value,
    specs,
)
from modelport.batchfiles.writer import WRITERS, OutRow, Writer
from modelport.controlplane.jobs import JOB_PROTOCOL, LOWEST_PRIORITY, BatchOutcome
from modelport.controlplane.store.jobs import (
    KEPT_FAILURES,
    BatchState,
    JobStore,
    NewBatch,
    StoredJob,
)
from modelport.dataplane.admission.authorize import allows, denial
from modelport.dataplane.codec.json_v2 import decode_request, encode_json
from modelport.dataplane.pipeline import Pipeline
from modelport.errors import Conflict, InvalidRequest, ModelportError, internal_error
from modelport.types import Call, Identity, InferenceResponse, Origin, Role

log = logging.getLogger("modelport.jobs.batch")

#: Formats a batch job reads and writes (parquet only with pyarrow installed).
FORMATS = ("jsonl", "csv", "parquet")
NAME_MAX = 1024
CHUNK_ROWS_MAX = 10_000


class BatchFiles:
    """The files under ``batch_dir``, and only those."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, name: str, what: str) -> Path:
        """The real path ``name`` gives under the root; InvalidRequest (400) otherwise."""
        if not name or len(name) > NAME_MAX or "\x00" in name or "\\" in name:
            raise InvalidRequest(f"{what} {name[:80]!r} is not a file name")
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts:
            raise InvalidRequest(
                f"{what} {name!r} must be a path relative to the server's batch_dir, without '..'"
            )
        root = self.root.resolve()
        real = (root / relative).resolve()
        if real == root or not real.is_relative_to(root):
            raise InvalidRequest(f"{what} {name!r} leads outside the server's batch_dir")
        return real

    def kind(self, path: Path, name: str, what: str) -> str:
        try:
            kind = file_format(path, what)
        except UsageError as exc:
            if str(exc) == PARQUET_HINT:
                raise InvalidRequest(
                    f"{what} {name!r}: this server cannot read or write parquet "
                    "(pyarrow is not installed on it)"
                ) from None
            kind = ""
        if kind not in FORMATS:
            raise InvalidRequest(f"{what} {name!r}: the extension must be .jsonl, .csv or .parquet")
        return kind


def writer_for(kind: str) -> type[Writer]:
    """The output writer of a format :meth:`BatchFiles.kind` accepted."""
    return WRITERS.get(kind) or ParquetWriter


class BatchRunner:
    """Checks batch submissions and runs batch jobs through the pipeline."""

    def __init__(
        self,
        files: BatchFiles,
        pipeline: Pipeline,
        store: JobStore,
        max_elements: int,
        status_of: Callable[[ModelportError], int],
    ) -> None:
        self.files = files
        self.pipeline = pipeline
        self.store = store
        self.max_elements = max_elements
        self.status_of = status_of

    def check(
        self,
        identity: Identity | None,
        model: str,
        version: str | None,
        input: str,
        output: str,
        id_column: str | None,
        chunk_rows: int,
    ) -> NewBatch:
        """What a synchronous call would check before it computes, and the files."""
        if identity is not None and not allows(identity, Role.INVOKER, model, self._tenant_of):
            raise denial(Role.INVOKER, model)
        self.pipeline.admission.before_body(model, version, identity, None, "http")
        source = self.files.path(input, "input")
        target = self.files.path(output, "output")
        self.files.kind(source, input, "input")
        out_kind = self.files.kind(target, output, "output")
        if not source.is_file():
            raise InvalidRequest(f"input {input!r}: no such file under the server's batch_dir")
        if target == source:
            raise InvalidRequest("output must not be the input file")
        if target.exists() or writer_for(out_kind).data_path(target).exists():
            raise Conflict(f"output {output!r} exists: name another, or delete it first")
        if not target.parent.is_dir():
            raise InvalidRequest(f"output {output!r}: its directory does not exist")
        return NewBatch(input, output, id_column, chunk_rows)

    def _tenant_of(self, name: str) -> str | None:
        try:
            return self.pipeline.table.acquire(name, None).config.parameter("tenant")
        except ModelportError:
            return None

    async def execute(
        self, job: StoredJob, batch: BatchState, worker: str, identity: Identity | None
    ) -> BatchOutcome:
        """Run (or resume) the batch to its end; a failure of the input as a whole
        (a missing file, columns the model lacks) fails the job with 400."""
        try:
            state = await self._run(job, batch, worker, identity)
        except UsageError as exc:
            message = str(exc)
            return BatchOutcome(400, encode_json({"error": message}), message)
        except ModelportError as exc:
            return BatchOutcome(
                self.status_of(exc), encode_json({"error": exc.message}), exc.message
            )
        except OSError as exc:
            message = f"cannot read or write the batch's files: {exc.strerror or exc}"
            return BatchOutcome(500, encode_json({"error": message}), message)
        except Exception as exc:
            log.exception("batch job failed", extra={"job": job.id, "model": job.model})
            message = internal_error(exc)
            return BatchOutcome(500, encode_json({"error": message}), message)
        if state is None:  # no longer ours: the stored outcome stands
            return BatchOutcome(409, b"", "the job was cancelled or taken over")
        return BatchOutcome(200, encode_json(summary(state)))

    async def _run(
        self, job: StoredJob, state: BatchState, worker: str, identity: Identity | None
    ) -> BatchState | None:
        source = self.files.path(state.input, "input")
        target = self.files.path(state.output, "output")
        in_kind = self.files.kind(source, state.input, "input")
        out_kind = self.files.kind(target, state.output, "output")
        if not source.is_file():
            raise UsageError(f"input {state.input!r}: no such file under the server's batch_dir")
        writer_type = writer_for(out_kind)
        written = writer_type.data_path(target)  # parquet: the spool until the end
        if state.output_bytes and (
            not written.exists() or written.stat().st_size < state.output_bytes
        ):
            raise UsageError(f"output {state.output!r} is shorter than its checkpoint")
        model = self.pipeline.table.acquire(job.model, job.version)
        signature = model.signature
        inputs = specs([_meta(s) for s in signature.inputs])
        outputs = specs([_meta(s) for s in signature.outputs])
        chunk_rows = state.chunk_rows
        if signature.max_batch_size > 0:
            chunk_rows = min(chunk_rows, signature.max_batch_size)
        reader = Reader(source, in_kind, chunk_rows, state.id_column)
        await asyncio.to_thread(reader.open, state.rows, state.input_offset)
        layout = Layout.for_fields(inputs, reader.fields)
        writer = await asyncio.to_thread(
            writer_type, target, outputs, state.id_column, state.output_bytes
        )
        failures = list(state.failures)
        chunks = reader.chunks()
        try:
            while True:
                chunk = await asyncio.to_thread(next, chunks, None)
                if chunk is None:
                    break
                rows = await self._infer(job, chunk, layout, outputs, identity)
                await asyncio.to_thread(writer.write, rows)
                failed = [r for r in rows if r.error is not None]
                room = KEPT_FAILURES - len(failures)
                failures += [(r.row, r.error or "") for r in failed[: max(room, 0)]]
                state = dataclasses.replace(
                    state,
                    rows=chunk.rows_after,
                    input_offset=chunk.offset_after,
                    succeeded=state.succeeded + len(rows) - len(failed),
                    failed=state.failed + len(failed),
                    failures=tuple(failures),
                )
                if writer.ready():
                    position = await asyncio.to_thread(writer.position)
                    state = dataclasses.replace(state, output_bytes=position)
                    held = await asyncio.to_thread(self.store.checkpoint, job.id, worker, state)
                    if not held:
                        await asyncio.to_thread(writer.drop)
                        return None
        except BaseException:
            await asyncio.to_thread(writer.drop)
            raise
        await asyncio.to_thread(writer.close)
        position = target.stat().st_size
        state = dataclasses.replace(state, output_bytes=position)
        if not await asyncio.to_thread(self.store.checkpoint, job.id, worker, state):
            return None
        return state

    async def _infer(
        self,
        job: StoredJob,
        chunk: Chunk,
        layout: Layout,
        outputs: list[TensorSpec],
        identity: Identity | None,
    ) -> list[OutRow]:
        """One chunk's output rows: bad rows fail alone, a refused request fails its rows."""
        rows, good = prepare(chunk, layout)
        if not good:
            return rows
        arrays = stacked(good, layout)
        try:
            body, head = encode_request(arrays, layout.inputs)
            request = decode_request(body, head, job.model, job.version, self.max_elements, None)
            request.priority = LOWEST_PRIORITY
            call = Call(Origin.JOB, identity, request_id=f"{job.id}:{chunk.records[0].row}")
            response = await self.pipeline.infer(request, JOB_PROTOCOL, None, call)
            values = _outputs(response)
            for index, (out, _) in enumerate(good):
                out.values = {s.name: row_value(values[s.name], index) for s in outputs}
        except ModelportError as exc:
            for out, _ in good:
                out.error = f"row {out.row}: {exc.message}"
        return rows


def summary(state: BatchState) -> dict[str, Any]:
    """A batch's progress as the jobs API and a finished job's result show it."""
    return {
        "input": state.input,
        "output": state.output,
        "rows": state.rows,
        "succeeded": state.succeeded,
        "failed": state.failed,
        "failures": [{"row": row, "error": error} for row, error in state.failures],
    }


def _meta(spec: Any) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def _outputs(response: InferenceResponse) -> dict[str, np.ndarray[Any, Any]]:
    """The response's outputs by name; BYTES as str, as ``modelport batch`` writes them."""
    found: dict[str, np.ndarray[Any, Any]] = {}
    for tensor in response.outputs:
        array = np.asarray(tensor.data)
        if tensor.datatype == "BYTES":
            flat = [v.decode(errors="replace") if isinstance(v, bytes) else v for v in array.flat]
            array = np.array(flat, dtype=object).reshape(array.shape)
        found[tensor.name] = array
    return found
