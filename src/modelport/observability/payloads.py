"""Payload logging: sampled requests and answers, redacted, written off the event loop.

The request path pays for one random draw per request of a model that has
payload logging on, and nothing more unless the draw selects it. A selected
request is turned into a bounded record on the event loop (at most about
``max_bytes_per_record`` worth of elements is copied out of its arrays, so a
64 MiB tensor costs no more than a small one) and put on a bounded queue.
One writer thread redacts, encodes, optionally seals and appends; when the
queue is full the record is dropped and counted, never waited for.

Outcomes are counted in ``modelport_payload_records_total{model,result}``:
``written``, ``dropped`` (queue full or logger closed), ``failed`` (the file
or the key provider failed), ``residency`` (this node's region is not one
the model's data may be kept in) and ``refused`` (``seal: true`` without a
master key configured; warned about once per model).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from modelport.config.model import ModelConfig, PayloadLog
from modelport.observability.metrics import Metrics
from modelport.observability.payload_files import DayFiles, KeyWrapper, day_of, sweep
from modelport.observability.redact import REDACTED, Redactor, redact_text
from modelport.regions import region_allowed
from modelport.types import InferenceRequest, InferenceResponse, Tensor

log = logging.getLogger("modelport.payloads")

QUEUE_SIZE = 1024
#: Records the writer takes off the queue before one write per file.
_BATCH = 256
#: How often the retention sweep runs after the one at start.
SWEEP_INTERVAL_S = 3600.0


class LoggedModel(Protocol):
    """What the logger reads of a model version (ModelVersion is one)."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def config(self) -> ModelConfig: ...


def enabled_settings(config: ModelConfig) -> PayloadLog | None:
    """A model's payload settings when logging is on, else None (what the request path tests)."""
    settings = config.modelport.payload_log
    return settings if settings is not None and settings.enabled else None


@dataclass(frozen=True, slots=True)
class _Pending:
    model: str
    settings: PayloadLog
    timestamp: float
    record: dict[str, Any]


_CLOSE = object()


class PayloadLogger:
    """Samples, records and writes payloads for models whose config turns it on."""

    def __init__(
        self,
        directory: Path,
        metrics: Metrics,
        region: str | None = None,
        keys: KeyWrapper | None = None,
        *,
        queue_size: int = QUEUE_SIZE,
        draw: Callable[[], float] = random.random,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self._metrics = metrics
        self._region = region
        self._keys = keys
        self._draw = draw
        self._now = now
        self._queue: queue.Queue[_Pending | object] = queue.Queue(queue_size)
        self._files = DayFiles(directory)
        self._redactors: dict[tuple[str, ...], Redactor] = {}
        self._warned: set[str] = set()
        self._thread: threading.Thread | None = None
        self._closed = False

    # ------------------------------------------------------------ request path

    def offer(
        self,
        model: LoggedModel,
        settings: PayloadLog,
        request: InferenceRequest,
        response: InferenceResponse | None,
        protocol: str,
        error: str | None = None,
    ) -> None:
        """Maybe log one answered (``response``) or failed (``error``) request; never blocks."""
        if self._draw() >= settings.sample:
            return
        if settings.seal and self._keys is None:
            self._refuse(model.name)
            return
        if not region_allowed(self._region, model.config.modelport.residency):
            self._count(model.name, "residency")
            return
        if self._closed:
            self._count(model.name, "dropped")
            return
        timestamp = self._now()
        record = build_record(model, settings, request, response, protocol, error, timestamp)
        try:
            self._queue.put_nowait(_Pending(model.name, settings, timestamp, record))
        except queue.Full:
            self._count(model.name, "dropped")

    def review(self, models: list[Any]) -> None:
        """Say at start which models' payload logging cannot run here, and why."""
        for m in models:
            settings = enabled_settings(m.config)
            if settings is None:
                continue
            if settings.seal and self._keys is None:
                self._warn_unsealable(m.name)
            elif not region_allowed(self._region, m.config.modelport.residency):
                log.info(
                    "payload logging skipped on this node: its region is not in the model's "
                    "residency",
                    extra={"model": m.name, "region": self._region},
                )

    def _refuse(self, name: str) -> None:
        self._count(name, "refused")
        self._warn_unsealable(name)

    def _warn_unsealable(self, name: str) -> None:
        if name not in self._warned:
            self._warned.add(name)
            log.warning(
                "payload logging refused: seal is true but no master key is configured "
                "(set master_key_file, MODELPORT_MASTER_KEY or key_provider); the model serves "
                "on without payload logs",
                extra={"model": name},
            )

    def _count(self, model: str, result: str) -> None:
        self._metrics.payload_records.labels(model, result).inc()

    # ------------------------------------------------------------ writer side

    def start(self) -> None:
        """Start the writer thread; ``close`` stops it after writing what is queued."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="modelport-payloads", daemon=True
            )
            self._thread.start()

    def close(self) -> None:
        """Write what is queued, then stop the writer (blocking: call it off the event loop)."""
        self._closed = True
        if self._thread is None:
            return
        self._queue.put(_CLOSE)
        self._thread.join()
        self._thread = None

    def flush(self) -> int:
        """Write everything queued now, on the calling thread; returns how many were taken.

        For tests and for a logger run without its thread.
        """
        taken = self._take_nowait(None)
        self._write(taken)
        return len(taken)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _CLOSE:
                self._write(self._take_nowait(None))
                return
            batch = self._take_nowait(first)
            stop = _CLOSE in batch
            self._write([p for p in batch if p is not _CLOSE])
            if stop:
                self._write(self._take_nowait(None))
                return

    def _take_nowait(self, first: object | None) -> list[Any]:
        batch: list[Any] = [] if first is None else [first]
        while len(batch) < _BATCH:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write(self, batch: list[Any]) -> None:
        groups: dict[tuple[str, str], list[tuple[_Pending, bytes]]] = {}
        for pending in batch:
            if not isinstance(pending, _Pending):
                continue
            try:
                line = self._finish(pending)
            except Exception:
                log.exception("payload record could not be encoded", extra={"model": pending.model})
                self._count(pending.model, "failed")
                continue
            groups.setdefault((pending.model, day_of(pending.timestamp)), []).append(
                (pending, line)
            )
        for (model, day), items in groups.items():
            keys = self._keys if items[0][0].settings.seal else None
            try:
                self._files.append(model, day, [line for _, line in items], keys)
            except Exception as exc:
                # Neither the path nor the provider's message is echoed beyond its kind:
                # a provider's error text could quote credentials.
                reason = exc.strerror if isinstance(exc, OSError) else type(exc).__name__
                log.warning(
                    "payload records could not be written",
                    extra={"model": model, "records": len(items), "error": reason},
                )
                self._metrics.payload_records.labels(model, "failed").inc(len(items))
                continue
            self._metrics.payload_records.labels(model, "written").inc(len(items))

    def _finish(self, pending: _Pending) -> bytes:
        fields = tuple(pending.settings.redact_fields)
        redactor = self._redactors.get(fields)
        if redactor is None:
            redactor = self._redactors[fields] = Redactor(fields)
        redact_record(pending.record, redactor)
        return encode_record(pending.record, pending.settings.max_bytes_per_record)

    # ------------------------------------------------------------ retention

    def sweep(self, retention: Mapping[str, int]) -> int:
        """Delete day files past their model's retention; returns how many went."""
        deleted = sweep(self.directory, retention, self._now())
        if deleted:
            log.info("payload logs past retention deleted", extra={"files": len(deleted)})
        return len(deleted)

    async def run_retention(
        self,
        retention: Callable[[], Mapping[str, int]],
        stop: asyncio.Event,
        interval_s: float = SWEEP_INTERVAL_S,
    ) -> None:
        """Sweep at once and then every ``interval_s`` until ``stop`` is set."""
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.sweep, retention())
            except Exception:
                log.exception("payload retention sweep failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)


def retention_of(models: list[Any]) -> dict[str, int]:
    """Days to keep per model name, the longest over its versions with logging on."""
    out: dict[str, int] = {}
    for m in models:
        settings = enabled_settings(m.config)
        if settings is not None:
            out[m.name] = max(out.get(m.name, 0), settings.retention_days)
    return out


# ---------------------------------------------------------------- records


def build_record(
    model: LoggedModel,
    settings: PayloadLog,
    request: InferenceRequest,
    response: InferenceResponse | None,
    protocol: str,
    error: str | None,
    timestamp: float,
) -> dict[str, Any]:
    """The record before redaction: plain Python values, each tensor cut to a budget."""
    limit = settings.max_bytes_per_record // 2
    record: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp))
        + f".{int(timestamp % 1 * 1000):03d}Z",
        "model": model.name,
        "version": model.version,
        "id": request.id,
        "protocol": protocol,
        "parameters": dict(request.parameters),
        "inputs": [tensor_json(t, limit) for t in request.inputs],
    }
    if settings.include_outputs and response is not None:
        record["outputs"] = [tensor_json(t, limit) for t in response.outputs]
    if error is not None:
        record["error"] = error
    return record


def tensor_json(tensor: Tensor, limit: int) -> dict[str, Any]:
    """A tensor as JSON: at most ``limit`` elements, then ``"truncated": true``.

    BYTES elements become text when they are UTF-8 (each cut to ``limit``
    characters), else ``{"base64": ...}``; non-finite floats become strings
    so every line stays strict JSON.
    """
    flat = np.asarray(tensor.data).reshape(-1)
    cut = flat[:limit]
    data: list[Any]
    if tensor.datatype == "BYTES":
        data = [_text(v, limit) for v in cut.tolist()]
    else:
        data = cut.tolist()
        if cut.dtype.kind == "f" and not bool(np.isfinite(cut).all()):
            data = [v if math.isfinite(v) else str(v) for v in data]
    out: dict[str, Any] = {
        "name": tensor.name,
        "datatype": tensor.datatype,
        "shape": list(tensor.shape),
        "data": data,
    }
    if flat.size > limit:
        out["truncated"] = True
    return out


def _text(value: Any, limit: int) -> Any:
    if isinstance(value, str):
        return value[:limit]
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value[: limit * 4])
        try:
            return raw.decode("utf-8")[:limit]
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(raw[:limit]).decode("ascii")}
    return str(value)[:limit]


def redact_record(record: dict[str, Any], redactor: Redactor) -> None:
    """Withhold named fields and scan every string, in place, before anything is written."""
    if isinstance(record.get("id"), str):
        record["id"] = redact_text(record["id"])
    record["parameters"] = redactor.value(record["parameters"])
    if isinstance(record.get("error"), str):
        record["error"] = redact_text(record["error"])
    for key in ("inputs", "outputs"):
        for tensor in record.get(key, ()):
            if redactor.named(tensor["name"]):
                tensor["data"] = REDACTED
                tensor.pop("truncated", None)
            elif tensor["datatype"] == "BYTES":
                tensor["data"] = redactor.value(tensor["data"])


def encode_record(record: dict[str, Any], max_bytes: int) -> bytes:
    """One JSON line of at most ``max_bytes``, halving tensor data until it fits.

    ``ensure_ascii`` escapes every control and non-ASCII character, so no
    value can break the line. A record whose fixed fields alone are too long
    keeps only what identifies it.
    """
    line = _dumps(record)
    while len(line) > max_bytes:
        shortened = False
        for key in ("inputs", "outputs"):
            for tensor in record.get(key, ()):
                data = tensor["data"]
                if isinstance(data, list) and data:
                    tensor["data"] = data[: len(data) // 2]
                    tensor["truncated"] = True
                    shortened = True
        if not shortened:
            kept = {k: record[k] for k in ("time", "model", "version", "protocol")}
            kept["truncated"] = "record exceeded max_bytes_per_record"
            return _dumps(kept)
        line = _dumps(record)
    return line


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"), default=str).encode()
