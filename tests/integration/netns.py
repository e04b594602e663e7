"""Regions as network namespaces: a region outage is its link going down.

Each ``Region`` is a network namespace joined to the root namespace by a
veth pair on a private /24 of its own (``10.231.N.0/24``: ``.1`` on the
root side, ``.2`` inside). Nodes run inside with ``ip netns exec`` and bind
the inside address; the gateway and Envoy stay in the root namespace and
reach them over the link, so taking the root end of the link down cuts the
region off exactly as a failed uplink would: the nodes keep running,
nothing answers.

Everything made here is removed by ``Region.remove`` (namespace, link,
processes started inside, by PID), which the fixtures call on every exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

#: Where the tests' nodes bind inside each namespace (the namespace is fresh: all free).
FIRST_PORT = 8000

#: The second octet of every test subnet (10.231.N.0/24).
NET_PREFIX = "10.231"

WORK_SIGNATURE = """
max_batch_size: 8
input:
- {name: x, data_type: TYPE_FP32, dims: [2]}
output:
- {name: y, data_type: TYPE_FP32, dims: [2]}
"""

#: Echoes its input after sleeping x[0][1] seconds: tests hold requests in flight with it.
WORK_SOURCE = """
import time

class Model:
    def predict(self, inputs):
        x = inputs["x"]
        time.sleep(max(0.0, float(x[0][1])))
        return {"y": x}
"""

MODEL = "work"


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=False)


def _must(*args: str) -> None:
    done = _ip(*args)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@functools.cache
def netns_unavailable() -> str | None:
    """Why these tests cannot run here (None: they can): they need root and ``ip netns``."""
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    if not _has_ip():
        return "the ip command (iproute2) is not installed"
    probe = f"mp-probe-{secrets.token_hex(3)}"
    made = _ip("netns", "add", probe)
    if made.returncode != 0:
        return f"ip netns add is not permitted here: {made.stderr.strip()}"
    _ip("netns", "del", probe)
    return None


def _has_ip() -> bool:
    try:
        done = subprocess.run(["ip", "-V"], capture_output=True, timeout=10, check=False)
    except OSError:
        return False
    return done.returncode == 0


INOTIFY_LIMIT = Path("/proc/sys/fs/inotify/max_user_instances")


def inotify_in_use(pid: int | None = None) -> int:
    """inotify instances open now by ``pid``, or by every process (all are root's here)."""
    count = 0
    for fd in Path("/proc").glob(f"{pid or '[0-9]*'}/fd/*"):
        try:
            if os.readlink(fd) == "anon_inode:inotify":
                count += 1
        except OSError:
            continue
    return count


def ensure_inotify_headroom(needed: int) -> None:
    """Room for ``needed`` more inotify instances, raising the per-user limit if short.

    The gateway's Envoy opens one inotify instance per cluster (each EDS file
    is watched on its own), about 45 for a two-region fleet, so a machine
    already running a few gateways hits the default limit of 128 and the next
    Envoy aborts at start. These tests run as root on a machine of their own
    kind, so they raise the limit rather than fail on others' load.
    """
    limit = int(INOTIFY_LIMIT.read_text())
    wanted = inotify_in_use() + needed
    if wanted > limit:
        # Without the right to, the gateway tries anyway and says why it cannot start.
        with contextlib.suppress(OSError):
            INOTIFY_LIMIT.write_text(str(wanted + 64))


def _free_subnet() -> int:
    """A third octet no interface on this machine uses yet."""
    shown = _ip("-4", "-o", "addr", "show").stdout + " " + _ip("-4", "route", "show").stdout
    used = {
        int(word.split(".")[2])
        for word in shown.split()
        if word.startswith(f"{NET_PREFIX}.") and word.count(".") >= 3
    }
    free = [n for n in range(1, 255) if n not in used]
    if not free:
        raise RuntimeError(f"every {NET_PREFIX}.N.0/24 is in use")
    return free[secrets.randbelow(len(free))]


@dataclass
class Node:
    """One ``modelport serve`` inside a region; its ports are the region's to pick."""

    name: str
    region: Region
    http_port: int
    folder: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def grpc_port(self) -> int:
        return self.http_port + 1

    @property
    def metrics_port(self) -> int:
        return self.http_port + 2

    @property
    def http(self) -> str:
        return f"{self.region.inside}:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"{self.region.inside}:{self.grpc_port}"

    @property
    def base(self) -> str:
        return f"http://{self.http}"

    @property
    def log_path(self) -> Path:
        return self.folder / "node.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, repository: Path, *extra: str) -> None:
        """Start the node inside its namespace (``ip netns exec`` execs it: one PID)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        argv = [
            "ip", "netns", "exec", self.region.namespace,
            sys.executable, "-m", "modelport", "serve", str(repository),
            "--host", self.region.inside,
            "--http-port", str(self.http_port),
            "--grpc-port", str(self.grpc_port),
            "--metrics-port", str(self.metrics_port),
            "--region", self.region.label,
            "--insecure",
            *extra,
        ]  # fmt: skip
        if "--data-dir" not in extra:
            argv += ["--data-dir", str(self.folder / "state")]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, within: float = 90.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"node {self.name} exited:\n{self.log()[-3000:]}")
            try:
                ready = httpx.get(f"{self.base}/v2/models/{MODEL}/ready", timeout=1)
                if ready.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"node {self.name} not ready in {within} s:\n{self.log()[-3000:]}")

    def served(self, model: str = MODEL) -> int:
        """Inferences the node itself counts as succeeded (its own statistics)."""
        stats = httpx.get(f"{self.base}/v2/models/{model}/stats", timeout=5)
        stats.raise_for_status()
        return int(stats.json()["model_stats"][0]["inference_stats"]["success"]["count"])

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(sig)

    def stop(self, wait: float = 30.0) -> None:
        """SIGTERM, then SIGKILL when it has not exited after ``wait`` seconds."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)


@dataclass
class Region:
    """A network namespace standing for one region, linked to the root namespace."""

    label: str
    namespace: str
    root_end: str
    inside_end: str
    subnet: int
    nodes: list[Node] = field(default_factory=list)

    @property
    def outside(self) -> str:
        """The root namespace's address on the link."""
        return f"{NET_PREFIX}.{self.subnet}.1"

    @property
    def network(self) -> str:
        return f"{NET_PREFIX}.{self.subnet}.0/24"

    @property
    def inside(self) -> str:
        """The region's address: every node inside binds it."""
        return f"{NET_PREFIX}.{self.subnet}.2"

    @classmethod
    def make(cls, run: str, index: int, label: str) -> Region:
        """Namespace, veth pair and addresses; partial work is undone when a step fails."""
        region = cls(
            label=label,
            namespace=f"mp-{run}-{label}",
            root_end=f"mp{run}{index}r",
            inside_end=f"mp{run}{index}n",
            subnet=_free_subnet(),
        )
        try:
            _must("netns", "add", region.namespace)
            _must("link", "add", region.root_end, "type", "veth", "peer", "name", region.inside_end)
            _must("link", "set", region.inside_end, "netns", region.namespace)
            _must("addr", "add", f"{region.outside}/24", "dev", region.root_end)
            _must("link", "set", region.root_end, "up")
            # With the link down, the subnet must not fall through to the default
            # route (on some machines something there answers any address).
            _must("route", "add", "unreachable", region.network, "metric", "4000")
            inside = ["netns", "exec", region.namespace, "ip"]
            _must(*inside, "addr", "add", f"{region.inside}/24", "dev", region.inside_end)
            _must(*inside, "link", "set", region.inside_end, "up")
            _must(*inside, "link", "set", "lo", "up")
        except BaseException:
            region.remove()
            raise
        return region

    def node(self, name: str, folder: Path) -> Node:
        made = Node(name, self, FIRST_PORT + 10 * len(self.nodes), folder)
        self.nodes.append(made)
        return made

    def link(self, up: bool) -> None:
        """The region's uplink up or down; the nodes inside keep running either way.

        The inside end goes down, as a region's uplink fails: packets to it are
        lost without a word (no reset, no refusal), so the gateway learns of the
        outage only from its health checks and timeouts.
        """
        _must("netns", "exec", self.namespace, "ip", "link", "set", self.inside_end,
              "up" if up else "down")  # fmt: skip

    def remove(self) -> None:
        """Kill what runs inside (by PID), then delete the namespace and its link."""
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.kill()
                node.process.wait(timeout=30)
        # Anything else still inside (a node's model workers outliving it) was started here too.
        deadline = time.monotonic() + 10
        while pids := _ip("netns", "pids", self.namespace).stdout.split():
            if time.monotonic() > deadline:
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            time.sleep(0.1)
        _ip("link", "del", self.root_end)
        _ip("netns", "del", self.namespace)
        _ip("route", "del", "unreachable", self.network, "metric", "4000")


def new_run() -> str:
    """A short tag unique to this test run; interface names must fit in 15 characters."""
    return secrets.token_hex(3)


def write_work_model(repository: Path, name: str = MODEL, extra_config: str = "") -> Path:
    """A repository with the ``work`` model (echo after the requested sleep)."""
    version = repository / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    (repository / name / "config.yaml").write_text(WORK_SIGNATURE + extra_config)
    (version / "model.py").write_text(textwrap.dedent(WORK_SOURCE))
    return repository


def infer_body(sleep: float = 0.0) -> dict[str, object]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, sleep]}]}


@dataclass
class Gateway:
    """``modelport gateway`` in the root namespace, as a user starts it."""

    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    admin_port: int
    folder: Path
    #: Envoy's PID, so that teardown can end it even when the gateway died without doing so.
    envoy_pid: int | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def envoy_alive(self) -> bool:
        if self.envoy_pid is None:
            return False
        try:
            state = Path(f"/proc/{self.envoy_pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state != "Z"

    def log(self) -> str:
        return (self.folder / "gateway.err").read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def routable(self, cluster: str = f"model~{MODEL}~http") -> set[str]:
        """``host:port`` of the hosts Envoy would send a request for ``cluster`` to now."""
        answer = httpx.get(f"http://127.0.0.1:{self.admin_port}/clusters?format=json", timeout=3)
        found: set[str] = set()
        for status in answer.json().get("cluster_statuses", []):
            if status["name"] != cluster:
                continue
            for host in status.get("host_statuses", []):
                flags = host.get("health_status", {})
                bad = (
                    flags.get("failed_active_health_check")
                    or flags.get("failed_outlier_check")
                    or flags.get("pending_active_hc")
                )
                if not bad and flags.get("eds_health_status", "HEALTHY") == "HEALTHY":
                    address = host["address"]["socket_address"]
                    found.add(f"{address['address']}:{address['port_value']}")
        return found

    def wait_routable(self, wanted: set[str], within: float) -> float:
        """Seconds until Envoy routes to exactly ``wanted``; fails after ``within``."""
        start = time.monotonic()
        while True:
            seen = self.routable()
            if seen == wanted:
                return time.monotonic() - start
            if time.monotonic() - start > within:
                raise AssertionError(f"Envoy routes to {seen}, wanted {wanted}:\n{self.log()}")
            time.sleep(0.05)

    def wait_serving(self, within: float) -> float:
        """Seconds until a request through the gateway is answered by a node.

        Envoy's admin port may call a just-added node healthy a moment before
        requests are balanced onto it, so readiness is judged as a user would.
        """
        start = time.monotonic()
        with httpx.Client(timeout=10) as client:
            while True:
                answer = client.post(f"{self.base}/v2/models/{MODEL}/infer", json=infer_body())
                if answer.status_code == 200:
                    return time.monotonic() - start
                if time.monotonic() - start > within:
                    raise AssertionError(f"{answer.status_code} {answer.text}:\n{self.log()}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        if self.envoy_alive():
            assert self.envoy_pid is not None
            os.kill(self.envoy_pid, signal.SIGKILL)


def _envoy_child(pid: int) -> int | None:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    for child in children:
        try:
            if os.readlink(f"/proc/{child}/exe").endswith("/envoy"):
                return int(child)
        except OSError:
            continue
    return None


def start_gateway(
    fleet_file: Path, folder: Path, ports: tuple[int, int, int], inotify: int = 80
) -> Gateway:
    """The gateway over ``fleet_file``, once it has printed that it is ready."""
    folder.mkdir(parents=True, exist_ok=True)
    ensure_inotify_headroom(inotify)
    http_port, grpc_port, admin_port = ports
    argv = [
        sys.executable, "-m", "modelport", "gateway", "--fleet", str(fleet_file),
        "--http-port", str(http_port), "--grpc-port", str(grpc_port),
        "--admin-port", str(admin_port), "--access-log", str(folder / "access.log"),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    out = folder / "gateway.out"
    with out.open("wb") as stdout, (folder / "gateway.err").open("wb") as stderr:
        process = subprocess.Popen(argv, stdout=stdout, stderr=stderr, env=env)
    gateway = Gateway(process, http_port, grpc_port, admin_port, folder)
    deadline = time.monotonic() + 60
    while "gateway ready" not in out.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            gateway.stop()
            raise AssertionError(f"gateway did not start:\n{gateway.log()}")
        time.sleep(0.05)
    gateway.envoy_pid = _envoy_child(process.pid)
    return gateway


class TcpBridge:
    """Forwards ``listen`` (an address on a region's link) to ``target`` in the root namespace.

    Services listening on loopback only (Redis here) are out of a namespace's
    reach; the bridge makes one reachable at the root end of the region's
    link, so a region cut off loses it too, as it would in production.
    """

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.listen = listen
        self.target = target
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TcpBridge:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"bridge on {self.listen} did not start")
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._pair, self.listen[0], self.listen[1])
        )
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()

    async def _pair(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
