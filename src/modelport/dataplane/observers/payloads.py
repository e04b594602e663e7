"""Sampled payload logs, for the versions whose config turns them on."""

from __future__ import annotations

from modelport.dataplane.observers.base import Served
from modelport.dataplane.table import ModelVersion
from modelport.observability.payloads import PayloadLogger
from modelport.types import Call, InferenceRequest


class PayloadLogObserver:
    """Offers each answer or refusal to the payload logger (which samples)."""

    def __init__(self, payloads: PayloadLogger) -> None:
        self.payloads = payloads

    routed_only = False

    def applies(self, model: ModelVersion) -> bool:
        return model.payload_log is not None

    def observe(self, call: Call | None, request: InferenceRequest, served: Served) -> None:
        model = served.model
        settings = model.payload_log
        if settings is None:
            return
        if served.response is not None:
            self.payloads.offer(model, settings, request, served.response, served.protocol)
        elif served.error is not None:
            self.payloads.offer(
                model, settings, request, None, served.protocol, served.error.message
            )
