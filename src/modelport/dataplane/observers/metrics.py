"""Prometheus series per model, version and protocol."""

from __future__ import annotations

from modelport.dataplane.observers.base import CacheUse, Served
from modelport.dataplane.table import ModelVersion
from modelport.observability.metrics import Metrics
from modelport.types import Call, InferenceRequest


class MetricsObserver:
    """Failures by error type, durations, and cache hits and misses.

    Requests are counted on arrival, by the pipeline, so that the count shows
    requests still in flight; durations are observed only for answers.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    routed_only = False

    def applies(self, model: ModelVersion) -> bool:
        return True

    def observe(self, call: Call | None, request: InferenceRequest, served: Served) -> None:
        model = served.model
        metrics = self.metrics
        if served.cache is not CacheUse.OFF:
            metrics.cache.labels(model.name, model.version, served.cache.value).inc()
        error = served.error
        if error is not None:
            metrics.failures.labels(
                model.name, model.version, served.protocol, type(error).__name__
            ).inc()
            return
        if served.response is None:
            return
        series = served.series
        series.request_duration.observe(served.elapsed_ns / 1e9)
        outcome = served.outcome
        if outcome is not None:
            series.queue_duration.observe(outcome.queue_ns / 1e9)
            series.compute_duration.observe(outcome.compute_ns / 1e9)
