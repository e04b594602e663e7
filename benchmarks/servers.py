"""Server subprocesses for the benchmark: modelport and the HTTP floor, on free ports."""

from __future__ import annotations

import http.client
import json
import os
import resource
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tables import log

READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """Status and body of a GET; 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, http.client.HTTPException):
        return 0, b""


def http_post(url: str, body: bytes, headers: dict[str, str], timeout: float = 10.0) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code
    except (OSError, http.client.HTTPException):
        return 0


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for task in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
        except OSError:
            continue
        out.extend(int(c) for c in text.split())
    return out


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (for servers that fork workers)."""
    seen: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.append(current)
        todo.extend(_children(current))
    return seen


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) in KiB, summed over the process tree.

    With several worker processes the sum of their peaks is an upper bound
    of the peak of the whole, since they need not peak at the same moment.
    """
    total = {"VmRSS": 0, "VmHWM": 0}
    for p in process_tree(pid):
        try:
            lines = Path(f"/proc/{p}/status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            key, _, value = line.partition(":")
            if key in total:
                total[key] += int(value.split()[0])
    return total


@dataclass
class ServerProcess:
    """A server subprocess whose output goes to ``log_path``."""

    name: str
    argv: list[str]
    log_path: Path
    ready_url: str
    cwd: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n=== start: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd, env=self.env
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode} before it was ready:\n"
                    f"{self.log_tail()}"
                )
            status, _ = http_get(self.ready_url, timeout=1.0)
            if status == 200:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} not ready in {READY_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def memory_kib(self) -> dict[str, int]:
        return memory_kib(self.pid) if self.alive() else {"VmRSS": 0, "VmHWM": 0}

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after a grace period; the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode


def modelport_server(
    python: str,
    repo: Path,
    log_path: Path,
    cwd: Path,
    workers: int | None = None,
    extra: list[str] | None = None,
) -> tuple[ServerProcess, int, int]:
    """An unstarted modelport server on free ports; with its HTTP and gRPC ports."""
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    argv = [
        python, "-m", "modelport", "serve", str(repo),
        "--http-port", str(http_port),
        "--grpc-port", str(grpc_port),
        "--metrics-port", str(metrics_port),
    ]  # fmt: skip
    if workers is not None:
        argv += ["--workers", str(workers)]
    argv += extra or []
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    server = ServerProcess(
        "modelport",
        argv,
        log_path,
        f"http://127.0.0.1:{http_port}/v2/health/ready",
        cwd,
        env,
    )
    return server, http_port, grpc_port


def floor_server(
    python: str, app_dir: Path, log_path: Path, cwd: Path, workers: int
) -> tuple[ServerProcess, int]:
    """The bare ASGI app under uvicorn (httptools, uvloop), unstarted; with its port."""
    port = free_port()
    argv = [
        python, "-m", "uvicorn", "--app-dir", str(app_dir), "floor_app:app",
        "--host", "127.0.0.1", "--port", str(port),
        "--http", "httptools", "--loop", "uvloop",
        "--workers", str(workers), "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    server = ServerProcess("floor", argv, log_path, f"http://127.0.0.1:{port}/v2/health/ready", cwd)
    return server, port


# ------------------------------------------------------- health and logs


@dataclass
class ServerRun:
    """What one modelport server did over its model's runs."""

    label: str
    models: list[str]
    rss_ready_kib: int = 0
    peak_rss_kib: int = 0
    restarts: int = 0
    crashes: list[str] = field(default_factory=list)
    log_warnings: int = 0
    log_errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    source: str = ""
    """source_fingerprint() when the server started."""
    exit_code: int | None = None


class ServerGone(RuntimeError):
    """The server died and could not be restarted: the remaining runs are skipped."""


def check_server(server: ServerProcess, run: ServerRun) -> bool:
    """True if the server is up; records a crash and restarts it otherwise."""
    if server.alive():
        status, _ = http_get(server.ready_url, timeout=5)
        if status == 200:
            return True
        run.crashes.append(f"not ready after a run (GET ready -> {status or 'no answer'})")
        return False
    code = server.returncode()
    run.crashes.append(f"server exited with {code}; log tail:\n{server.log_tail(15)}")
    log(f"modelport DIED (exit {code}); restarting. Log tail:\n{server.log_tail(15)}")
    try:
        server.start()
    except RuntimeError as exc:
        run.crashes.append(f"restart failed: {exc}")
        raise ServerGone(str(exc)) from None
    run.restarts += 1
    return False


def scan_log(path: Path, run: ServerRun) -> None:
    """Count warning and error lines in a server's JSON log, errors by kind."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not isinstance(entry, dict):
            if "Traceback" in line or "Error" in line:
                run.log_errors += 1
                key = line.strip()[:200]
                run.error_kinds[key] = run.error_kinds.get(key, 0) + 1
            continue
        level = entry.get("level")
        if level == "warning":
            run.log_warnings += 1
        elif level in ("error", "critical"):
            run.log_errors += 1
            exc = str(entry.get("exception") or "").strip()
            kind = str(entry.get("message", "")).strip()
            if exc:
                kind = f"{kind}: {exc.splitlines()[-1]}"
            run.error_kinds[kind[:200]] = run.error_kinds.get(kind[:200], 0) + 1


# ------------------------------------------------------------- CPU accounting

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def system_busy_s() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants."""
    total = 0
    for p in process_tree(pid):
        try:
            after_comm = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += int(after_comm[11]) + int(after_comm[12])
    return total / CLOCK_TICKS


def own_cpu_s() -> float:
    """CPU seconds of this process and of its children that have been waited for."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class CpuMeter:
    """CPU time that processes other than the benchmark's used while it measured.

    Everything busy on the machine, less this process, its finished children
    (load generators, ceiling workers) and the live server's process tree. A
    share well above zero means something else competed for the two cores
    and the row's numbers are low.
    """

    def __init__(self, server_pid: int | None = None) -> None:
        self.server_pid = server_pid
        self.wall = time.monotonic()
        self.busy = system_busy_s()
        self.own = own_cpu_s()
        self.server = tree_cpu_s(server_pid) if server_pid else 0.0

    def server_cpu_s(self) -> float | None:
        """CPU seconds the server's process tree used since creation (all threads)."""
        if not self.server_pid:
            return None
        return tree_cpu_s(self.server_pid) - self.server

    def other_share(self) -> float:
        """Other processes' CPU time as a share of all cores' time since creation."""
        wall = time.monotonic() - self.wall
        busy = system_busy_s() - self.busy
        own = own_cpu_s() - self.own
        server = (tree_cpu_s(self.server_pid) - self.server) if self.server_pid else 0.0
        cores = os.cpu_count() or 1
        return max(0.0, busy - own - server) / (wall * cores) if wall > 0 else 0.0
