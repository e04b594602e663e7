"""Integration fixtures: the real server as a subprocess on free ports."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.integration.models import build_repository

#: Ports handed out below the kernel's ephemeral range (32768 and up on Linux).
#: A port the kernel picked with bind(0) is free only until the server binds
#: it; meanwhile any outgoing connection on the machine (a client, Envoy, a
#: database driver) may take it as its source port, and the server then exits
#: with "address already in use". Outgoing connections never use ports below
#: the ephemeral range, so only a listener could take one of these.
_PORT_RANGE = (20000, 32000)
_handed_out: set[int] = set()
_ports = random.Random(os.getpid() ^ time.time_ns())


def free_port() -> int:
    """A loopback port nothing listens on, never handed out before in this run."""
    low, high = _PORT_RANGE
    for _ in range(1000):
        port = _ports.randrange(low, high)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {low}-{high}")


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    metrics_port: int
    repository: Path
    log_path: Path

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None


def started(server: Server) -> bool:
    """Whether the server has finished starting: every port bound, every model tried.

    A repository with a model that failed to load is never ready under strict
    readiness (the default), so the "serving" log line, not readiness, says
    when such a server has started.
    """
    return '"message": "serving"' in server.log()


def start_server(repository: Path | None, log_path: Path, *extra: str) -> Server:
    """The server as a subprocess on free ports, once it is ready or has started."""
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    args = [sys.executable, "-m", "modelport", "serve"]
    if repository is not None:
        args.append(str(repository))
    args += [
        "--http-port", str(http_port),
        "--grpc-port", str(grpc_port),
        "--metrics-port", str(metrics_port),
        *extra,
    ]  # fmt: skip
    if "--data-dir" not in extra and "--state-url" not in extra:
        # Each server keeps its state (policies, history) apart from the others'.
        args += ["--data-dir", str(log_path.parent / f"state-{http_port}")]
    log = log_path.open("wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = Server(proc, http_port, grpc_port, metrics_port, repository or Path(), log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.base}/v2/health/ready", timeout=1).status_code == 200:
                return server
            if started(server):
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    stop_server(server)
    raise RuntimeError(f"server not ready in time:\n{server.log()}")


def stop_server(server: Server) -> int:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return server.process.returncode


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="session")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # The repository holds broken models on purpose; strict readiness has its own tests.
    srv = start_server(
        repository,
        tmp_path_factory.mktemp("log") / "server.log",
        "--strict-readiness",
        "false",
    )
    yield srv
    stop_server(srv)


#: Both standard clients, for tests parametrized over the transport.
CLIENTS = ["http", "grpc"]


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[Any]:
    """tritonclient.http against the module's ``server`` (modules may override it)."""
    client = httpclient.InferenceServerClient(server.http_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc(server: Server) -> Iterator[Any]:
    """tritonclient.grpc against the module's ``server``."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


def client_for(kind: str, http: Any, grpc: Any) -> tuple[Any, Any]:
    """The client fixture and its module (for InferInput) for ``kind``."""
    return (http, httpclient) if kind == "http" else (grpc, grpcclient)
