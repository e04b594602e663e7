"""The supervisor of a node started with ``--workers N``: N server processes as one server.

The supervisor serves nothing itself. Before any worker starts it takes
every port (REST, gRPC, metrics) as a single process would, so a taken
port is one line and exit 2, as without ``--workers``; it then keeps them
bound, not listening, with SO_REUSEPORT, so they stay this node's while
workers come and go, and the kernel hands connections only to the
workers' listening sockets. It applies the state store's migrations once,
so workers never race to do it, and starts the workers.

While the node runs, a worker that ends is started again (its index
kept, a growing pause when it keeps failing young), and only its own
requests in flight were lost: the others kept their connections. A
worker that fails before the node ever served (a broken config, a port)
stops the node with that worker's exit status. SIGTERM or SIGINT is
passed to every worker, each drains as a single server does, and after
``shutdown_grace`` plus a margin the stragglers are killed. SIGHUP (reload
the TLS certificate) is passed on when the node serves TLS; without TLS it
stops the node as SIGTERM does (a single server ends on it too).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from modelport.config.server import ServerConfig
from modelport.controlplane.store import Database
from modelport.dataplane.admission.shared_buckets import SharedBuckets
from modelport.dataplane.transport.listen import bind_listeners, check_free, port_of
from modelport.errors import ConfigError, ListenFailed
from modelport.node.member import NodeMember

log = logging.getLogger("modelport.node")

#: Seconds beyond ``shutdown_grace`` a worker gets to finish before SIGKILL.
STOP_MARGIN_S = 10.0
#: A worker that ends within this many seconds of its start failed young: the
#: pause before the next start doubles (up to MAX_PAUSE_S) instead of resetting.
YOUNG_S = 30.0
FIRST_PAUSE_S = 0.5
MAX_PAUSE_S = 15.0


def hold_ports(config: ServerConfig) -> tuple[ServerConfig, list[socket.socket]]:
    """Take every port the node serves; the config with each port the kernel chose
    for a port 0, and the sockets holding them (close them when the node ends)."""
    held: list[socket.socket] = []
    wanted = [("HTTP", config.http_port), ("gRPC", config.grpc_port)]
    if config.metrics_port is not None:
        wanted.append(("metrics", config.metrics_port))
    chosen: dict[str, int] = {}
    try:
        for transport, port in wanted:
            # Another server holding it with SO_REUSEPORT would otherwise share it silently.
            check_free(config.host, port, transport)
            sockets = bind_listeners(config.host, port, transport, shared=True, listen=False)
            held += sockets
            chosen[transport] = port_of(sockets)
    except BaseException:
        for sock in held:
            sock.close()
        raise
    update = {"http_port": chosen["HTTP"], "grpc_port": chosen["gRPC"]}
    if config.metrics_port is not None:
        update["metrics_port"] = chosen["metrics"]
    return config.model_copy(update=update), held


#: Runs one worker's server until it stops.
Serve = Callable[[ServerConfig, NodeMember], None]

#: Where the worker finds it, as ``module:function``: imported in the worker only,
#: so the supervisor stays small (it serves nothing) and this package does not
#: import the server, which imports it.
SERVE = "modelport.server:run"


def _serve_function(where: str) -> Serve:
    module, _, name = where.partition(":")
    found: Serve = getattr(importlib.import_module(module), name)
    return found


def _worker_main(
    serve: str,
    config: ServerConfig,
    index: int,
    count: int,
    directory: Path,
    conn: Connection,
    restarted: bool,
) -> None:
    """A worker process: one server of the node (runs in the spawned interpreter)."""
    from modelport.observability.logs import configure_logging

    # The supervisor's terminal Ctrl-C reaches every worker too; the server's own
    # handlers take over once it runs, until then a SIGINT must not print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(config.log_level, config.log_format)
    member = NodeMember(index, count, directory, lambda: conn.send("ready"), restarted)
    try:
        _serve_function(serve)(config, member)
    except (ConfigError, ListenFailed) as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(2)


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    conn: Connection
    started: float
    ready: bool = False


@dataclass
class _Restart:
    pause_s: float = FIRST_PAUSE_S
    due: float | None = None


@dataclass
class Supervisor:
    """Starts, watches and stops the workers of one node."""

    config: ServerConfig
    directory: Path
    count: int
    serve: str = SERVE
    workers: dict[int, _Worker] = field(default_factory=dict)
    restarts: dict[int, _Restart] = field(default_factory=dict)
    stopping: bool = False
    serving: bool = False
    _signals: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals.append(signum)
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"s")

    def _start(self, index: int, restarted: bool) -> None:
        parent, child = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_worker_main,
            args=(self.serve, self.config, index, self.count, self.directory, child, restarted),
            name=f"modelport-worker-{index}",
        )
        process.start()
        child.close()
        self.workers[index] = _Worker(index, process, parent, time.monotonic())
        log.info("worker started", extra={"worker": index, "pid": process.pid})

    def run(self) -> int:
        """Serve until a signal stops the node; the exit status."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        for index in range(self.count):
            self._start(index, restarted=False)
        status = 0
        deadline: float | None = None
        while self.workers or (not self.stopping and self.restarts):
            timeout = self._next_timeout(deadline)
            waitables: list[object] = [self._wake_r]
            for worker in self.workers.values():
                waitables.append(worker.process.sentinel)
                if not worker.ready:
                    waitables.append(worker.conn)
            for item in wait(waitables, timeout):  # type: ignore[arg-type]
                if item == self._wake_r:
                    os.read(self._wake_r, 64)
                    deadline = self._handle_signals(deadline)
                elif isinstance(item, int):
                    failed = self._ended(item)
                    if failed is not None:
                        status = failed
                        deadline = self._stop(deadline)
                else:
                    self._heard(item)  # type: ignore[arg-type]
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                for worker in self.workers.values():
                    log.error(
                        "worker did not stop in time; killing it", extra={"worker": worker.index}
                    )
                    worker.process.kill()
                deadline = now + 5.0
            if not self.stopping:
                for index, restart in list(self.restarts.items()):
                    if restart.due is not None and now >= restart.due:
                        restart.due = None
                        self._start(index, restarted=True)
        log.info("node stopped")
        return status

    def _next_timeout(self, deadline: float | None) -> float | None:
        times = [r.due for r in self.restarts.values() if r.due is not None and not self.stopping]
        if deadline is not None:
            times.append(deadline)
        if not times:
            return None
        return max(0.0, min(times) - time.monotonic())

    def _handle_signals(self, deadline: float | None) -> float | None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum == signal.SIGHUP and self.config.tls_cert is not None:
                for worker in self.workers.values():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker.process.pid or 0, signal.SIGHUP)
            else:
                deadline = self._stop(deadline)
        return deadline

    def _stop(self, deadline: float | None) -> float:
        if not self.stopping:
            self.stopping = True
            log.info("node stopping: draining every worker", extra={"workers": len(self.workers)})
            for worker in self.workers.values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid or 0, signal.SIGTERM)
        if deadline is None:
            # An advertised node's workers serve on, draining, before they stop accepting.
            drain = self.config.drain_seconds if self.config.advertise is not None else 0.0
            deadline = time.monotonic() + drain + self.config.shutdown_grace + STOP_MARGIN_S
        return deadline

    def _heard(self, conn: Connection) -> None:
        for worker in self.workers.values():
            if worker.conn is conn:
                try:
                    conn.recv()
                except (EOFError, OSError):
                    return  # it ended; its sentinel says so
                worker.ready = True
                if worker.index in self.restarts:
                    log.info("worker serving again", extra={"worker": worker.index})
        everyone = len(self.workers) == self.count
        if not self.serving and everyone and all(w.ready for w in self.workers.values()):
            self.serving = True
            log.info("node serving", extra={"workers": self.count})

    def _ended(self, sentinel: int) -> int | None:
        """Handle a worker that ended; an exit status when the node must stop."""
        worker = next(w for w in self.workers.values() if w.process.sentinel == sentinel)
        worker.process.join()
        del self.workers[worker.index]
        worker.conn.close()
        code = worker.process.exitcode
        if self.stopping:
            return None
        how = f"signal {-code}" if code is not None and code < 0 else f"status {code}"
        if not self.serving:
            log.error(
                "worker failed before the node served; stopping",
                extra={"worker": worker.index, "exit": how},
            )
            return code if code is not None and code > 0 else 1
        restart = self.restarts.setdefault(worker.index, _Restart())
        young = time.monotonic() - worker.started < YOUNG_S
        restart.pause_s = min(restart.pause_s * 2, MAX_PAUSE_S) if young else FIRST_PAUSE_S
        restart.due = time.monotonic() + (restart.pause_s if young else 0.0)
        log.error(
            "worker ended; starting another",
            extra={
                "worker": worker.index,
                "exit": how,
                "in_s": round(restart.due - time.monotonic(), 2),
            },
        )
        return None


def run_node(config: ServerConfig, serve: str = SERVE) -> int:
    """Run ``config.workers`` workers as one node; the exit status.

    Raises ListenFailed (a taken port) or ConfigError (the state store)
    before any worker starts.
    """
    chosen, held = hold_ports(config)
    directory = Path(tempfile.mkdtemp(prefix="modelport-node-"))
    try:
        # Migrations once, here, rather than raced by every worker.
        Database.open(config.state_url or Database.sqlite_url(config.data_dir)).close()
        # The tables every worker maps: made once, before any worker opens them.
        for table in ("buckets", "authfail"):
            SharedBuckets.open(directory / table).close()
        supervisor = Supervisor(chosen, directory, config.workers, serve)
        return supervisor.run()
    finally:
        for sock in held:
            sock.close()
        shutil.rmtree(directory, ignore_errors=True)
