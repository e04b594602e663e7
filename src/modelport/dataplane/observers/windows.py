"""The canary's evidence: each routed request's outcome in its version's window."""

from __future__ import annotations

from modelport.dataplane.observers.base import Served
from modelport.dataplane.routing.window import counts_as_error
from modelport.dataplane.table import ModelVersion
from modelport.types import Call, InferenceRequest


class CanaryWindowObserver:
    """Latency and failure of every request to a model with a traffic policy.

    Only the version's own failures count (``counts_as_error``): a caller's
    mistake or a refusal under load says nothing about a candidate's health.
    """

    routed_only = True

    def applies(self, model: ModelVersion) -> bool:
        return True

    def observe(self, call: Call | None, request: InferenceRequest, served: Served) -> None:
        routed = served.routed
        if routed is None:
            return
        if served.response is not None:
            routed.record(served.model.version, served.elapsed_ns, False)
        elif served.error is not None and counts_as_error(served.error):
            routed.record(served.model.version, served.elapsed_ns, True)
