"""Feeding the traffic anomaly detectors from admission, and where their events go.

The gate calls :class:`TrafficWatch` once per authenticated call (the rate-spike
detector, keyed by identity) and once per failed authentication (the burst
detector, keyed by peer address). It exists only when authentication is on:
an open server has no identities to watch, and pays nothing.

A fired event becomes an audit record (sampled per source like every other
admission record) and one increment of ``modelport_security_events_total{kind}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

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


class Watch(Protocol):
    """What the gate tells of each call: who was admitted, which peer failed."""

    def admitted(self, identity: Identity) -> None: ...

    def failed(self, peer: str) -> None: ...


class TrafficWatch:
    """The two detectors the gate feeds."""

    def __init__(self, rate: RateSpikeDetector, failures: AuthFailureBurstDetector) -> None:
        self.rate = rate
        self.failures = failures

    def admitted(self, identity: Identity) -> None:
        self.rate.observe(identity.id)

    def failed(self, peer: str) -> None:
        self.failures.observe_failure(peer)

    def feed(self, admitted: Mapping[str, int], failed: Mapping[str, int]) -> None:
        """Counts a node's workers gathered (see :class:`Tally`)."""
        for source, count in admitted.items():
            self.rate.observe(source, count)
        for source, count in failed.items():
            self.failures.observe_failure(source, count)


class Tally:
    """A node worker's Watch: counts calls per source for the one worker whose
    detectors watch the whole node's traffic (so a spike spread over workers is
    one spike, and an event is reported once). Bounded like the detectors: past
    ``max_sources`` distinct sources in one report, new ones wait for the next."""

    def __init__(self, max_sources: int = 10_000) -> None:
        self.max_sources = max_sources
        self._admitted: dict[str, int] = {}
        self._failed: dict[str, int] = {}

    def admitted(self, identity: Identity) -> None:
        _count(self._admitted, identity.id, self.max_sources)

    def failed(self, peer: str) -> None:
        _count(self._failed, peer, self.max_sources)

    def take(self) -> tuple[dict[str, int], dict[str, int]]:
        """What was counted since the last take, and start again."""
        taken = self._admitted, self._failed
        self._admitted, self._failed = {}, {}
        return taken


def _count(counts: dict[str, int], source: str, limit: int) -> None:
    found = counts.get(source)
    if found is not None:
        counts[source] = found + 1
    elif len(counts) < limit:
        counts[source] = 1


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
