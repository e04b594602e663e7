"""Admission: whether the server takes a request, in two phases both transports call.

A refusal should cost as little as possible, so admission is split at the
point where the body is read and decoded.

**Before the body** (the transport calls these, REST before reading the
body, gRPC before converting the message's tensors):

1. authenticate: who calls (``gate.Gate``; REST through ``HttpGuard``);
2. authorize: the role the route or rpc declares (``needs.py``), on the
   model it names, within the caller's tenant (``authorize.py``);
3. residency: the data's residency from the ``X-Data-Residency`` header
   or the caller's tenant, both known before the body; data this node's
   region must not process is refused (403) and audited, under the name of
   a model that exists (an unknown model is a 404 first);
4. route: the model and version the path or message names must exist and
   be ready; 404 or 503 otherwise;
5. overload: when the version the request will reach takes no new work
   (its queue is full), the request is refused at once (REST 503, gRPC
   UNAVAILABLE), before any byte of it is decoded. A request a traffic
   policy will route is not refused here: it may go to another version.

Authentication and authorization are transport-shaped (credentials come
from headers or metadata, a certificate from the connection) and stay in
the guard and the gate; the transport runs them first, then
:meth:`Admission.before_body` (stages 3 to 5), and hands the version it
returns to the pipeline as ``admitted``.

**After decoding** (the pipeline calls these, in this order, then goes on):

6. route to a version (the pipeline: the version named, or the traffic
   policy's choice);
7. rate limits: the caller's bucket, then the model's
   (:meth:`Admission.take_tokens`); they depend on the version chosen.
   Internal calls (``Call.origin.internal``: a shadow copy, a job) were
   admitted as the request they serve and take no token; a composite's step
   takes one from its own model's bucket only (``_spent``);
8. validate, 9. cache, 10. execute: the pipeline's stages after admission.

A caller of the pipeline that did not run the first phase (no ``admitted``
version) gets the residency stage there, before routing
(:meth:`Admission.check_residency`), so no entry skips it.
"""

from __future__ import annotations

from modelport.dataplane.admission.ratelimit import RateLimiter
from modelport.dataplane.admission.residency import ResidencyGuard
from modelport.dataplane.routing.traffic import HeaderLookup, Traffic
from modelport.dataplane.table import ModelTable, ModelVersion
from modelport.errors import RateLimited, Unavailable
from modelport.observability.metrics import Metrics
from modelport.types import Call, Identity, InferenceRequest, Origin


class Admission:
    """The admission stages of one server, called by the transports and the pipeline."""

    __slots__ = ("leaving", "limiter", "metrics", "residency", "table", "traffic")

    def __init__(
        self,
        table: ModelTable,
        metrics: Metrics,
        traffic: Traffic | None = None,
        limiter: RateLimiter | None = None,
        residency: ResidencyGuard | None = None,
    ) -> None:
        self.table = table
        self.metrics = metrics
        self.traffic = traffic
        self.limiter = limiter
        self.residency = residency
        self.leaving = False
        """Set once an advertised node has drained: new requests are refused, retriable,
        so the gateway sends them to a node that stays."""

    def before_body(
        self,
        name: str,
        version: str | None,
        identity: Identity | None = None,
        header: HeaderLookup | None = None,
        protocol: str = "http",
    ) -> ModelVersion:
        """Phase one's residency, route and overload stages: the version a request
        names, or a refusal.

        Called once the caller (``identity``, None with authentication off)
        is authenticated and authorized, before the body is read or decoded;
        ``header`` looks up the request's headers or metadata. Raises
        ResidencyRefused for data this node must not process, NotFound or
        ModelNotReady for a model or version that cannot serve, and the
        version's own refusal (``Unavailable``, queue full) when it takes no
        new work and the request will go to it; a request without a version
        under a traffic policy may go to another, so it is not refused for
        this one.
        """
        if self.leaving:
            raise Unavailable("this node is leaving its fleet; retry on another", retriable=True)
        residency = self.residency
        if residency is not None:
            reason = residency.refusal(None, header, identity)
            if reason is not None:
                model = self.table.acquire(name, version)
                residency.refuse(model.name, None, reason, protocol, identity)
        model = self.table.acquire(name, version)
        refused = model.servable.refusal()
        if refused is not None and (
            version is not None or self.traffic is None or self.traffic.get(model.name) is None
        ):
            if isinstance(refused, Unavailable):
                refused.retriable = True  # nothing of the request was read yet
            raise refused
        return model

    def check_residency(
        self,
        call: Call | None,
        request: InferenceRequest,
        header: HeaderLookup | None,
        protocol: str,
    ) -> None:
        """The residency stage for a call that skipped phase one (see the module docstring).

        Refuses (ResidencyRefused) data this node must not process, before
        routing, validation or compute; the model is acquired only to refuse
        (and audit) under a name that exists.
        """
        residency = self.residency
        if residency is None:
            return
        identity = caller(call, request)
        refused = residency.refusal(request, header, identity)
        if refused is not None:
            model = self.table.acquire(request.model_name, request.model_version)
            residency.refuse(model.name, request, refused, protocol, identity)

    def limits(self, call: Call | None, request: InferenceRequest, model: ModelVersion) -> bool:
        """Whether :meth:`take_tokens` has a bucket to take from for this request.

        Asked first so that a request no limit applies to (the common case)
        costs no coroutine: no limiter, an internal call, or neither the
        caller nor the model has a rate.
        """
        if self.limiter is None:
            return False
        identity = call.identity if call is not None else request.identity
        if model.rate_limit is None and (
            identity is None or identity.rate is None or identity.burst is None
        ):
            return False  # no bucket at all: the common case, settled in one test
        if call is not None and _spent(call):
            return False
        if model.rate_limit is not None:
            return True
        # Only the caller's own bucket is left, which a step's call does not take
        # from: the caller's limit counted the composite call once.
        return call is None or call.origin is not Origin.STEP

    async def take_tokens(
        self, call: Call | None, request: InferenceRequest, model: ModelVersion
    ) -> None:
        """Phase two's rate limits, once the version is chosen; RateLimited (429) when over.

        The caller's own bucket first (a key created with --rate/--burst), then
        the model's: a caller over its limit must not drain the model's tokens.
        A refusal is the caller's excess, not the version's fault, so it
        happens outside what observers see and never counts against a canary.
        """
        limiter = self.limiter
        if limiter is None or (call is not None and _spent(call)):
            return
        identity = caller(call, request)
        step = call is not None and call.origin is Origin.STEP
        if (
            not step
            and identity is not None
            and identity.rate is not None
            and identity.burst is not None
        ):
            # One bucket per caller, across every model.
            await self._take(
                limiter,
                model.name,
                f"identity:{identity.id}",
                identity.rate,
                identity.burst,
                f"caller {identity.name!r}",
            )
        limit = model.rate_limit
        if limit is not None:
            # One bucket per model, across its versions.
            await self._take(
                limiter,
                model.name,
                f"model:{model.name}",
                limit.rate,
                limit.burst,
                f"model {model.name!r}",
            )

    async def _take(
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


def caller(call: Call | None, request: InferenceRequest) -> Identity | None:
    """The caller: the Call's, or the request's own when served without a Call."""
    return call.identity if call is not None else request.identity


def _spent(call: Call) -> bool:
    """Whether the request this internal call serves already took every token it owes.

    A step of an ensemble or cascade still takes a token from its own model's
    limit (the model's capacity is used whoever calls it), never a second one
    from the caller's: the composite call took that once. Shadow copies and
    jobs took theirs when they were admitted.
    """
    return call.origin.internal and call.origin is not Origin.STEP
