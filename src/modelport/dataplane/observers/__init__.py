"""What happens after the answer: one observer per job, run in order.

The pipeline builds one ``Served`` record per request and, once the request
is answered, refused by its version, or abandoned by its caller, hands it to
each observer that applies to the version. An observer that has nothing to
do for a version (no payload log, no reference profile) is left out of that
version's list once, the first time the version serves, so it costs the
requests nothing; one that acts only on requests a traffic policy routed
(canary windows, shadow copies: ``routed_only``) is left out of every other
request's list. A new concern (tracing, drift) is one class here and one
entry in ``default_observers``.
"""

from __future__ import annotations

from modelport.dataplane.observers.base import CacheUse, Observer, Served
from modelport.dataplane.observers.logs import LogObserver
from modelport.dataplane.observers.metrics import MetricsObserver
from modelport.dataplane.observers.payloads import PayloadLogObserver
from modelport.dataplane.observers.profile import InputProfileObserver
from modelport.dataplane.observers.shadow import ShadowObserver, ShadowServe
from modelport.dataplane.observers.statistics import StatisticsObserver
from modelport.dataplane.observers.windows import CanaryWindowObserver
from modelport.observability.metrics import Metrics
from modelport.observability.payloads import PayloadLogger

__all__ = [
    "CacheUse",
    "CanaryWindowObserver",
    "InputProfileObserver",
    "LogObserver",
    "MetricsObserver",
    "Observer",
    "PayloadLogObserver",
    "Served",
    "ShadowObserver",
    "StatisticsObserver",
    "default_observers",
]


def default_observers(
    metrics: Metrics, payloads: PayloadLogger | None, shadow: ShadowServe
) -> tuple[Observer, ...]:
    """The server's observers, in the order they run.

    Bookkeeping first (statistics, metrics, canary windows), then what leaves
    the process (payload log, log lines), then the shadow copy, which starts
    background work; the input profile last, as it reads the request's arrays.
    """
    observers: list[Observer] = [
        StatisticsObserver(),
        MetricsObserver(metrics),
        CanaryWindowObserver(),
    ]
    if payloads is not None:
        observers.append(PayloadLogObserver(payloads))
    observers += [LogObserver(), ShadowObserver(shadow), InputProfileObserver(metrics)]
    return tuple(observers)
