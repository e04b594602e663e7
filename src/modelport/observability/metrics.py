"""Prometheus metrics, built in the composition root and passed down.

Durations are histograms, not summaries, so percentiles can be aggregated
across replicas by the monitoring system.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

from modelport.observability.merge import merge_expositions
from modelport.observability.series import (
    CounterFamily,
    CounterSeries,
    HistogramFamily,
    HistogramSeries,
)

#: Buckets from 100 µs to 10 s: model servers answer small models in well under 1 ms.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

#: Buckets from 10 ms to 5 minutes: loading a version reads files and builds sessions.
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Whether a caller may see the series of the model of that name; None shows every model.
Visible = Callable[[str], bool] | None

#: Writes families of its own into the exposition, leaving out the models ``Visible`` refuses.
Exposition = Callable[[Visible], bytes]


@dataclass(frozen=True, slots=True)
class ModelMetrics:
    """The labelled series one (model, version, protocol) writes on every request."""

    requests: CounterSeries
    request_duration: HistogramSeries
    queue_duration: HistogramSeries
    compute_duration: HistogramSeries


class Metrics:
    """The server's metrics; one instance per server, never a module global."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[str, str, str], ModelMetrics] = {}
        self._expositions: list[Exposition] = []
        self.peers: Callable[[], Awaitable[list[bytes]]] | None = None
        """The other workers' full expositions, in a node of several workers; a scrape
        of any worker then answers for the node (see :meth:`exposition`)."""
        labels = ("model", "version", "protocol")
        # The series written on every request are lock-free (``series.py``).
        self.requests = CounterFamily(
            "modelport_inference_requests",
            "Inference requests received, by model, version and protocol.",
            labels,
            self.registry,
        )
        self.failures = Counter(
            "modelport_inference_failures",
            "Inference requests that failed, by model, version, protocol and reason.",
            (*labels, "reason"),
            registry=self.registry,
        )
        self.request_duration = HistogramFamily(
            "modelport_request_duration_seconds",
            "Time from a decoded request to its response, in seconds.",
            labels,
            self.registry,
            LATENCY_BUCKETS,
        )
        self.queue_duration = HistogramFamily(
            "modelport_queue_duration_seconds",
            "Time a request waited for a model instance, in seconds.",
            ("model", "version"),
            self.registry,
            LATENCY_BUCKETS,
        )
        self.compute_duration = HistogramFamily(
            "modelport_compute_duration_seconds",
            "Time the model computed the batch each request was part of, in seconds.",
            ("model", "version"),
            self.registry,
            LATENCY_BUCKETS,
        )
        self.cache = Counter(
            "modelport_response_cache",
            "Response cache lookups, by model, version and result (hit or miss).",
            ("model", "version", "result"),
            registry=self.registry,
        )
        self.routing_fallbacks = Counter(
            "modelport_routing_fallbacks",
            "Requests a traffic policy routed to a version that could not serve, which "
            "the default version answered instead; by model and routed version.",
            ("model", "version"),
            registry=self.registry,
        )
        self.shadow_requests = Counter(
            "modelport_shadow_requests",
            "Shadow copies of answered requests, by model, shadow version and result "
            "(agree, disagree, error, skipped).",
            ("model", "version", "result"),
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "modelport_rate_limited",
            "Inference requests refused by a model's rate limit, by model.",
            ("model",),
            registry=self.registry,
        )
        self.rate_limit_store_failures = Counter(
            "modelport_rate_limit_store_failures",
            "Rate-limit decisions made without the shared store (Redis) because it was "
            "unreachable; each was allowed (fail open) or refused (fail closed).",
            registry=self.registry,
        )
        self.payload_records = Counter(
            "modelport_payload_records",
            "Sampled payload records, by model and result (written; dropped: queue full; "
            "failed: not written; residency: region not allowed; refused: seal without a key).",
            ("model", "result"),
            registry=self.registry,
        )
        self.residency_refused = Counter(
            "modelport_residency_refused",
            "Inference requests refused because their data residency does not allow this "
            "node's region, by model.",
            ("model",),
            registry=self.registry,
        )
        self.security_events = Counter(
            "modelport_security_events",
            "Traffic anomalies raised as security events, by kind (security.rate_spike, "
            "security.auth_failure_burst).",
            ("kind",),
            registry=self.registry,
        )
        self.out_of_profile = Counter(
            "modelport_input_out_of_profile",
            "Input values far outside the model's reference profile, by model, version, "
            "input and feature ('*': inputs too wide to label per feature).",
            ("model", "version", "input", "feature"),
            registry=self.registry,
        )
        self.cascade_answers = Counter(
            "modelport_cascade_answers",
            "Answers a cascade's stages gave, by model and stage (requests, or rows for a "
            "cascade with per_row).",
            ("model", "stage"),
            registry=self.registry,
        )
        self.models_loaded = Gauge(
            "modelport_models_loaded",
            "Model versions loaded and ready.",
            registry=self.registry,
        )
        self.load_duration = Histogram(
            "modelport_model_load_duration_seconds",
            "Time to load one model version (at start, by the API, a poll or a cold start), "
            "in seconds; by model.",
            ("model",),
            registry=self.registry,
            buckets=LOAD_BUCKETS,
        )
        self.cold_starts = Counter(
            "modelport_cold_starts",
            "Loads of a version unloaded for idleness that a request asked for, by model.",
            ("model",),
            registry=self.registry,
        )
        self.idle_unloads = Counter(
            "modelport_idle_unloads",
            "Versions unloaded because no request came for their idle_unload time, by model.",
            ("model",),
            registry=self.registry,
        )
        self.evictions = Counter(
            "modelport_evictions",
            "Versions unloaded to make room for another within --memory-budget, by model "
            "and version.",
            ("model", "version"),
            registry=self.registry,
        )
        self.model_memory = Gauge(
            "modelport_model_memory_bytes",
            "Memory a loaded version took, measured over its load and warm-up (this "
            "process's resident memory, plus its worker processes'), by model and version.",
            ("model", "version"),
            registry=self.registry,
        )
        self.memory_budget = Gauge(
            "modelport_memory_budget_bytes",
            "The memory loaded versions may take (--memory-budget; each worker of a node "
            "holds an equal share, so the node's sum is the whole budget).",
            registry=self.registry,
        )

    def for_model(self, model: str, version: str, protocol: str) -> ModelMetrics:
        """Labelled children, looked up once per (model, version, protocol)."""
        key = (model, version, protocol)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = ModelMetrics(
                self.requests.labels(model, version, protocol),
                self.request_duration.labels(model, version, protocol),
                self.queue_duration.labels(model, version),
                self.compute_duration.labels(model, version),
            )
        return found

    def add_exposition(self, render: Exposition) -> None:
        """Append what ``render(visible)`` writes to every exposition.

        For families written as text rather than through the registry (Triton's
        ``nv_*`` names, whose counters carry no ``_total``); ``render`` must
        leave out the series of models ``visible`` refuses, as ``render`` does.
        """
        self._expositions.append(render)

    def render(self, visible: Visible = None) -> bytes:
        """The Prometheus text exposition; only the series ``visible`` allows.

        ``visible`` tests a model name (the caller may see that model, as
        listings decide); series labelled with a model it refuses are left
        out, series without a model label (server-wide) always stay. None
        shows everything.
        """
        text = generate_latest(
            self.registry if visible is None else _VisibleSeries(self.registry, visible)
        )
        if not self._expositions:
            return text
        return b"".join([text, *(render(visible) for render in self._expositions)])

    async def exposition(self, visible: Visible = None) -> bytes:
        """What /metrics answers: :meth:`render`, or in a node of several workers every
        worker's series merged (counters and histograms summed; ``merge.py``)."""
        if self.peers is None:
            return self.render(visible)
        own = self.render()
        others = await self.peers()
        # Parsing costs milliseconds per worker: off the event loop.
        return await asyncio.to_thread(merge_expositions, [own, *others], visible)


class _VisibleSeries:
    """A registry view for ``generate_latest``: samples of hidden models removed."""

    def __init__(self, registry: CollectorRegistry, visible: Callable[[str], bool]) -> None:
        self.registry = registry
        self.visible = visible

    def collect(self) -> Iterator[Metric]:
        visible = self.visible
        for family in self.registry.collect():
            kept = copy.copy(family)
            kept.samples = [
                s for s in family.samples if "model" not in s.labels or visible(s.labels["model"])
            ]
            yield kept
