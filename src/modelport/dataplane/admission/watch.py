"""Feeding the traffic anomaly detectors from admission, and where their events go.

The gate calls :class:`TrafficWatch` once per authenticated call (the rate-spike
detector, keyed by identity) and once per failed authentication (the burst
detector, keyed by peer address). It exists only when authentication is on:
an open server has no identities to watch, and pays nothing.

A fired event becomes an audit record (sampled per source like every other
admission record) and one increment of ``modelport_security_events_total{kind}``.
"""

from __future__ import annotations

from typing import Any

from modelport.dataplane.admission.audit import SERVER_WIDE, AuditEvent, AuthAudit
from modelport.observability.anomaly import (
    AuthFailureBurstDetector,
    EventSink,
    RateSpikeDetector,
)
from modelport.observability.metrics import Metrics
from modelport.types import Identity

#: The actor of security events: the detector, not the caller it watched.
DETECTOR = "anomaly-detector"


class TrafficWatch:
    """The two detectors the gate feeds."""

    def __init__(self, rate: RateSpikeDetector, failures: AuthFailureBurstDetector) -> None:
        self.rate = rate
        self.failures = failures

    def admitted(self, identity: Identity) -> None:
        self.rate.observe(identity.id)

    def failed(self, peer: str) -> None:
        self.failures.observe_failure(peer)


def security_sink(audit: AuthAudit, metrics: Metrics) -> EventSink:
    """The detectors' ``on_event``: one audit record and one metric increment per event."""

    def on_event(kind: str, source: str, detail: dict[str, Any]) -> None:
        metrics.security_events.labels(kind).inc()
        audit.offer(AuditEvent(SERVER_WIDE, kind, DETECTOR, {"source": source, **detail}), source)

    return on_event


def build_watch(audit: AuthAudit, metrics: Metrics) -> TrafficWatch:
    """Detectors with their documented defaults, reporting to ``audit`` and ``metrics``."""
    sink = security_sink(audit, metrics)
    return TrafficWatch(RateSpikeDetector(sink), AuthFailureBurstDetector(sink))
