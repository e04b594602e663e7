"""One inference request through the data plane: route → resolve → admit → validate → compute.

Transports decode the wire into an InferenceRequest, call :meth:`Pipeline.infer`
and encode what it returns; everything a policy needs to see happens here,
once, for HTTP and gRPC alike. No I/O of its own; the only work it leaves
behind after answering is a shadow copy, owned by ``Traffic``'s runner.
"""

from __future__ import annotations

import functools
import logging

from modelport.clock import Clock, SystemClock
from modelport.dataplane.admission.ratelimit import RateLimiter
from modelport.dataplane.admission.residency import ResidencyGuard
from modelport.dataplane.cache import ResponseCache, cache_key
from modelport.dataplane.routing.shadow import SHADOW_PROTOCOL
from modelport.dataplane.routing.traffic import HeaderLookup, RoutedModel, Traffic
from modelport.dataplane.routing.window import counts_as_error
from modelport.dataplane.servable import respond, wanted_outputs
from modelport.dataplane.table import ModelTable, ModelVersion
from modelport.dataplane.validate import check_request
from modelport.errors import (
    InferenceFailed,
    ModelNotReady,
    ModelportError,
    NotFound,
    NotLoaded,
    RateLimited,
)
from modelport.observability.metrics import Metrics, ModelMetrics
from modelport.observability.payloads import PayloadLogger
from modelport.observability.profile import InputProfile
from modelport.types import InferenceRequest, InferenceResponse

log = logging.getLogger("modelport.inference")


class Pipeline:
    """The data plane's single entry point for inference."""

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
    ) -> None:
        self.table = table
        self.metrics = metrics
        self.cache = cache
        self.traffic = traffic
        self.limiter = limiter
        self.payloads = payloads
        self.residency = residency
        # Bound once: read several times per request to time its stages.
        self._clock = (clock if clock is not None else SystemClock()).monotonic_ns

    def resolve(self, name: str, version: str | None) -> ModelVersion:
        """The loaded version, for what a transport answers without inferring
        (metadata, readiness, the overload check); a version that must load
        first is not ready for these."""
        return self.table.acquire(name, version)

    def overload_refusal(self, model: ModelVersion, version: str | None) -> ModelportError | None:
        """The error to refuse with before decoding, or None: the version takes no
        new work and the request will go to it (a routed request may go to another)."""
        refused = model.servable.refusal()
        if refused is None:
            return None
        if version is not None or self.traffic is None or self.traffic.get(model.name) is None:
            return refused
        return None

    async def infer(
        self,
        request: InferenceRequest,
        protocol: str,
        header: HeaderLookup | None = None,
    ) -> InferenceResponse:
        """Serve one request; raises a ModelportError subclass on any refusal.

        ``header`` looks up a request header (gRPC: metadata) by name: the data's
        residency (``X-Data-Residency``) and, for a traffic policy with one, the sticky key.
        """
        start = self._clock()
        if self.residency is not None:
            # Before routing, validation or compute; the model is resolved only to
            # refuse (and audit) under a name that exists.
            refused = self.residency.refusal(request, header)
            if refused is not None:
                model = self.table.acquire(request.model_name, request.model_version)
                self.residency.refuse(model.name, request, refused, protocol)
        if self.traffic is not None:
            routed = self.traffic.routed(request.model_name)
            if routed is not None:
                return await self._routed(routed, request, protocol, header, start)
        try:
            model = self.table.acquire(request.model_name, request.model_version)
        except NotLoaded:
            model = await self.table.acquire_loading(request.model_name, request.model_version)
        return await self._serve(model, request, protocol, start, None)

    async def _routed(
        self,
        routed: RoutedModel,
        request: InferenceRequest,
        protocol: str,
        header: HeaderLookup | None,
        start: int,
    ) -> InferenceResponse:
        """A request for a model with a traffic policy.

        A named version bypasses the policy (but is still recorded in its window);
        otherwise the policy chooses, falling back to the default version when
        the chosen one cannot serve. Only policy-routed requests are shadowed.
        """
        if request.model_version is not None:
            model = await self._acquire_recorded(
                routed, request.model_name, request.model_version, start
            )
            return await self._serve(model, request, protocol, start, routed)
        version = routed.choose(header, request.parameters)
        try:
            model = self.table.acquire(request.model_name, version)
        except NotLoaded:
            model = await self.table.acquire_loading(request.model_name, version)
        except (NotFound, ModelNotReady) as exc:
            routed.fell_back(version, exc)
            model = self.table.acquire(request.model_name, None)
        response = await self._serve(model, request, protocol, start, routed)
        shadow = routed.wants_shadow(model.version)
        if shadow is not None:
            call = functools.partial(self._shadow, routed, shadow)
            routed.shadow(shadow, request, response, call)
        return response

    async def _shadow(
        self, routed: RoutedModel, version: str, request: InferenceRequest
    ) -> InferenceResponse:
        """One shadow copy, served like any request under the "shadow" protocol label."""
        start = self._clock()
        model = await self._acquire_recorded(routed, request.model_name, version, start)
        return await self._serve(model, request, SHADOW_PROTOCOL, start, routed)

    async def _acquire_recorded(
        self, routed: RoutedModel, name: str, version: str, start: int
    ) -> ModelVersion:
        """Acquire a named version; a version that cannot serve counts against it."""
        try:
            try:
                return self.table.acquire(name, version)
            except NotLoaded:
                return await self.table.acquire_loading(name, version)
        except ModelportError as exc:
            if counts_as_error(exc):
                routed.record(version, self._clock() - start, True)
            raise

    async def _serve(
        self,
        model: ModelVersion,
        request: InferenceRequest,
        protocol: str,
        start: int,
        routed: RoutedModel | None,
    ) -> InferenceResponse:
        # Before any validation or compute, and outside the failure accounting
        # below: a refusal is the caller's excess, not the version's fault, so it
        # must not count against a canary. Shadow copies were admitted as the
        # request they copy and take no second token.
        # The caller's own bucket first (a key created with --rate/--burst), then
        # the model's: a caller over its limit must not drain the model's tokens.
        if self.limiter is not None and protocol != SHADOW_PROTOCOL:
            identity = request.identity
            if identity is not None and identity.rate is not None and identity.burst is not None:
                # One bucket per caller, across every model.
                await self._take_token(
                    self.limiter,
                    model.name,
                    f"identity:{identity.id}",
                    identity.rate,
                    identity.burst,
                    f"caller {identity.name!r}",
                )
            limit = model.rate_limit
            if limit is not None:
                # One bucket per model, across its versions.
                await self._take_token(
                    self.limiter,
                    model.name,
                    f"model:{model.name}",
                    limit.rate,
                    limit.burst,
                    f"model {model.name!r}",
                )
        series = self.metrics.for_model(model.name, model.version, protocol)
        series.requests.inc()
        try:
            response = await self._compute(model, request, start, series)
        except ModelportError as exc:
            self.metrics.failures.labels(
                model.name, model.version, protocol, type(exc).__name__
            ).inc()
            if routed is not None and counts_as_error(exc):
                routed.record(model.version, self._clock() - start, True)
            # Client mistakes and load shedding are counted in metrics; logging
            # each one would make overload costlier. Model failures are logged.
            log.log(
                logging.WARNING if isinstance(exc, InferenceFailed) else logging.DEBUG,
                "inference refused",
                extra={
                    "request_id": request.id,
                    "model": model.name,
                    "version": model.version,
                    "protocol": protocol,
                    "error": exc.message,
                },
            )
            if model.payload_log is not None and self.payloads is not None:
                self.payloads.offer(model, model.payload_log, request, None, protocol, exc.message)
            raise
        elapsed_ns = self._clock() - start
        elapsed = elapsed_ns / 1e9
        series.request_duration.observe(elapsed)
        if routed is not None:
            routed.record(model.version, elapsed_ns, False)
        if model.payload_log is not None and self.payloads is not None:
            self.payloads.offer(model, model.payload_log, request, response, protocol)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "inference",
                extra={
                    "request_id": request.id,
                    "model": model.name,
                    "version": model.version,
                    "protocol": protocol,
                    "seconds": elapsed,
                },
            )
        return response

    async def _take_token(
        self, limiter: RateLimiter, name: str, bucket: str, rate: float, burst: int, who: str
    ) -> None:
        """Take one token from ``bucket`` or refuse with 429, naming ``who`` is over."""
        decision = await limiter.acquire(bucket, rate, burst)
        if decision.allowed:
            return
        self.metrics.rate_limited.labels(name).inc()
        raise RateLimited(
            f"{who} is over its rate limit of {rate:g} requests/s "
            f"(burst {burst}); retry in {decision.retry_after_s:.2f} s",
            decision.retry_after_s,
        )

    async def _compute(
        self, model: ModelVersion, request: InferenceRequest, start: int, series: ModelMetrics
    ) -> InferenceResponse:
        samples = check_request(model, request)
        if model.profile is not None:
            self._count_out_of_profile(model, model.profile, request)
        key = None
        if self.cache is not None and model.cached:
            wanted = wanted_outputs(request, model.output_names)
            key = cache_key(model.name, model.version, request.inputs, wanted)
            hit = self.cache.get(key)
            if hit is not None:
                model.stats.record_cache_hit(self._clock() - start)
                self.metrics.cache.labels(model.name, model.version, "hit").inc()
                return respond(model.name, model.version, model.outputs, request, hit, wanted)
        prepared = self._clock()
        try:
            outcome = await model.servable.execute(None, request)
        except ModelportError:
            model.stats.record_failure(self._clock() - start)
            raise
        response = outcome.response
        cache_ns = 0
        if key is not None and self.cache is not None:
            finished = self._clock()
            self.cache.put(key, {t.name: t.data for t in response.outputs})
            cache_ns = self._clock() - finished
            model.stats.record_cache_miss(cache_ns)
            self.metrics.cache.labels(model.name, model.version, "miss").inc()
        done = self._clock()
        input_ns = prepared - start + outcome.input_ns
        output_ns = outcome.output_ns + cache_ns
        model.stats.record_success(
            done - start, outcome.queue_ns, input_ns, outcome.compute_ns, output_ns, samples
        )
        series.queue_duration.observe(outcome.queue_ns / 1e9)
        series.compute_duration.observe(outcome.compute_ns / 1e9)
        return response

    def _count_out_of_profile(
        self, model: ModelVersion, profile: InputProfile, request: InferenceRequest
    ) -> None:
        """Count input values far outside the version's reference profile (never refuses)."""
        found = profile.outliers({t.name: t.data for t in request.inputs})
        for name, feature, count in found:
            self.metrics.out_of_profile.labels(model.name, model.version, name, feature).inc(count)
