"""The instance process's side: what runs inside each spawned worker.

Kept apart from ``process.py`` (the server's side) because the spawn start
method imports the target by its qualified name in a fresh interpreter:
``worker_main`` must stay a module-level function here, and this module
imports only what a worker needs (the backend registry, ``shm.py`` and
``messages.py``), never the server's handles, queues or restart threads.

A worker loads its backend once, answers ``Batch`` messages until the server
sends ``None`` or its pipe reads EOF (the server is gone), and unloads on the
way out. The backend runs on read-only views of the input segment. Log
records go up the pipe; the worker has no handlers of its own.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

from modelport.config.model import ModelConfig
from modelport.dataplane.runtime import runtime_loader
from modelport.dataplane.runtime.base import Runtime
from modelport.dataplane.runtime.messages import (
    Batch,
    Failure,
    Outputs,
    OutputSegment,
    Ready,
    Record,
    Room,
)
from modelport.dataplane.runtime.shm import Attachment, place, read, write
from modelport.errors import ModelportError, first_line

# The server side's name, so the worker's own records read as the process runtime's in the log.
log = logging.getLogger("modelport.runtime.process")

_RECORD_FIELDS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class _Sender:
    """``conn.send`` under a lock: the model's own threads may log while a batch answers."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def __call__(self, message: object) -> None:
        with self._lock:
            self._conn.send(message)


class _Forward(logging.Handler):
    """Sends each record to the server, traceback formatted here (frames do not pickle)."""

    def __init__(self, send: _Sender) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tb = record.exc_text
            if record.exc_info:
                tb = logging.Formatter().formatException(record.exc_info)
            extra = {
                k: v if isinstance(v, str | int | float | bool | None) else repr(v)
                for k, v in record.__dict__.items()
                if k not in _RECORD_FIELDS and not k.startswith("_")
            }
            self._send(Record(record.name, record.levelno, record.getMessage(), tb, extra))
        except Exception:
            self.handleError(record)


def worker_main(
    conn: Connection, backend: str, version_dir: Path, config: ModelConfig, log_level: int
) -> None:
    """A worker's whole life: load, answer batches until told to stop or the server goes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's; it stops us
    send = _Sender(conn)
    root = logging.getLogger()
    root.handlers[:] = [_Forward(send)]
    root.setLevel(log_level)
    try:
        runtime = runtime_loader(backend)(version_dir, config, 1)
    except ModelportError as exc:
        send(Failure(type(exc).__name__, exc.message, True))
        return
    except Exception as exc:
        log.error("loading the model in an instance process failed", exc_info=True)
        send(Failure(type(exc).__name__, first_line(exc, limit=300, empty=""), False))
        return
    send(Ready(runtime.native, os.getpid()))
    inputs, outputs = Attachment(), Attachment()
    try:
        while True:
            try:
                message = conn.recv()
            except EOFError:
                return  # the server is gone
            if not isinstance(message, Batch):
                return
            send(_run(runtime, message, inputs, outputs, conn, send))
    finally:
        inputs.close()
        outputs.close()
        try:
            runtime.unload()
        except Exception:
            log.error("runtime.unload raised in an instance process", exc_info=True)


def _run(
    runtime: Runtime,
    batch: Batch,
    inputs: Attachment,
    outputs: Attachment,
    conn: Connection,
    send: Callable[[object], None],
) -> Outputs | Failure:
    feed = read(inputs.buf(batch.input_segment), batch.inputs, copy=False)
    try:
        result = runtime.predict(feed, batch.outputs)
    except ModelportError as exc:
        return Failure(type(exc).__name__, exc.message, True)
    except Exception as exc:
        kind = "TypeError" if isinstance(exc, TypeError) else "Exception"
        kind = "ValueError" if isinstance(exc, ValueError) else kind
        return Failure(kind, str(exc), False)
    finally:
        del feed
    try:
        placements, nbytes = place(result)
        name, size = batch.output_segment, batch.output_size
        if nbytes > size:
            send(Room(nbytes))
            grown: OutputSegment = conn.recv()
            name, size = grown.name, grown.size
            if size < nbytes:
                return Failure("Unavailable", f"no room for {nbytes} bytes of outputs", True)
        write(outputs.buf(name), result, placements)
    except (EOFError, OSError):
        raise
    except Exception as exc:
        log.error("outputs could not be passed back", exc_info=True)
        return Failure(
            "Exception",
            f"outputs could not be passed back: {first_line(exc, limit=300, empty='')}",
            False,
        )
    return Outputs(placements)
