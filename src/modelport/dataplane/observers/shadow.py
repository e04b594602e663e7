"""Shadow copies: a policy-routed answer copied to the policy's shadow version."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from modelport.dataplane.observers.base import Served
from modelport.dataplane.routing.traffic import RoutedModel
from modelport.dataplane.table import ModelVersion
from modelport.types import Call, InferenceRequest, InferenceResponse

#: Serves one shadow copy: (the model's policy, the shadow version, the copy).
ShadowServe = Callable[[RoutedModel, str, InferenceRequest], Awaitable[InferenceResponse]]


class ShadowObserver:
    """Starts a shadow copy after a successful answer the policy routed.

    A request that named its version is not copied, nor is a shadow copy
    itself (it was served with ``chosen`` False). The copy runs in the
    background, owned by ``Traffic``'s shadow runner; its answer is compared
    with this one and goes to no one.
    """

    def __init__(self, serve: ShadowServe) -> None:
        self._serve = serve

    routed_only = True

    def applies(self, model: ModelVersion) -> bool:
        return True

    def observe(self, call: Call | None, request: InferenceRequest, served: Served) -> None:
        routed = served.routed
        response = served.response
        if routed is None or response is None or not served.chosen:
            return
        shadow = routed.wants_shadow(served.model.version)
        if shadow is not None:
            routed.shadow(shadow, request, response, functools.partial(self._serve, routed, shadow))
