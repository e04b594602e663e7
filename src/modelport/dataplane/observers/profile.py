"""Input values far outside a version's reference profile, counted (never refused)."""

from __future__ import annotations

from modelport.dataplane.observers.base import Served
from modelport.dataplane.table import ModelVersion
from modelport.observability.metrics import Metrics
from modelport.types import Call, InferenceRequest


class InputProfileObserver:
    """Counts out-of-profile values of every validated request to a profiled version.

    Counted whatever became of the request after validation: drift in what
    callers send matters even when the model then failed.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    routed_only = False

    def applies(self, model: ModelVersion) -> bool:
        return model.profile is not None

    def observe(self, call: Call | None, request: InferenceRequest, served: Served) -> None:
        model = served.model
        profile = model.profile
        if profile is None or served.rows == 0:
            return
        found = profile.outliers({t.name: t.data for t in request.inputs})
        for name, feature, count in found:
            self.metrics.out_of_profile.labels(model.name, model.version, name, feature).inc(count)
