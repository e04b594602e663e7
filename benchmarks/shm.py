"""System shared memory against binary HTTP, for a 4 MiB FP32 tensor.

    .venv/bin/python benchmarks/shm.py                 # 5 s per run, concurrency 1 and 4
    .venv/bin/python benchmarks/shm.py --duration 2 --concurrency 1
    make bench BENCH_ARGS="--shm"                       # as a section of the full run

An identity ONNX model (input ``[1, 1048576]`` FP32, 4 MiB) is built with
``onnx.helper`` into a temporary repository and served by one modelport
server. The same tensor is sent both ways with ``tritonclient.http``:

- ``http-binary``: ``binary_data=True`` for the input and the output; the
  4 MiB go through the socket both ways;
- ``shm``: input and output in system shared memory (``tritonclient.utils.
  shared_memory``); the request carries only the tensors' metadata;
- ``http-raw`` (a reference, not the comparison asked for): the same binary
  HTTP request from a bare keep-alive socket (TCP_NODELAY, one ``sendall``,
  ``recv_into`` a preallocated buffer), to show how much of the
  ``http-binary`` time is tritonclient's own rather than the server's.

Each client thread has its own client and, for ``shm``, its own input and
output segments, registered once. What is timed per request is the whole
round trip as a client lives it: for ``shm`` that includes copying the input
array into the segment and copying the output out of it into an array the
client owns, so both sides start from and end with a numpy array.

The two modes run alternately (``--rounds`` each) against the same server,
and the figures are the runs pooled: req/s, p50, p99, and the ratio. The
machine may be shared: the absolute numbers are printed beside the ratio.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import servers  # noqa: E402
from workdirs import PYTHON, RAW  # noqa: E402

ELEMENTS = 1 << 20  # 4 MiB of FP32
SHAPE = [1, ELEMENTS]
NBYTES = ELEMENTS * 4
MODEL = "identity_4mib"
MODES = ("http-binary", "shm", "http-raw")


def _pkg_resources_shim() -> None:
    """tritonclient 2.41's shared_memory imports ``pkg_resources`` (gone from setuptools
    81 on) for one call; provide it when missing, tritonclient itself unchanged."""
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        import importlib.resources
        import types

        shim = types.ModuleType("pkg_resources")

        def resource_filename(package: str, name: str) -> str:
            return str(importlib.resources.files(package) / name)

        shim.resource_filename = resource_filename  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = shim


def shared_memory() -> Any:
    _pkg_resources_shim()
    return importlib.import_module("tritonclient.utils.shared_memory")


def build_repository(root: Path) -> Path:
    """``identity_4mib``: INPUT0 [1, 1048576] FP32 -> OUTPUT0, unbatched."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        MODEL,
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, SHAPE)],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, SHAPE)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    version = root / MODEL / "1"
    version.mkdir(parents=True)
    onnx.save(model, str(version / "model.onnx"))
    (root / MODEL / "config.yaml").write_text("max_batch_size: 0\n")
    return root


@dataclass
class Run:
    mode: str
    concurrency: int
    seconds: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0

    def pooled(self, other: Run) -> None:
        self.seconds += other.seconds
        self.latencies_s += other.latencies_s
        self.errors += other.errors

    @property
    def req_per_s(self) -> float:
        return len(self.latencies_s) / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        return float(np.percentile(np.array(self.latencies_s), q) * 1000)

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "concurrency": self.concurrency,
            "requests": len(self.latencies_s),
            "seconds": round(self.seconds, 3),
            "req_per_s": round(self.req_per_s, 1),
            "p50_ms": round(self.percentile_ms(50), 3),
            "p99_ms": round(self.percentile_ms(99), 3),
            "errors": self.errors,
        }


class Worker:
    """One client thread's client and, for shm, its two registered segments."""

    def __init__(self, url: str, mode: str, index: int, data: np.ndarray[Any, Any]) -> None:
        import tritonclient.http as httpclient

        self.mod = httpclient
        self.mode = mode
        self.data = data
        self.client = httpclient.InferenceServerClient(url, connection_timeout=60.0,
                                                       network_timeout=60.0)  # fmt: skip
        self.handles: list[Any] = []
        if mode == "shm":
            shm = shared_memory()
            self.shm = shm
            tag = f"{int(time.time() * 1000) % 100000}_{index}"
            self.in_name, self.out_name = f"bench_in_{tag}", f"bench_out_{tag}"
            self.h_in = shm.create_shared_memory_region(self.in_name, f"/bench_in_{tag}", NBYTES)
            self.h_out = shm.create_shared_memory_region(self.out_name, f"/bench_out_{tag}", NBYTES)
            self.handles = [self.h_in, self.h_out]
            self.client.register_system_shared_memory(self.in_name, f"/bench_in_{tag}", NBYTES)
            self.client.register_system_shared_memory(self.out_name, f"/bench_out_{tag}", NBYTES)
            self.inputs = [self.mod.InferInput("INPUT0", SHAPE, "FP32")]
            self.inputs[0].set_shared_memory(self.in_name, NBYTES)
            self.outputs = [self.mod.InferRequestedOutput("OUTPUT0")]
            self.outputs[0].set_shared_memory(self.out_name, NBYTES)
        else:
            self.outputs = [self.mod.InferRequestedOutput("OUTPUT0", binary_data=True)]

    def one(self) -> np.ndarray[Any, Any]:
        """One request, numpy array in, numpy array (the client's own) out."""
        if self.mode == "shm":
            self.shm.set_shared_memory_region(self.h_in, [self.data])
            self.client.infer(MODEL, self.inputs, outputs=self.outputs)
            view = self.shm.get_contents_as_numpy(self.h_out, np.float32, SHAPE)
            return np.array(view)  # a copy the client owns, as as_numpy's array is
        inp = self.mod.InferInput("INPUT0", SHAPE, "FP32")
        inp.set_data_from_numpy(self.data, binary_data=True)
        result = self.client.infer(MODEL, [inp], outputs=self.outputs)
        out: np.ndarray[Any, Any] = result.as_numpy("OUTPUT0")
        return out

    def close(self) -> None:
        if self.mode == "shm":
            self.client.unregister_system_shared_memory(self.in_name)
            self.client.unregister_system_shared_memory(self.out_name)
            for h in self.handles:
                self.shm.destroy_shared_memory_region(h)
        self.client.close()


class RawWorker:
    """Binary HTTP from a bare socket: the least a client can spend on the 4 MiB."""

    def __init__(self, url: str, mode: str, index: int, data: np.ndarray[Any, Any]) -> None:
        import socket

        host, port = url.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.data = data
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "INPUT0",
                        "shape": SHAPE,
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": NBYTES},
                    }
                ],
                "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
            }
        ).encode()
        self.header = header
        self.head = (
            f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: {url}\r\n"
            f"Content-Type: application/octet-stream\r\n"
            f"Content-Length: {len(header) + NBYTES}\r\n"
            f"Inference-Header-Content-Length: {len(header)}\r\n\r\n"
        ).encode()
        self.buf = bytearray(NBYTES + (1 << 16))

    def one(self) -> np.ndarray[Any, Any]:
        raw = self.data.reshape(-1).view(np.uint8).data
        self.sock.sendall(b"".join([self.head, self.header, raw]))
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            got += chunk
        head, _, rest = got.partition(b"\r\n\r\n")
        fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
        fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
        length = int(fields[b"content-length"])
        hlen = int(fields[b"inference-header-content-length"])
        if length > len(self.buf):
            self.buf = bytearray(length)
        view = memoryview(self.buf)
        view[: len(rest)] = rest
        done = len(rest)
        while done < length:
            n = self.sock.recv_into(view[done:length])
            if n == 0:
                raise ConnectionError("the server closed the connection")
            done += n
        return np.frombuffer(self.buf, np.float32, ELEMENTS, hlen).reshape(SHAPE)

    def close(self) -> None:
        self.sock.close()


def measure(url: str, mode: str, concurrency: int, seconds: float) -> Run:
    run = Run(mode, concurrency)
    rng = np.random.default_rng(0)
    data = rng.standard_normal(SHAPE, dtype=np.float32)
    ready = threading.Barrier(concurrency + 1)
    go = threading.Event()
    stop_at = [0.0]
    lock = threading.Lock()
    failures: list[BaseException] = []

    def loop(i: int) -> None:
        worker: Worker | RawWorker | None = None
        try:
            worker = (RawWorker if mode == "http-raw" else Worker)(url, mode, i, data)
            out = worker.one()  # warm-up, and the answer checked once
            if not np.array_equal(out, data):
                raise AssertionError(f"{mode}: the output differs from the input")
        except BaseException as exc:
            failures.append(exc)
        ready.wait()
        go.wait()
        mine: list[float] = []
        errors = 0
        if worker is not None and not failures:
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at[0]:
                    break
                try:
                    worker.one()
                    mine.append(time.perf_counter() - t0)
                except Exception:
                    errors += 1
        if worker is not None:
            worker.close()
        with lock:
            run.latencies_s += mine
            run.errors += errors

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    ready.wait()
    if failures:
        stop_at[0] = 0.0
        go.set()
        for t in threads:
            t.join()
        raise RuntimeError(f"{mode}: setup failed: {failures[0]!r}") from failures[0]
    start = time.perf_counter()
    stop_at[0] = start + seconds
    go.set()
    for t in threads:
        t.join()
    run.seconds = time.perf_counter() - start
    return run


def render(results: dict[int, dict[str, Run]]) -> str:
    lines = [
        "| concurrency | mode | req/s | p50 ms | p99 ms | requests | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    ratios = []
    for conc, by_mode in results.items():
        for mode in MODES:
            r = by_mode[mode]
            lines.append(
                f"| {conc} | {mode} | {r.req_per_s:.1f} | {r.percentile_ms(50):.2f} | "
                f"{r.percentile_ms(99):.2f} | {len(r.latencies_s)} | {r.errors} |"
            )
        fast = by_mode["shm"]
        for other in ("http-binary", "http-raw"):
            base = by_mode[other]
            if base.req_per_s and fast.req_per_s:
                ratios.append(
                    f"- concurrency {conc}: shm / {other} = "
                    f"{fast.req_per_s / base.req_per_s:.2f}x req/s, p50 "
                    f"{base.percentile_ms(50) / fast.percentile_ms(50):.2f}x lower"
                )
    return "\n".join([*lines, "", *ratios])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs per mode")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--output", type=Path, default=RAW / "shm.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mport-shm-bench-") as tmp:
        root = Path(tmp)
        repo = build_repository(root / "repo")
        server, http_port, _ = servers.modelport_server(
            PYTHON, repo, root / "server.log", root, extra=["--data-dir", str(root / "state")]
        )
        server.start()
        url = f"127.0.0.1:{http_port}"
        results: dict[int, dict[str, Run]] = {}
        try:
            for conc in args.concurrency:
                pooled = {m: Run(m, conc) for m in MODES}
                for _ in range(args.rounds):
                    for mode in MODES:
                        pooled[mode].pooled(measure(url, mode, conc, args.duration))
                results[conc] = pooled
                print(
                    f"concurrency {conc}: "
                    + ", ".join(f"{m} {pooled[m].req_per_s:.1f} req/s" for m in MODES),
                    flush=True,
                )
            alive = server.alive()
        finally:
            server.stop()
    table = render(results)
    print(f"\n## System shared memory vs binary HTTP ({NBYTES >> 20} MiB FP32 identity)\n")
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "tensor_bytes": NBYTES,
                "duration_s": args.duration,
                "rounds": args.rounds,
                "runs": [r.as_dict() for by in results.values() for r in by.values()],
            },
            indent=2,
        )
    )
    errors = sum(r.errors for by in results.values() for r in by.values())
    if not alive:
        print("the server died during the runs", file=sys.stderr)
    return 0 if alive and errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
