"""``modelport batch --repo``: a server of its own on loopback for one run.

``modelport serve REPO`` runs as a subprocess on free ports with its state in
a temporary directory, so it neither collides with a server already running
nor leaves anything behind; it is stopped when the run ends, however it ends.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from modelport.batchfiles.tensors import UsageError

READY_TIMEOUT_S = 120.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def local_server(repository: Path, model: str) -> Iterator[str]:
    """The REST address of a server of ``repository``, once ``model`` is ready."""
    if not repository.is_dir():
        raise UsageError(f"--repo {repository} is not a directory")
    with tempfile.TemporaryDirectory(prefix="modelport-batch-") as state:
        http, grpc, metrics = _free_port(), _free_port(), _free_port()
        log = Path(state) / "server.log"
        args = [
            sys.executable, "-m", "modelport", "serve", str(repository),
            "--host", "127.0.0.1",
            "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
            "--data-dir", str(Path(state) / "state"),
            "--strict-readiness", "false",
        ]  # fmt: skip
        with log.open("wb") as out:
            process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{http}"
        try:
            _wait_ready(process, url, model, log)
            yield url
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _wait_ready(process: subprocess.Popen[bytes], url: str, model: str, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise UsageError(f"the server of --repo exited with {process.returncode}:\n{tail}")
        try:
            if httpx.get(f"{url}/v2/models/{model}/ready", timeout=1).status_code == 200:
                return
            if '"message": "serving"' in log.read_text(errors="replace"):
                return  # started; the model's metadata call says why it is not ready
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise UsageError(f"the server of --repo was not ready in {READY_TIMEOUT_S:.0f} s")
