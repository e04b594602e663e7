"""Log lines for requests: model failures always, the rest at debug level."""

from __future__ import annotations

import logging

from modelport.dataplane.observers.base import Served
from modelport.dataplane.table import ModelVersion
from modelport.errors import InferenceFailed
from modelport.types import Call, InferenceRequest

log = logging.getLogger("modelport.inference")


class LogObserver:
    """One line per request at debug level; a model's own failure as a warning.

    Client mistakes and load shedding are counted in metrics; logging each one
    would make overload costlier.
    """

    routed_only = False

    def applies(self, model: ModelVersion) -> bool:
        return True

    def observe(self, call: Call | None, request: InferenceRequest, served: Served) -> None:
        error = served.error
        if error is not None:
            failed = isinstance(error, InferenceFailed)
            level = logging.WARNING if failed else logging.DEBUG
            if log.isEnabledFor(level):
                log.log(
                    level,
                    # The model's own failure is not a refusal: say which it was.
                    "model failed" if failed else "inference refused",
                    extra={
                        "request_id": request.id,
                        "model": served.model.name,
                        "version": served.model.version,
                        "protocol": served.protocol,
                        "error": error.message,
                    },
                )
            return
        if served.response is not None and log.isEnabledFor(logging.DEBUG):
            log.debug(
                "inference",
                extra={
                    "request_id": request.id,
                    "model": served.model.name,
                    "version": served.model.version,
                    "protocol": served.protocol,
                    "seconds": served.elapsed_ns / 1e9,
                },
            )
