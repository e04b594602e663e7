"""The observer protocol and the per-request record observers read."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from modelport.dataplane.routing.traffic import RoutedModel
from modelport.dataplane.servable import Outcome
from modelport.dataplane.table import ModelVersion
from modelport.errors import ModelportError
from modelport.observability.metrics import ModelMetrics
from modelport.types import Call, InferenceRequest, InferenceResponse


class CacheUse(Enum):
    """What the response cache did for a request."""

    OFF = "off"
    """The version caches no responses (or the server has no cache)."""
    HIT = "hit"
    MISS = "miss"


@dataclass(slots=True, eq=False)
class Served:
    """One request as the pipeline served it, for the observers.

    Exactly one of ``response`` and ``error`` is set when the request was
    answered or refused after routing; neither is set when the caller went
    away first. Observers read it and never change it.
    """

    model: ModelVersion
    protocol: str
    """The metrics label: "http", "grpc", "shadow" or "step"."""
    routed: RoutedModel | None
    """The model's traffic policy when it has one (canary windows, shadows)."""
    chosen: bool
    """The policy chose the version (no version named): such answers may be shadowed."""
    start_ns: int
    """When the pipeline took the request (the clock's monotonic_ns)."""
    series: ModelMetrics
    """The version's metric series for this protocol, looked up once at admission,
    where the request was counted (so the count shows requests in flight)."""
    rows: int = 0
    """The request's batch size once validated; 0 while it was not."""
    executing_ns: int | None = None
    """When the request was handed to the version's servable; None if never."""
    elapsed_ns: int = 0
    """From ``start_ns`` to the answer or refusal."""
    cache: CacheUse = CacheUse.OFF
    cache_ns: int = 0
    """Storing the answer in the response cache (a miss)."""
    outcome: Outcome | None = None
    """The servable's answer and timings; None when the cache answered or it failed."""
    response: InferenceResponse | None = None
    error: ModelportError | None = None


class Observer(Protocol):
    """One job done after each request: record, count, log or copy it."""

    routed_only: bool
    """Whether it acts only on requests a traffic policy routed (``Served.routed``);
    such an observer is left out of the list for every other request."""

    def applies(self, model: ModelVersion) -> bool:
        """Whether this observer has anything to do for ``model``'s requests.

        Asked once per loaded version; an observer that answers False is not
        called for that version's requests at all.
        """
        ...

    def observe(self, call: Call | None, request: InferenceRequest, served: Served) -> None:
        """Act on one served request; never raises for the request's sake."""
        ...
