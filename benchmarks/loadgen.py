"""Load generators: wrk (REST), perf_analyzer (gRPC and REST), grpc_load.py (gRPC fallback).

Every run is closed-loop (``concurrency`` requests in flight, each sent as
soon as the previous one on its connection is answered) and bounded in time:
the tool's own duration, plus a subprocess timeout on top.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import models
import servers
from payloads import Body, ModelBodies

HERE = Path(__file__).resolve().parent
WRK_SCRIPT = HERE / "wrk" / "post.lua"
GRPC_LOAD = HERE / "grpc_load.py"
PA_REQUIREMENTS = ["tritonclient[all]==2.41.0", "nvidia-cuda-runtime-cu12"]
WRK_INSTALL_HINT = "wrk is not installed: apt-get update && apt-get install -y wrk"


@dataclass
class LoadResult:
    """One bounded load run against one target."""

    target: str
    """What was loaded: modelport, floor, modelport(no batching), ..."""
    model: str
    transport: str
    concurrency: int
    tool: str
    batch: int
    duration_s: float = 0.0
    requests: int = 0
    req_per_s: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    errors: int = 0
    """Failed requests: non-2xx answers plus socket errors and timeouts."""
    statuses: dict[str, int] = field(default_factory=dict)
    socket_errors: dict[str, int] = field(default_factory=dict)
    note: str = ""
    other_cpu: float | None = None
    """Share of the machine's CPU that unrelated processes used during the run."""
    server_cpu_s: float | None = None
    """CPU seconds (user + system, all threads) the server's process tree used during the run."""

    @property
    def samples_per_s(self) -> float:
        return self.req_per_s * self.batch

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["samples_per_s"] = self.samples_per_s
        return out


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# --------------------------------------------------------------------- wrk


def wrk_path() -> str | None:
    return shutil.which("wrk")


def wrk_version() -> str:
    path = wrk_path()
    if path is None:
        return "missing"
    out = subprocess.run([path, "-v"], capture_output=True, text=True, timeout=10, check=False)
    first = (out.stdout + out.stderr).strip().splitlines()
    return first[0] if first else "unknown"


def run_wrk(
    url: str,
    body: Body,
    *,
    concurrency: int,
    duration: int,
    threads: int,
    timeout_s: int,
    result: LoadResult,
    raw_out: Path | None = None,
) -> LoadResult:
    """Run wrk with post.lua; fills ``result`` from its ``WRK_JSON`` line."""
    path = wrk_path()
    if path is None:
        raise RuntimeError(WRK_INSTALL_HINT)
    threads = max(1, min(threads, concurrency))
    argv = [
        path,
        f"-t{threads}",
        f"-c{concurrency}",
        f"-d{duration}s",
        f"--timeout={timeout_s}s",
        "--latency",
        "-s",
        str(WRK_SCRIPT),
        url,
        "--",
        str(body.path),
        body.content_type,
    ]
    if body.header_length is not None:
        argv.append(str(body.header_length))
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration + timeout_s + 30, check=False
        )
    except subprocess.TimeoutExpired:
        result.note = "wrk did not finish in time (killed)"
        result.errors = -1
        return result
    if raw_out is not None:
        raw_out.write_text(proc.stdout + proc.stderr)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if proc.returncode != 0 or line is None:
        result.note = f"wrk failed (rc {proc.returncode}): {_tail(proc.stdout + proc.stderr, 5)}"
        result.errors = -1
        return result
    data = json.loads(line[len("WRK_JSON ") :])
    lat = data["latency_us"]
    errs = {k: int(v) for k, v in data["errors"].items()}
    statuses = {str(k): int(v) for k, v in data["statuses"].items()}
    ok = sum(v for k, v in statuses.items() if k.startswith("2"))
    # wrk counts a request only once answered; socket errors are on top.
    non_2xx = sum(v for k, v in statuses.items() if not k.startswith("2"))
    socket_errs = errs["connect"] + errs["read"] + errs["write"] + errs["timeout"]
    result.duration_s = data["duration_us"] / 1e6
    result.requests = int(data["requests"])
    result.req_per_s = ok / result.duration_s if result.duration_s else 0.0
    result.p50_ms = lat["p50"] / 1000
    result.p99_ms = lat["p99"] / 1000
    result.max_ms = lat["max"] / 1000
    result.statuses = statuses
    result.socket_errors = {k: v for k, v in errs.items() if k != "status" and v}
    result.errors = non_2xx + socket_errs
    return result


# ------------------------------------------------------------ perf_analyzer


@dataclass(frozen=True)
class PerfAnalyzer:
    binary: Path
    env: dict[str, str]
    version: str


def ensure_perf_analyzer(venv: Path, log: Path) -> tuple[PerfAnalyzer | None, str]:
    """Create ``venv`` with tritonclient 2.41.0's perf_analyzer if needed and check it runs.

    Returns the tool, or None and why not. Newer perf_analyzer wheels need
    glibc 2.38; the binary in tritonclient 2.41.0's wheel runs on Debian 12
    once Debian's ``libb64-0d`` and PyPI's ``nvidia-cuda-runtime-cu12``
    (libcudart, loaded even for CPU-only servers) are installed.
    """
    python = venv / "bin" / "python"
    with log.open("a") as out:
        if not python.exists():
            print(f"creating {venv} for perf_analyzer (one time) ...", flush=True)
            made = subprocess.run(
                [sys.executable, "-m", "venv", str(venv)],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=300,
                check=False,
            )
            if made.returncode != 0:
                return None, f"could not create {venv} (see {log})"
        have = subprocess.run(
            [str(python), "-c", "import tritonclient, nvidia.cuda_runtime"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if have.returncode != 0:
            print(f"installing {' '.join(PA_REQUIREMENTS)} into {venv} ...", flush=True)
            inst = subprocess.run(
                [str(python), "-m", "pip", "install", "--quiet", *PA_REQUIREMENTS],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=900,
                check=False,
            )
            if inst.returncode != 0:
                return None, f"pip install {' '.join(PA_REQUIREMENTS)} failed (see {log})"
    candidates = [venv / "bin" / "perf_analyzer"] + [
        Path(p) for p in glob.glob(str(venv / "lib" / "python*" / "site-packages" / "tritonclient"
                                       / "bin" / "perf_analyzer"))
    ]  # fmt: skip
    binary = next((c for c in candidates if c.exists()), None)
    if binary is None:
        return None, f"no perf_analyzer binary in {venv}"
    libdirs = glob.glob(
        str(venv / "lib" / "python*" / "site-packages" / "nvidia" / "cuda_runtime" / "lib")
    )
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join([*libdirs, env.get("LD_LIBRARY_PATH", "")]).strip(":")
    try:
        check = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, env=env, timeout=30,
            check=False,
        )  # fmt: skip
    except OSError as exc:
        return None, f"{binary} does not run: {exc}"
    text = (check.stdout + check.stderr).strip()
    if check.returncode != 0 or "Perf Analyzer" not in text:
        hint = " (apt-get install -y libb64-0d)" if "libb64" in text else ""
        return None, f"{binary} does not run{hint}: {_tail(text, 3)}"
    return PerfAnalyzer(binary, env, text.splitlines()[0]), ""


def pa_interval_ms(duration: int) -> int:
    """perf_analyzer measures three windows; 0.6 x duration each (3000 ms for 5 s)."""
    return max(1000, int(duration * 600))


def run_perf_analyzer(
    pa: PerfAnalyzer,
    *,
    model: str,
    url: str,
    protocol: str,
    concurrency: int,
    batch: int,
    duration: int,
    input_data: Path,
    csv_out: Path,
    result: LoadResult,
) -> LoadResult:
    """One perf_analyzer run at one concurrency; fills ``result`` from its CSV."""
    interval = pa_interval_ms(duration)
    argv = [
        str(pa.binary),
        "-m", model,
        "-u", url,
        "-i", protocol,
        "-b", str(batch),
        "--concurrency-range", str(concurrency),
        "--measurement-interval", str(interval),
        # Stop after the first three windows whatever they are: the run is
        # bounded in time and every target is treated alike.
        "--stability-percentage", "999",
        "--max-trials", "3",
        "--input-data", str(input_data),
        "-f", str(csv_out),
    ]  # fmt: skip
    if csv_out.exists():
        csv_out.unlink()
    limit = 3 * interval / 1000 * 3 + 60
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, env=pa.env, timeout=limit, check=False
        )
    except subprocess.TimeoutExpired:
        result.note = "perf_analyzer did not finish in time (killed)"
        result.errors = -1
        return result
    csv_out.with_suffix(".log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not csv_out.exists():
        result.note = (
            f"perf_analyzer failed (rc {proc.returncode}): {_tail(proc.stdout + proc.stderr, 6)}"
        )
        result.errors = -1
        return result
    with csv_out.open() as f:
        row = next(csv.DictReader(f))
    infer_per_s = float(row["Inferences/Second"])
    result.req_per_s = infer_per_s / batch
    result.p50_ms = float(row["p50 latency"]) / 1000
    result.p99_ms = float(row["p99 latency"]) / 1000
    counts = re.findall(r"Request count: (\d+)", proc.stdout)
    result.requests = int(counts[-1]) if counts else 0
    result.duration_s = 3 * interval / 1000
    result.errors = 0  # perf_analyzer stops with an error on any failed request
    return result


# ---------------------------------------------------------------- grpc_load


def run_grpc_load(
    *,
    python: str,
    model: str,
    input_name: str,
    url: str,
    shape: tuple[int, ...],
    raw: Path,
    concurrency: int,
    duration: int,
    result: LoadResult,
) -> LoadResult:
    """The Python fallback: benchmarks/grpc_load.py in its own process."""
    argv = [
        python, str(GRPC_LOAD),
        "--url", url, "--model", model, "--input", input_name,
        "--shape", ",".join(str(d) for d in shape), "--data", str(raw),
        "--concurrency", str(concurrency), "--duration", str(duration),
    ]  # fmt: skip
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration + 90, check=False
        )
    except subprocess.TimeoutExpired:
        result.note = "grpc_load did not finish in time (killed)"
        result.errors = -1
        return result
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("GRPC_JSON ")), None)
    if proc.returncode != 0 or line is None:
        result.note = f"grpc_load failed (rc {proc.returncode}): {_tail(proc.stderr, 5)}"
        result.errors = -1
        return result
    data = json.loads(line[len("GRPC_JSON ") :])
    result.duration_s = data["duration_s"]
    result.requests = data["requests"]
    result.req_per_s = data["throughput"]
    result.p50_ms = data["p50_us"] / 1000
    result.p99_ms = data["p99_us"] / 1000
    result.max_ms = data["max_us"] / 1000
    result.statuses = {k: int(v) for k, v in data["errors"].items()}
    result.errors = sum(result.statuses.values())
    return result


# ------------------------------------------------------ one load, any transport


@dataclass(frozen=True)
class LoadSettings:
    """What every load run of one benchmark shares."""

    batch: int
    """Samples per request."""
    wrk_threads: int
    raw_dir: Path
    """Where wrk outputs and perf_analyzer CSVs and logs are kept."""
    pa: PerfAnalyzer | None
    """perf_analyzer for gRPC, or None for grpc_load.py."""
    python: str = sys.executable
    """The interpreter that runs grpc_load.py."""

    @property
    def grpc_tool(self) -> str:
        return "perf_analyzer" if self.pa is not None else "grpc_load.py"


def url_for(port: int, model: str) -> str:
    return f"http://127.0.0.1:{port}/v2/models/{model}/infer"


def http_body(bodies: ModelBodies, transport: str) -> Body:
    return bodies.json if transport == "http-json" else bodies.binary


def load(
    settings: LoadSettings,
    *,
    target: str,
    model: str,
    served_name: str,
    transport: str,
    conc: int,
    http_port: int,
    grpc_port: int,
    bodies: ModelBodies,
    duration: int,
    tag: str,
    server_pid: int,
) -> LoadResult:
    """One bounded run of ``transport`` at ``conc`` against a server, with its CPU accounted.

    wrk for ``http-*``; for ``grpc`` perf_analyzer, else grpc_load.py. The
    result carries the server's CPU time over the run and the share of the
    machine other processes took meanwhile.
    """
    meter = servers.CpuMeter(server_pid)
    if transport.startswith("http"):
        r = LoadResult(target, model, transport, conc, "wrk", settings.batch)
        r = run_wrk(
            url_for(http_port, served_name),
            http_body(bodies, transport),
            concurrency=conc,
            duration=duration,
            threads=settings.wrk_threads,
            timeout_s=10,
            result=r,
            raw_out=settings.raw_dir / f"{tag}-{transport}-c{conc}.txt",
        )
    elif settings.pa is not None:
        r = LoadResult(target, model, transport, conc, "perf_analyzer", settings.batch)
        r = run_perf_analyzer(
            settings.pa,
            model=served_name,
            url=f"127.0.0.1:{grpc_port}",
            protocol="grpc",
            concurrency=conc,
            batch=settings.batch,
            duration=duration,
            input_data=bodies.pa_input_data,
            csv_out=settings.raw_dir / f"{tag}-grpc-c{conc}.csv",
            result=r,
        )
    else:
        r = LoadResult(target, model, transport, conc, "grpc_load.py", settings.batch)
        r = run_grpc_load(
            python=settings.python,
            model=served_name,
            input_name=models.SPECS[model].input_name,
            url=f"127.0.0.1:{grpc_port}",
            shape=bodies.shape,
            raw=bodies.raw,
            concurrency=conc,
            duration=duration,
            result=r,
        )
    r.server_cpu_s = meter.server_cpu_s()
    r.other_cpu = meter.other_share()
    return r


def warm_up(settings: LoadSettings, http_port: int, served: str, body: Body) -> None:
    """One second of wrk at concurrency 8, results thrown away."""
    r = LoadResult("warmup", served, "http", 8, "wrk", settings.batch)
    run_wrk(
        url_for(http_port, served),
        body,
        concurrency=8,
        duration=1,
        threads=1,
        timeout_s=10,
        result=r,
    )
