"""One inference request through the data plane, in stages, then its observers.

Transports decode the wire into an InferenceRequest, call :meth:`Pipeline.infer`
and encode what it returns; everything a policy needs to see happens here,
once, for HTTP and gRPC alike. The stages, in order:

1. admission before routing: the data's residency, unless the transport ran
   admission's first phase (``admitted``), which checked it before the body;
2. route: the version named, or the one the model's traffic policy chooses
   (falling back to the default version when that one cannot serve);
3. admission after routing: rate limits (per caller, per model);
4. validate the request against the version's signature;
5. cache: answer from the response cache when the version has one;
6. execute: the version's ``Servable`` computes the answer.

Stages 1 and 3 are the second phase of ``admission/stages.py``, whose first
phase (authenticate, authorize, route, overload) the transports run before
they read the body.

After the answer (or the version's refusal) the version's observers run in
order (``observers/``): statistics, metrics, canary windows, payload log,
log lines, shadow copy, input profile. No I/O of its own; the only work left
behind after answering is a shadow copy, owned by ``Traffic``'s runner.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import numpy as np

from modelport.clock import Clock, SystemClock
from modelport.dataplane.admission.ratelimit import RateLimiter
from modelport.dataplane.admission.residency import ResidencyGuard
from modelport.dataplane.admission.stages import Admission
from modelport.dataplane.cache import ResponseCache, cache_key
from modelport.dataplane.observers import CacheUse, Observer, Served, default_observers
from modelport.dataplane.routing.shadow import SHADOW_PROTOCOL
from modelport.dataplane.routing.traffic import HeaderLookup, RoutedModel, Traffic
from modelport.dataplane.routing.window import counts_as_error
from modelport.dataplane.servable import STEP_PROTOCOL, respond, wanted_outputs
from modelport.dataplane.table import AdmissionView, ModelTable, ModelVersion
from modelport.dataplane.validate import check_request
from modelport.errors import (
    ModelNotReady,
    ModelportError,
    NotFound,
    NotLoaded,
)
from modelport.observability.metrics import Metrics
from modelport.observability.payloads import PayloadLogger
from modelport.types import (
    Array,
    Call,
    InferenceRequest,
    InferenceResponse,
    Origin,
    Tensor,
    datatype_of,
)

#: The response parameter set on an answer whose version had to load first.
COLD_START = "cold_start"

#: Versions whose observer lists are kept before the list is started afresh;
#: far above the versions a server serves at once, so only reloads fill it.
_PLANS_KEPT = 256


#: The datatype of each fixed-size numpy dtype a step's tensor had, named once:
#: ``datatype_of`` compares against every datatype, and each step asks again.
_DATATYPES: dict[np.dtype[Any], str] = {}


def _datatype(array: Array) -> str:
    """``datatype_of``, remembered per dtype (strings vary in size: asked each time)."""
    dtype = array.dtype
    name = _DATATYPES.get(dtype)
    if name is None:
        name = datatype_of(array)
        if dtype.kind not in "OSU":
            _DATATYPES[dtype] = name
    return name


class Pipeline:
    """The data plane's single entry point for inference, and the ``StepRunner``
    composite servables run their steps through."""

    def __init__(
        self,
        table: ModelTable,
        metrics: Metrics,
        cache: ResponseCache | None = None,
        clock: Clock | None = None,
        traffic: Traffic | None = None,
        limiter: RateLimiter | None = None,
        payloads: PayloadLogger | None = None,
        residency: ResidencyGuard | None = None,
        observers: tuple[Observer, ...] | None = None,
    ) -> None:
        """``observers`` replaces the default list (``observers.default_observers``)."""
        self.table = table
        self.metrics = metrics
        self.cache = cache
        self.traffic = traffic
        self.limiter = limiter
        self.payloads = payloads
        self.residency = residency
        self.admission = Admission(AdmissionView(table), metrics, traffic, limiter, residency)
        """The admission stages; transports call its ``before_body`` before reading a body."""
        self.observers = (
            observers
            if observers is not None
            else default_observers(metrics, payloads, self._shadow)
        )
        # Per version, the observers that apply to it (``Observer.applies``), chosen
        # the first time the version serves: for routed requests, and for the rest
        # (without the ``routed_only`` ones).
        self._plans: dict[ModelVersion, tuple[tuple[Observer, ...], tuple[Observer, ...]]] = {}
        self.clock: Clock = clock if clock is not None else SystemClock()
        """The data plane's clock; transports set a Call's deadline by its ``monotonic_ns``."""
        # Bound once: read several times per request to time its stages.
        self._clock = self.clock.monotonic_ns

    async def infer(
        self,
        request: InferenceRequest,
        protocol: str,
        header: HeaderLookup | None = None,
        call: Call | None = None,
        admitted: ModelVersion | None = None,
    ) -> InferenceResponse:
        """Serve one request; raises a ModelportError subclass on any refusal.

        ``header`` looks up a request header (gRPC: metadata) by name: the data's
        residency (``X-Data-Residency``) and, for a traffic policy with one, the sticky key.
        ``call`` is what the transport knows of the call (the caller, the
        deadline, the origin); without one the request's own ``identity`` is read.
        ``admitted`` is the version ``Admission.before_body`` returned when the
        transport ran admission's first phase; the residency it checked is not
        checked again. The version is acquired afresh all the same: reading
        the body may have taken long enough for a reload to replace it.
        """
        start = self._clock()
        if (
            self.residency is not None
            and admitted is None
            and (call is None or not call.origin.internal)
        ):
            self.admission.check_residency(call, request, header, protocol)
        routed = self.traffic.routed(request.model_name) if self.traffic is not None else None
        name, version = request.model_name, request.model_version
        try:
            if routed is None:
                model = self.table.acquire(name, version)
            elif version is not None:
                model = self._acquire_recorded(routed, name, version, start)
            else:
                model = self._choose(routed, request, header)
        except NotLoaded:
            return await self._serve_cold(call, request, protocol, header, routed, start)
        chosen = routed is not None and version is None
        return await self._serve(call, model, request, protocol, start, routed, chosen)

    async def run_step(
        self,
        call: Call | None,
        model: str,
        version: str | None,
        inputs: Mapping[str, Array],
        parameters: Mapping[str, Any] | None = None,
    ) -> dict[str, Array]:
        """One step of a composite servable (``servable.StepRunner``).

        Served as a request for ``model`` under the composite's ``call``:
        routed (``version`` None: the model's traffic policy or its default
        version), validated, cached and executed, and observed under the
        "step" label; a token from the step model's own rate limit, none from
        the caller's, which the composite call took once (the step's Call is the
        composite's, with origin STEP).
        A step carries no header lookup, so a sticky policy draws by weight for it.
        ``parameters`` (a sequence step's ``sequence_id`` and flags) are the step
        request's, copied: its servable may normalize them in place.
        """
        request = InferenceRequest(
            model,
            version,
            [Tensor(name, _datatype(array), array.shape, array) for name, array in inputs.items()],
            id=call.request_id if call is not None else None,
        )
        if parameters is not None:
            request.parameters = dict(parameters)
        step = (
            Call(Origin.STEP)
            if call is None
            else Call(
                Origin.STEP,
                call.identity,
                call.deadline_ns,
                call.headers,
                call.request_id,
                call.peer,
                call.trace,
            )
        )
        response = await self.infer(request, STEP_PROTOCOL, None, step)
        return {t.name: t.data for t in response.outputs}

    def _choose(
        self, routed: RoutedModel, request: InferenceRequest, header: HeaderLookup | None
    ) -> ModelVersion:
        """The version the policy chooses, or the default one when that cannot serve."""
        version = routed.choose(header, request.parameters)
        try:
            return self.table.acquire(request.model_name, version)
        except NotLoaded:
            raise
        except (NotFound, ModelNotReady) as exc:
            routed.fell_back(version, exc)
            return self.table.acquire(request.model_name, None)

    async def _serve_cold(
        self,
        call: Call | None,
        request: InferenceRequest,
        protocol: str,
        header: HeaderLookup | None,
        routed: RoutedModel | None,
        start: int,
    ) -> InferenceResponse:
        """Serve a request whose version had to load first; its answer says so.

        The ``cold_start`` response parameter tells a caller that saw a slow
        answer why: it waited for the version to load.
        """
        model = await self._acquire_loading(routed, request, header, start, call)
        chosen = routed is not None and request.model_version is None
        response = await self._serve(call, model, request, protocol, start, routed, chosen)
        response.parameters[COLD_START] = True
        return response

    async def _acquire_loading(
        self,
        routed: RoutedModel | None,
        request: InferenceRequest,
        header: HeaderLookup | None,
        start: int,
        call: Call | None = None,
    ) -> ModelVersion:
        """The route stage again for a version that must load first, waiting for it.

        Off the hot path: only a table that loads versions on first use says NotLoaded.
        The wait ends at the request's deadline, as a queued request's would:
        the earlier of the Call's and the request's own ``timeout``.
        """
        name, version = request.model_name, request.model_version
        if routed is not None and version is None:
            version = routed.choose(header, request.parameters)
        deadline = call.deadline_ns if call is not None else None
        if request.timeout_us:  # 0 is no limit, as the queue policy reads it
            own = start + request.timeout_us * 1000
            deadline = own if deadline is None else min(deadline, own)
        try:
            return await self.table.acquire_loading(name, version, deadline)
        except ModelportError as exc:
            if routed is not None and version is not None and counts_as_error(exc):
                routed.record(version, self._clock() - start, True)
            raise

    async def _shadow(
        self, routed: RoutedModel, version: str, request: InferenceRequest
    ) -> InferenceResponse:
        """One shadow copy, served like any request under the "shadow" protocol label.

        Its Call has origin SHADOW, no caller and no deadline of its own (the
        shadow runner's timeout bounds it): nobody waits for its answer.
        """
        call = Call(Origin.SHADOW, request_id=request.id)
        start = self._clock()
        try:
            model = self._acquire_recorded(routed, request.model_name, version, start)
        except NotLoaded:
            model = await self._acquire_loading(routed, request, None, start)
        return await self._serve(call, model, request, SHADOW_PROTOCOL, start, routed, False)

    def _acquire_recorded(
        self, routed: RoutedModel, name: str, version: str, start: int
    ) -> ModelVersion:
        """Acquire a named version; a version that cannot serve counts against it."""
        try:
            return self.table.acquire(name, version)
        except NotLoaded:
            raise
        except ModelportError as exc:
            if counts_as_error(exc):
                routed.record(version, self._clock() - start, True)
            raise

    async def _serve(
        self,
        call: Call | None,
        model: ModelVersion,
        request: InferenceRequest,
        protocol: str,
        start: int,
        routed: RoutedModel | None,
        chosen: bool,
    ) -> InferenceResponse:
        """Admission after routing, then validate → cache → execute, then the observers."""
        # Noted before anything awaits, so an idle check never unloads a version
        # between the route stage and its use.
        model.last_used_ns = start
        # Before any validation or compute, and outside what observers see.
        admission = self.admission
        if self.limiter is not None and admission.limits(call, request, model):
            await admission.take_tokens(call, request, model)
        series = self.metrics.for_model(model.name, model.version, protocol)
        series.requests.inc()
        served = Served(model, protocol, routed, chosen, start, series)
        try:
            served.response = await self._answer(call, model, request, served)
        except ModelportError as exc:
            served.error = exc
            self._observe(call, request, served)
            raise
        except asyncio.CancelledError:
            self._observe(call, request, served)
            raise
        self._observe(call, request, served)
        return served.response

    async def _answer(
        self, call: Call | None, model: ModelVersion, request: InferenceRequest, served: Served
    ) -> InferenceResponse:
        """Validate → cache → execute; what happened is left in ``served``."""
        served.rows = check_request(model, request)
        key = None
        cache = self.cache
        if cache is not None and model.cached:
            wanted = wanted_outputs(request, model.output_names)
            key = cache_key(model.name, model.version, request.inputs, wanted)
            hit = cache.get(key)
            if hit is not None:
                served.cache = CacheUse.HIT
                return respond(model.name, model.version, model.outputs, request, hit, wanted)
            served.cache = CacheUse.MISS
        served.executing_ns = self._clock()
        outcome = await model.servable.execute(call, request)
        served.outcome = outcome
        response = outcome.response
        if key is not None and cache is not None:
            put = self._clock()
            cache.put(key, {t.name: t.data for t in response.outputs})
            served.cache_ns = self._clock() - put
        return response

    def _observe(self, call: Call | None, request: InferenceRequest, served: Served) -> None:
        """Run the version's observers over one finished request."""
        served.elapsed_ns = self._clock() - served.start_ns
        plans = self._plans.get(served.model)
        if plans is None:
            plans = self._plan(served.model)
        for observer in plans[0] if served.routed is not None else plans[1]:
            observer.observe(call, request, served)

    def _plan(self, model: ModelVersion) -> tuple[tuple[Observer, ...], tuple[Observer, ...]]:
        """The observers that apply to ``model`` (routed requests; the rest), asked once."""
        if len(self._plans) >= _PLANS_KEPT:
            self._plans.clear()  # replaced versions are never asked for again
        routed = tuple(o for o in self.observers if o.applies(model))
        plans = self._plans[model] = (routed, tuple(o for o in routed if not o.routed_only))
        return plans
