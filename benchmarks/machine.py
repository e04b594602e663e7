"""What the report says about where it ran: the machine, the libraries, the source measured."""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import loadgen

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = sys.executable
LIBRARIES = (
    "modelport",
    "onnxruntime",
    "onnx",
    "numpy",
    "uvicorn",
    "uvloop",
    "httptools",
    "starlette",
    "msgspec",
    "grpcio",
    "protobuf",
    "tritonclient",
    "scikit-learn",
    "skl2onnx",
)


def read_text(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def command_output(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    return (out.stdout or out.stderr).strip() or "unavailable"


def describe_machine(pa: loadgen.PerfAnalyzer | None, pa_venv: Path) -> dict[str, str]:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in read_text("/proc/cpuinfo").splitlines()
            if ln.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    mem_kib = next(
        (
            int(ln.split()[1])
            for ln in read_text("/proc/meminfo").splitlines()
            if ln.startswith("MemTotal")
        ),
        0,
    )
    versions = []
    for lib in LIBRARIES:
        try:
            versions.append(f"{lib} {metadata.version(lib)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{lib} (not installed)")
    commit = command_output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = command_output(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"])
    changed = 0 if dirty in ("", "unavailable") else len(dirty.splitlines())
    pa_client = "not used"
    if pa is not None:
        pa_py = pa_venv / "bin" / "python"
        tc = command_output(
            [str(pa_py), "-c", "import importlib.metadata as m;print(m.version('tritonclient'))"]
        )
        pa_client = f"{pa.version} (tritonclient {tc} wheel)"
    return {
        "nproc": command_output(["nproc"]),
        "cpu": cpu,
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "os": f"{platform.system()} {platform.release()} ({_os_name()})",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "libraries": ", ".join(versions),
        "wrk": loadgen.wrk_version(),
        "perf_analyzer": pa_client,
        "modelport commit": f"{commit}"
        + (f" + uncommitted changes in {changed} file(s) under src/" if changed else ""),
    }


def _os_name() -> str:
    for line in read_text("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return "unknown"


def exact_command(argv: list[str]) -> str:
    """How this run was started: ``make bench BENCH_ARGS=...`` under make, else run.py's argv."""
    direct = shlex.join([os.path.relpath(PYTHON, ROOT), "benchmarks/run.py", *argv])
    if os.environ.get("MAKELEVEL"):
        return f"make bench BENCH_ARGS={shlex.quote(shlex.join(argv))}   (runs: {direct})"
    return direct


def source_fingerprint(root: Path = ROOT) -> str:
    """A short hash of ``root``'s src/modelport as it is now (it may change during a run)."""
    digest = hashlib.sha256()
    for path in sorted((root / "src" / "modelport").rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        try:
            digest.update(path.read_bytes())
        except OSError:
            continue
    return digest.hexdigest()[:12]
