"""Triton's per-version statistics (the statistics extension's numbers)."""

from __future__ import annotations

from modelport.dataplane.observers.base import CacheUse, Served
from modelport.dataplane.table import ModelVersion
from modelport.errors import DeadlineExceeded, InferenceFailed, ModelportError, Unavailable
from modelport.observability.statistics import BACKEND, CANCELED, OTHER, REJECTED
from modelport.types import Call, InferenceRequest


def failure_reason(error: ModelportError | None) -> str:
    """Triton's reason for a request that failed once its version's servable had it.

    No error means the caller went away first (CANCELED); the queue's own
    refusals (full, timed out, unloading) are REJECTED; the model's failure
    is BACKEND.
    """
    if error is None:
        return CANCELED
    if isinstance(error, InferenceFailed):
        return BACKEND
    if isinstance(error, Unavailable | DeadlineExceeded):
        return REJECTED
    return OTHER


class StatisticsObserver:
    """Success, failure, queue and compute durations and cache use, per version.

    A failure counts only when the version's servable was asked: a request
    refused by validation never reached the model (Triton counts the same
    way). A request whose caller went away while the servable had it counts
    as a failure too (Triton's CANCELED).
    """

    routed_only = False

    def applies(self, model: ModelVersion) -> bool:
        return True

    def observe(self, call: Call | None, request: InferenceRequest, served: Served) -> None:
        stats = served.model.stats
        if served.response is None:
            if served.executing_ns is not None:
                stats.record_failure(served.elapsed_ns, failure_reason(served.error))
            return
        if served.cache is CacheUse.HIT:
            stats.record_cache_hit(served.elapsed_ns)
            return
        outcome = served.outcome
        if outcome is None or served.executing_ns is None:
            return
        if served.cache is CacheUse.MISS:
            stats.record_cache_miss(served.cache_ns)
        stats.record_success(
            served.elapsed_ns,
            outcome.queue_ns,
            served.executing_ns - served.start_ns + outcome.input_ns,
            outcome.compute_ns,
            outcome.output_ns + served.cache_ns,
            served.rows,
        )
