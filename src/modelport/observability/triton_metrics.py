"""Triton's metric names (``nv_*``) on /metrics, so dashboards built for Triton work.

Nothing here runs per request. The per-model series are read at scrape time
from the numbers each loaded version keeps for Triton's statistics extension
(``statistics.py``), so a scrape shows exactly what ``/v2/models/stats``
would, under Triton's metric names, labels (``model``, ``version``; ``reason``
on failures) and units (cumulative microseconds). The CPU series are read
from ``/proc`` at scrape time.

Triton's exposition keeps the counter names as they are (no ``_total``
suffix, which prometheus_client would add to every counter), so these lines
are written here rather than through a ``CollectorRegistry``. A version's
series start at zero when it loads and disappear when it unloads, as
Triton's do.

Counts and durations, as Triton defines them:

- ``nv_inference_request_success``: requests answered, cache hits included;
  ``nv_inference_request_failure``: requests that reached the version and
  failed, by reason (REJECTED, CANCELED, BACKEND, OTHER).
- ``nv_inference_count``: samples computed (a batch of n counts n), cache
  hits excluded; ``nv_inference_exec_count``: executions (runtime calls).
- ``nv_inference_pending_request_count``: requests waiting in the version's
  queue now (a gauge).
- ``nv_inference_request_duration_us``, ``nv_inference_queue_duration_us``
  (cache hits included), ``nv_inference_compute_{input,infer,output}_duration_us``
  (cache hits excluded).
- ``nv_cache_num_hits_per_model``, ``nv_cache_num_misses_per_model`` and
  their durations, for versions with a response cache.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from modelport.observability.metrics import Visible
from modelport.observability.statistics import FAILURE_REASONS, ModelStatistics


@dataclass(frozen=True, slots=True)
class LoadedVersion:
    """What a scrape reads of one loaded version."""

    name: str
    version: str
    stats: ModelStatistics
    pending: int = 0
    """Requests waiting in the version's queue now."""
    cached: bool = False
    """Whether the version caches responses (its cache series are shown)."""


#: The loaded versions, asked at each scrape.
VersionSource = Callable[[], Iterable[LoadedVersion]]

_Value = Callable[[LoadedVersion], int]


def _us(ns: int) -> int:
    return ns // 1000


#: (name, type, help, value) of every per-version series but the failures.
_PER_VERSION: tuple[tuple[str, str, str, _Value], ...] = (
    (
        "nv_inference_request_success",
        "counter",
        "Number of successful inference requests, all batch sizes",
        lambda v: v.stats.success.count,
    ),
    (
        "nv_inference_count",
        "counter",
        "Number of inferences performed (does not include cached requests)",
        lambda v: v.stats.inference_count,
    ),
    (
        "nv_inference_exec_count",
        "counter",
        "Number of model executions performed (does not include cached requests)",
        lambda v: v.stats.execution_count,
    ),
    (
        "nv_inference_pending_request_count",
        "gauge",
        "Instantaneous number of pending requests awaiting execution per-model.",
        lambda v: v.pending,
    ),
    (
        "nv_inference_request_duration_us",
        "counter",
        "Cumulative inference request duration in microseconds (includes cached requests)",
        lambda v: _us(v.stats.success.ns),
    ),
    (
        "nv_inference_queue_duration_us",
        "counter",
        "Cumulative inference queuing duration in microseconds (includes cached requests)",
        lambda v: _us(v.stats.queue.ns),
    ),
    (
        "nv_inference_compute_input_duration_us",
        "counter",
        "Cumulative compute input duration in microseconds (does not include cached requests)",
        lambda v: _us(v.stats.compute_input.ns),
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "counter",
        "Cumulative compute inference duration in microseconds (does not include cached requests)",
        lambda v: _us(v.stats.compute_infer.ns),
    ),
    (
        "nv_inference_compute_output_duration_us",
        "counter",
        "Cumulative inference compute output duration in microseconds "
        "(does not include cached requests)",
        lambda v: _us(v.stats.compute_output.ns),
    ),
)

_CACHE: tuple[tuple[str, str, str, _Value], ...] = (
    (
        "nv_cache_num_hits_per_model",
        "counter",
        "Number of cache hits per model",
        lambda v: v.stats.cache_hit.count,
    ),
    (
        "nv_cache_num_misses_per_model",
        "counter",
        "Number of cache misses per model",
        lambda v: v.stats.cache_miss.count,
    ),
    (
        "nv_cache_hit_duration_per_model",
        "counter",
        "Total cache hit duration per model, in microseconds",
        lambda v: _us(v.stats.cache_hit.ns),
    ),
    (
        "nv_cache_miss_duration_per_model",
        "counter",
        "Total cache miss (insert) duration per model, in microseconds",
        lambda v: _us(v.stats.cache_miss.ns),
    ),
)


def _label(value: str) -> str:
    """A label value as the text exposition quotes it."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _header(lines: list[str], name: str, kind: str, help_text: str) -> None:
    lines.append(f"# HELP {name} {help_text}\n")
    lines.append(f"# TYPE {name} {kind}\n")


class HostStats:
    """The machine's CPU utilization and memory, read from ``/proc`` (Linux).

    Utilization is over the time since the previous reading (Triton's "since
    last interval", the interval being the scrape's), since boot for the
    first; busy time is everything but idle and iowait.
    """

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self._stat = proc / "stat"
        self._meminfo = proc / "meminfo"
        self._last: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def cpu_utilization(self) -> float | None:
        """A fraction in [0, 1]; None where ``/proc/stat`` cannot be read."""
        try:
            with self._stat.open() as f:
                fields = f.readline().split()
        except OSError:
            return None
        if not fields or fields[0] != "cpu":
            return None
        # user nice system idle iowait irq softirq steal (guest time is inside user).
        ticks = [int(t) for t in fields[1:9]]
        total = sum(ticks)
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
        with self._lock:
            last_total, last_idle = self._last if self._last is not None else (0, 0)
            self._last = (total, idle)
        spent = total - last_total
        if spent <= 0:
            return 0.0
        return min(1.0, max(0.0, (spent - (idle - last_idle)) / spent))

    def memory(self) -> tuple[int, int] | None:
        """(total, used) bytes of RAM, used being total less what is available."""
        try:
            text = self._meminfo.read_text()
        except OSError:
            return None
        kib: dict[str, int] = {}
        for line in text.splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                kib[key] = int(parts[0])
        if "MemTotal" not in kib or "MemAvailable" not in kib:
            return None
        total = kib["MemTotal"] * 1024
        return total, total - kib["MemAvailable"] * 1024


class TritonMetrics:
    """Renders Triton's metric names from the loaded versions and the host."""

    def __init__(self, versions: VersionSource, host: HostStats | None = None) -> None:
        self.versions = versions
        self.host = host if host is not None else HostStats()

    def render(self, visible: Visible = None) -> bytes:
        """The ``nv_*`` exposition; only the models ``visible`` allows (None: all)."""
        shown = sorted(
            (v for v in self.versions() if visible is None or visible(v.name)),
            key=lambda v: (v.name, v.version),
        )
        lines: list[str] = []
        labels = [f'model="{_label(v.name)}",version="{_label(v.version)}"' for v in shown]
        for name, kind, help_text, value in _PER_VERSION:
            self._family(lines, name, kind, help_text, value, shown, labels)
        _header(
            lines,
            "nv_inference_request_failure",
            "counter",
            "Number of failed inference requests, all batch sizes",
        )
        for v, label in zip(shown, labels, strict=True):
            failures = v.stats.failures
            for reason in FAILURE_REASONS:
                lines.append(
                    f'nv_inference_request_failure{{{label},reason="{reason}"}} '
                    f"{failures.get(reason, 0)}\n"
                )
        cached = [i for i, v in enumerate(shown) if v.cached]
        for name, kind, help_text, value in _CACHE:
            self._family(
                lines,
                name,
                kind,
                help_text,
                value,
                [shown[i] for i in cached],
                [labels[i] for i in cached],
            )
        self._host(lines)
        return "".join(lines).encode()

    @staticmethod
    def _family(
        lines: list[str],
        name: str,
        kind: str,
        help_text: str,
        value: _Value,
        versions: list[LoadedVersion],
        labels: list[str],
    ) -> None:
        _header(lines, name, kind, help_text)
        for v, label in zip(versions, labels, strict=True):
            lines.append(f"{name}{{{label}}} {value(v)}\n")

    def _host(self, lines: list[str]) -> None:
        utilization = self.host.cpu_utilization()
        if utilization is not None:
            _header(lines, "nv_cpu_utilization", "gauge", "CPU utilization rate [0.0 - 1.0]")
            lines.append(f"nv_cpu_utilization {utilization:.6f}\n")
        memory = self.host.memory()
        if memory is not None:
            total, used = memory
            _header(lines, "nv_cpu_memory_total_bytes", "gauge", "CPU total memory (RAM), in bytes")
            lines.append(f"nv_cpu_memory_total_bytes {total}\n")
            _header(lines, "nv_cpu_memory_used_bytes", "gauge", "CPU used memory (RAM), in bytes")
            lines.append(f"nv_cpu_memory_used_bytes {used}\n")
