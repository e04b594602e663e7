"""Instances as worker processes, for models that hold the GIL.

A ``python`` model doing per-row work, or a scikit-learn pipeline with
Python-level steps, keeps the GIL while it computes: two instance threads
then take turns and serve no more than one. With ``modelport:
{instance_process: true}`` each instance is a worker process of its own that
loads the same backend by name, and ``ProcessRuntime`` stands in for them
in the server behind the ordinary Runtime interface.

One batch, server side: take a free worker (the scheduler never runs more
batches than there are workers, so this waits only while one restarts),
copy the inputs into that worker's input segment, send their placements,
then wait on the pipe *and* the process sentinel. The worker runs the
backend on read-only views, writes the outputs into its output segment
(asking for a larger one first when they do not fit) and answers with their
placements; the server copies them out. ``shm.py`` has the layout; no
tensor data is pickled except ``BYTES`` tensors.

Failure modes:

- the worker dies (killed, segfault, ``os._exit``): the batch fails with
  Unavailable (503 / UNAVAILABLE) as soon as the sentinel fires, and the
  worker is restarted on a background thread, rejoining the free list when
  ready (a failed restart is retried by the next batch that takes it);
- a batch runs past ``instance_timeout_s``: the worker is killed, same story;
- the model raises: the worker answers with the error's kind and message
  and the server raises what the in-process runtime would (a python model's
  exception is InferenceFailed naming only its type; the traceback is logged);
- the server dies: workers read EOF from their pipe and exit.

Workers are spawned, never forked: forking a process that runs threads (the
event loop, instance threads, gRPC's) can hand the child a lock that some
other thread held. Their log records come back through the pipe and are
emitted by the server's loggers with the worker's pid, so they land in the
server log. Workers are daemonic: a model cannot start ``multiprocessing``
children of its own there.

This module is the server's side: the worker handles, the free list and the
restarts. ``worker.py`` is what runs inside each worker, and ``messages.py``
what the two send each other over the pipe.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import NoReturn

from modelport.config.model import ModelConfig, Parameter
from modelport.dataplane.runtime import BACKENDS
from modelport.dataplane.runtime.messages import (
    Batch,
    Failure,
    Outputs,
    OutputSegment,
    Ready,
    Record,
    Room,
)
from modelport.dataplane.runtime.shm import Segment, place, read, write
from modelport.dataplane.runtime.worker import worker_main
from modelport.errors import (
    DeadlineExceeded,
    InferenceFailed,
    InvalidRequest,
    ModelLoadError,
    ModelNotReady,
    ModelportError,
    NotFound,
    PayloadTooLarge,
    Unavailable,
    Unsupported,
)
from modelport.types import Array, ModelSignature

log = logging.getLogger("modelport.runtime.process")

#: Starting size of each segment; larger batches replace it (see ``Segment.reserve``).
SEGMENT_BYTES = 1 << 20

#: How long a stopping worker gets for the model's own unload before it is killed.
STOP_GRACE_S = 10.0

#: The parameter that sizes each backend's thread pool (see threads.py and sklearn.py).
_THREAD_PARAMETERS = {
    "onnxruntime": "intra_op_thread_count",
    "pytorch": "intra_op_thread_count",
    "xgboost": "intra_op_thread_count",
    "lightgbm": "intra_op_thread_count",
    "sklearn": "n_jobs",
    "openvino": "INFERENCE_NUM_THREADS",
}

#: Errors a worker may report that the server raises as themselves.
_ERRORS: dict[str, type[ModelportError]] = {
    cls.__name__: cls
    for cls in (
        InvalidRequest,
        PayloadTooLarge,
        Unsupported,
        NotFound,
        ModelNotReady,
        Unavailable,
        DeadlineExceeded,
        InferenceFailed,
        ModelLoadError,
    )
}


# ------------------------------------------------------------------ server side


class _Lost(Exception):
    """The worker is gone (or was stopped) with a batch in flight."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _raise(failure: Failure) -> NoReturn:
    if failure.modelport:
        raise _ERRORS.get(failure.kind, InferenceFailed)(failure.message)
    # Rebuilt as the builtin the scheduler maps (ValueError/TypeError → 400, others → 500).
    builtin = {"TypeError": TypeError, "ValueError": ValueError}.get(failure.kind, RuntimeError)
    raise builtin(failure.message)


@dataclass(frozen=True, slots=True)
class _Spec:
    backend: str
    version_dir: Path
    config: ModelConfig
    label: str
    segment_bytes: int


class _Worker:
    """One worker process with its pipe and its two segments, as the server holds them."""

    def __init__(self, spec: _Spec, index: int) -> None:
        self._spec = spec
        self._index = index
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self._inputs = Segment(spec.segment_bytes)
        self._outputs = Segment(spec.segment_bytes)
        self.pid: int | None = None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def segment_names(self) -> list[str]:
        return [n for n in (self._inputs.name, self._outputs.name) if n is not None]

    def launch(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        conn, child = ctx.Pipe()
        level = logging.getLogger().getEffectiveLevel()
        s = self._spec
        process = ctx.Process(
            target=worker_main,
            args=(child, s.backend, s.version_dir, s.config, level),
            name=f"modelport-{s.label}-{self._index}",
            daemon=True,
        )
        process.start()
        child.close()  # so the worker's death reads as EOF here
        self._process, self._conn = process, conn

    def await_ready(self) -> ModelSignature:
        """Wait for the worker to load; raises ModelLoadError with its reason."""
        try:
            message = self._receive(None)
        except _Lost as exc:
            self.discard()
            raise ModelLoadError(
                f"model {self._spec.label}: instance process {exc.reason}"
            ) from None
        if isinstance(message, Ready):
            self.pid = message.pid
            log.info(
                "instance process ready",
                extra={"model": self._spec.label, "instance": self._index, "pid": message.pid},
            )
            return message.native
        self.discard()
        if isinstance(message, Failure):
            if message.modelport:
                raise ModelLoadError(message.message)
            raise ModelLoadError(
                f"model {self._spec.label}: instance process failed to load it: "
                f"{message.kind}: {message.message}"
            )
        raise ModelLoadError(f"model {self._spec.label}: instance process answered {message!r}")

    def start(self) -> ModelSignature:
        self.launch()
        return self.await_ready()

    def predict(
        self, inputs: Mapping[str, Array], outputs: Sequence[str], timeout_s: float | None
    ) -> dict[str, Array]:
        placements, nbytes = place(inputs)
        self._inputs.reserve(nbytes)
        write(self._inputs.buf, inputs, placements)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._send(
            Batch(
                placements,
                self._inputs.name,
                self._outputs.name,
                self._outputs.size,
                tuple(outputs),
            )
        )
        late = f"ran past instance_timeout_s ({timeout_s} s) and was stopped"
        no_room: Unavailable | None = None
        while True:
            message = self._receive(deadline, late)
            if isinstance(message, Outputs):
                return read(self._outputs.buf, message.placements, copy=True)
            if isinstance(message, Failure):
                if no_room is not None:
                    raise no_room
                _raise(message)
            if isinstance(message, Room):
                try:
                    self._outputs.reserve(message.nbytes)
                except Unavailable as exc:
                    no_room = exc  # the worker, told so, answers with a failure
                self._send(OutputSegment(self._outputs.name, self._outputs.size))
                continue
            self.discard()
            raise _Lost(f"answered {type(message).__name__}")

    def _send(self, message: object) -> None:
        assert self._conn is not None
        try:
            self._conn.send(message)
        except OSError:
            raise _Lost(self._death()) from None

    def _receive(self, deadline: float | None, late: str = "was stopped") -> object:
        """The worker's next message other than a log record; _Lost when it dies first.

        Past ``deadline`` the worker is killed and ``late`` is the reason given.
        """
        assert self._conn is not None and self._process is not None
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = wait([self._conn, self._process.sentinel], timeout)
            if self._conn in ready:  # read what a dying worker managed to send
                try:
                    message = self._conn.recv()
                except (EOFError, OSError):
                    raise _Lost(self._death()) from None
                if isinstance(message, Record):
                    self._emit(message)
                    continue
                return message
            if ready:
                raise _Lost(self._death())
            self.discard()
            raise _Lost(late)

    def _death(self) -> str:
        """Reap the worker and say how it ended."""
        process = self._process
        code = None
        if process is not None:
            process.join(1.0)
            code = process.exitcode
        self.discard()
        if code is None:
            return "stopped answering"
        if code < 0:
            try:
                return f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"was killed by signal {-code}"
        return f"exited with code {code}"

    def _emit(self, r: Record) -> None:
        logger = logging.getLogger(r.logger)
        if not logger.isEnabledFor(r.level):
            return
        pid = self._process.pid if self._process is not None else None
        extra = {**r.extra, "worker_pid": pid}
        if r.traceback:
            extra["traceback"] = r.traceback
        record = logger.makeRecord(
            r.logger, r.level, "(worker)", 0, r.message, (), None, None, extra
        )
        record.exc_text = r.traceback  # plain formatters append it; the JSON one shows "traceback"
        logger.handle(record)

    def stop(self) -> None:
        """Ask the worker to unload and exit; kill it when it takes too long."""
        if self._conn is not None and self._process is not None and self._process.is_alive():
            try:
                self._conn.send(None)
                deadline = time.monotonic() + STOP_GRACE_S
                while time.monotonic() < deadline:
                    self._receive(deadline)  # log records only; the worker sends nothing else now
            except (_Lost, OSError):
                pass
        self.discard()

    def discard(self) -> None:
        """Kill the worker if it still runs and release everything it held."""
        process, conn = self._process, self._conn
        self._process, self._conn, self.pid = None, None, None
        if process is not None:
            if process.is_alive():
                process.kill()
            process.join()
            process.close()
        if conn is not None:
            conn.close()
        self._inputs.release()
        self._outputs.release()


# ------------------------------------------------------------------ the runtime


class ProcessRuntime:
    """The Runtime of a model whose instances are worker processes."""

    #: Each call waits for another process: it would block the loop, and pinning the
    #: waiting thread saves nothing.
    inline_safe = False
    pin_safe = False

    def __init__(
        self, workers: list[_Worker], native: ModelSignature, label: str, timeout_s: float | None
    ) -> None:
        self._workers = workers
        self._free: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        for w in workers:
            self._free.put(w)
        self._native = native
        self._label = label
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._restarting: set[threading.Thread] = set()
        self._closed = False

    @property
    def native(self) -> ModelSignature:
        return self._native

    @property
    def pids(self) -> list[int]:
        """The pids of the workers running now (one per instance unless one restarts)."""
        return [w.pid for w in self._workers if w.pid is not None]

    def segment_names(self) -> list[str]:
        """The shared-memory segments held now (names under /dev/shm on Linux)."""
        return [n for w in self._workers for n in w.segment_names()]

    def predict(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        worker = self._free.get()
        handed_on = False
        pid = None
        try:
            if not worker.alive:
                self._revive(worker)
            pid = worker.pid
            return worker.predict(inputs, outputs, self._timeout_s)
        except _Lost as exc:
            log.error(
                "instance process lost a batch",
                extra={"model": self._label, "pid": pid, "reason": exc.reason},
            )
            handed_on = self._restart_later(worker)
            raise Unavailable(
                f"model {self._label}: the instance process running this batch {exc.reason}; "
                "it is being restarted, retry"
            ) from None
        finally:
            if not handed_on:
                self._free.put(worker)

    def _revive(self, worker: _Worker) -> None:
        try:
            worker.start()
        except ModelLoadError as exc:
            raise Unavailable(
                f"model {self._label}: an instance process could not be restarted: {exc.message}"
            ) from None

    def _restart_later(self, worker: _Worker) -> bool:
        """Restart on a thread that returns the worker to the free list; False once unloading."""
        with self._lock:
            if self._closed:
                return False
            thread = threading.Thread(
                target=self._restart, args=(worker,), name=f"restart-{self._label}", daemon=True
            )
            self._restarting.add(thread)
            thread.start()
        return True

    def _restart(self, worker: _Worker) -> None:
        try:
            worker.start()
        except ModelportError as exc:
            log.error(
                "instance process could not be restarted; the next batch for it tries again",
                extra={"model": self._label, "reason": exc.message},
            )
        except Exception:
            log.exception("instance process restart failed", extra={"model": self._label})
        finally:
            with self._lock:
                self._restarting.discard(threading.current_thread())
            self._free.put(worker)

    def unload(self) -> None:
        with self._lock:
            self._closed = True
            restarting = list(self._restarting)
        for thread in restarting:
            thread.join()
        for w in self._workers:
            w.stop()


def load_in_processes(
    version_dir: Path, config: ModelConfig, instances: int, segment_bytes: int = SEGMENT_BYTES
) -> ProcessRuntime:
    """Start ``instances`` workers that each load ``config.backend``; wait until all are ready.

    Each worker is one instance, so a backend that sizes a thread pool gets
    one thread unless the config sets its thread parameter: N processes x 1
    thread is what the scheduler's N concurrent batches can use.
    """
    backend = config.backend
    if backend not in BACKENDS:
        raise ModelLoadError(
            f"backend {backend!r} is not served (served: {', '.join(sorted(BACKENDS))})"
        )
    label = config.name or version_dir.parent.name
    spec = _Spec(backend, version_dir, _one_thread(config), label, segment_bytes)
    workers = [_Worker(spec, i) for i in range(max(1, instances))]
    try:
        for w in workers:
            w.launch()
        natives = [w.await_ready() for w in workers]
    except BaseException:
        for w in workers:
            w.discard()
        raise
    return ProcessRuntime(workers, natives[0], label, config.modelport.instance_timeout_s)


def _one_thread(config: ModelConfig) -> ModelConfig:
    key = _THREAD_PARAMETERS.get(config.backend)
    if key is None or config.parameter(key) is not None:
        return config
    parameters = {**config.parameters, key: Parameter(string_value="1")}
    return config.model_copy(update={"parameters": parameters})
