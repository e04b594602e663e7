"""A GIL-bound python model served with thread instances and with process instances.

The model does per-row pure-Python float arithmetic (about 1 ms a request),
which holds the GIL: two thread instances take turns, two process instances
(``modelport: {instance_process: true}``) compute side by side. Each
configuration gets its own server, a warm-up, then a closed loop of HTTP
requests at a fixed concurrency; the script prints req/s and p50/p99 latency
per configuration, as a markdown table.

    .venv/bin/python benchmarks/gil_bound.py                 # 10 s each, concurrency 8
    .venv/bin/python benchmarks/gil_bound.py --duration 3    # a quick look

The load comes from wrk (benchmarks/wrk/post.lua) when it is on PATH, else
from an httpx client in this process. Either way the load generator shares
the machine's cores with the server, so on a small machine it takes part of
the CPU that process instances would otherwise use: the table shows its
share (``client CPU``) and that of unrelated processes (``other CPU``), both
as a share of all cores. A second table drives the same scheduler from this
process for 5 s per setup, without HTTP or a client: what the instances
themselves give.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import textwrap
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import yaml
from loadgen import LoadResult, run_wrk, wrk_path
from servers import (
    CpuMeter,
    http_post,
    modelport_server,
    own_cpu_s,
    system_busy_s,
    tree_cpu_s,
)

from modelport.config.model import parse_model_config
from modelport.controlplane.lifecycle import load_version
from modelport.dataplane.table import ModelVersion

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: Per-row work, shared by the model and the calibration below so both time the same code.
ROW_WORK = """
def row_work(row, iterations):
    acc = 0.0
    n = len(row)
    for k in range(iterations):
        acc = acc * 0.999 + row[k % n] * 1.0001
    return acc
"""

MODEL = """
import numpy as np

{row_work}

ITERATIONS = {iterations}


class Model:
    def predict(self, inputs):
        x = inputs["x"]
        y = np.array([[row_work(row, ITERATIONS)] for row in x.tolist()], dtype=np.float32)
        return {{"y": y}}
"""

CONFIG = """
backend: python
max_batch_size: 8
input:
- {{name: x, data_type: TYPE_FP32, dims: [16]}}
output:
- {{name: y, data_type: TYPE_FP32, dims: [1]}}
instance_group: [{{count: {count}, kind: KIND_CPU}}]
modelport: {{batching: {batching}, instance_process: {process}}}
"""

BODY = json.dumps(
    {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]}
).encode()


@dataclass(frozen=True)
class Setup:
    label: str
    count: int
    process: bool


SETUPS = (
    Setup("2 thread instances", 2, False),
    Setup("1 process instance", 1, True),
    Setup("2 process instances", 2, True),
)


def calibrate(target_ms: float) -> tuple[int, float]:
    """Iterations for ``target_ms`` of work per row here, and the time one row then takes."""
    namespace: dict[str, object] = {}
    exec(ROW_WORK, namespace)  # our own constant source
    row_work = namespace["row_work"]
    assert callable(row_work)
    row = [0.5] * 16
    probe = 20_000
    best = min(_time(row_work, row, probe) for _ in range(5))
    iterations = max(1, int(probe * target_ms / (best * 1000)))
    per_row_ms = min(_time(row_work, row, iterations) for _ in range(5)) * 1000
    return iterations, per_row_ms


def _time(fn: object, row: list[float], iterations: int) -> float:
    assert callable(fn)
    t0 = time.perf_counter()
    fn(row, iterations)
    return time.perf_counter() - t0


def build_repository(root: Path, setup: Setup, iterations: int, batching: bool = False) -> Path:
    repo = root / setup.label.replace(" ", "_")
    version = repo / "gil" / "1"
    version.mkdir(parents=True)
    source = MODEL.format(row_work=textwrap.dedent(ROW_WORK), iterations=iterations)
    (version / "model.py").write_text(source)
    config = CONFIG.format(
        count=setup.count, process=str(setup.process).lower(), batching=str(batching).lower()
    )
    (repo / "gil" / "config.yaml").write_text(config)
    return repo


async def _drive(url: str, concurrency: int, duration: float) -> tuple[list[float], Counter[int]]:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    headers = {"content-type": "application/json"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        stop_at = time.perf_counter() + duration

        async def one_connection() -> None:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                try:
                    response = await client.post(url, content=BODY, headers=headers)
                    statuses[response.status_code] += 1
                except httpx.HTTPError:
                    statuses[0] += 1
                    continue
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(one_connection() for _ in range(concurrency)))
    return latencies, statuses


def run_httpx(url: str, concurrency: int, duration: float, result: LoadResult) -> LoadResult:
    t0 = time.perf_counter()
    latencies, statuses = asyncio.run(_drive(url, concurrency, duration))
    result.duration_s = time.perf_counter() - t0
    ok = sum(n for s, n in statuses.items() if 200 <= s < 300)
    result.requests = sum(statuses.values())
    result.req_per_s = ok / result.duration_s
    result.errors = result.requests - ok
    result.statuses = {str(s): n for s, n in statuses.items()}
    if len(latencies) >= 2:
        cuts = statistics.quantiles(latencies, n=100)
        result.p50_ms = statistics.median(latencies) * 1000
        result.p99_ms = cuts[98] * 1000
        result.max_ms = max(latencies) * 1000
    return result


def measure(
    setup: Setup, repo: Path, work: Path, concurrency: int, duration: int
) -> tuple[LoadResult, float, float]:
    log = work / f"{repo.name}.log"
    server, http_port, _ = modelport_server(sys.executable, repo, log, ROOT)
    server.start()
    url = f"http://127.0.0.1:{http_port}/v2/models/gil/infer"
    try:
        headers = {"content-type": "application/json"}
        for _ in range(50):  # warm-up: every instance has run a few batches
            status = http_post(url, BODY, headers)
            if status != 200:
                raise RuntimeError(
                    f"{setup.label}: warm-up answered {status}:\n{server.log_tail()}"
                )
        tool = "wrk" if wrk_path() else "httpx"
        result = LoadResult(setup.label, "gil", "http-json", concurrency, tool, batch=1)
        meter = CpuMeter(server.pid)
        client0, wall0 = own_cpu_s(), time.monotonic()
        if tool == "wrk":
            from payloads import JSON_TYPE, Body

            body_path = work / "body.json"
            body_path.write_bytes(BODY)
            run_wrk(
                url,
                Body(body_path, JSON_TYPE),
                concurrency=concurrency,
                duration=duration,
                threads=1,
                timeout_s=10,
                result=result,
            )
        else:
            run_httpx(url, concurrency, duration, result)
        result.other_cpu = meter.other_share()
        client = (own_cpu_s() - client0) / ((time.monotonic() - wall0) * (os.cpu_count() or 1))
    finally:
        code = server.stop()
    return result, client, float(code or 0)


async def _submit_loop(version: ModelVersion, concurrency: int, duration: float) -> float:
    x = np.full((1, 16), 0.5, dtype=np.float32)
    done = 0
    stop_at = time.perf_counter() + duration

    async def one_caller() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await version.scheduler.submit({"x": x}, ["y"], 1)
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one_caller() for _ in range(concurrency)))
    return done / (time.perf_counter() - t0)


def measure_without_http(
    setup: Setup, repo: Path, concurrency: int, duration: float
) -> tuple[float, float]:
    """req/s through the same load path and scheduler, called in this process: no HTTP, no client.

    What the instances themselves give, apart from the server's HTTP work
    and the load generator, which share the same cores in the HTTP figures.
    """
    model = repo / "gil"
    raw = yaml.safe_load((model / "config.yaml").read_text())
    config = parse_model_config({**raw, "name": "gil"}, str(model / "config.yaml"))
    version = load_version("gil", 1, model / "1", config, str(model / "config.yaml"))
    try:
        busy0, mine0, wall0 = system_busy_s(), tree_cpu_s(os.getpid()), time.monotonic()
        rate = asyncio.run(_submit_loop(version, concurrency, duration))
        # This process and its live children (the workers) are ours; the rest is not.
        mine = tree_cpu_s(os.getpid()) - mine0
        wall = (time.monotonic() - wall0) * (os.cpu_count() or 1)
        other = max(0.0, system_busy_s() - busy0 - mine) / wall
        return rate, other
    finally:
        version.scheduler.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per setup")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--row-ms", type=float, default=1.0, help="work per row (one request)")
    parser.add_argument(
        "--batching",
        action="store_true",
        help="let queued requests share a batch (one process round trip for several rows)",
    )
    args = parser.parse_args()

    iterations, per_row_ms = calibrate(args.row_ms)
    print(
        f"per-row work: {iterations} iterations, {per_row_ms:.2f} ms here; "
        f"{os.cpu_count()} cores; load: {'wrk' if wrk_path() else 'httpx'}, "
        f"concurrency {args.concurrency}, {args.duration} s per setup, "
        f"batching {'on' if args.batching else 'off'}",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="gil_bound_") as tmp:
        work = Path(tmp)
        for setup in SETUPS:
            repo = build_repository(work, setup, iterations, args.batching)
            result, client, code = measure(setup, repo, work, args.concurrency, args.duration)
            rows.append((result, client))
            print(
                f"{setup.label}: {result.req_per_s:,.0f} req/s, p50 {result.p50_ms or 0:.2f} ms, "
                f"p99 {result.p99_ms or 0:.2f} ms, errors {result.errors}, "
                f"client CPU {100 * client:.0f}%, other CPU {100 * (result.other_cpu or 0):.0f}%, "
                f"exit code {code:.0f}",
                flush=True,
            )
        direct = [
            measure_without_http(setup, work / setup.label.replace(" ", "_"), args.concurrency, 5)
            for setup in SETUPS
        ]
    base = rows[0][0].req_per_s or 1.0
    print()
    print("| setup | req/s | vs 2 threads | p50 ms | p99 ms | errors | client CPU | other CPU |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for r, client in rows:
        print(
            f"| {r.target} | {r.req_per_s:,.0f} | {r.req_per_s / base:.2f} | "
            f"{r.p50_ms or 0:.2f} | {r.p99_ms or 0:.2f} | {r.errors} | "
            f"{100 * client:.0f}% | {100 * (r.other_cpu or 0):.0f}% |"
        )
    print()
    print(f"Without HTTP (scheduler.submit in this process, concurrency {args.concurrency}, 5 s):")
    print()
    print("| setup | req/s | vs 2 threads | other CPU |")
    print("|---|--:|--:|--:|")
    for setup, (rate, other) in zip(SETUPS, direct, strict=True):
        print(
            f"| {setup.label} | {rate:,.0f} | {rate / (direct[0][0] or 1.0):.2f} | "
            f"{100 * other:.0f}% |"
        )


if __name__ == "__main__":
    main()
