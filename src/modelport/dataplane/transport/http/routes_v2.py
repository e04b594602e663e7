"""Open Inference Protocol v2 REST routes: health, metadata, readiness, infer.

Infer with ``Prefer: respond-async`` (RFC 7240) is answered here by
:class:`AsyncInfer`: the infer fast path (and so the protocol's direct path,
which runs the same route code) hands such a request over before it does
anything else, and the request is admitted exactly as a synchronous one
would be (residency, the model and version ready, the body decoded and
validated, rate limits) before it is stored as a job. The answer is ``202``
with ``Location: /api/v1/jobs/{id}`` (docs/jobs.md).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelport.dataplane.admission.identity import IDENTITY_SCOPE_KEY
from modelport.dataplane.admission.needs import needs
from modelport.dataplane.admission.residency import HEADER as RESIDENCY_HEADER
from modelport.dataplane.codec.json_v2 import decode_request, encode_json
from modelport.dataplane.info import ModelMetadata
from modelport.dataplane.transport.context import JobQueue, TransportContext
from modelport.dataplane.transport.http.body import ClientDisconnected
from modelport.dataplane.transport.http.direct import Reply
from modelport.dataplane.transport.http.errors import http_status
from modelport.dataplane.transport.http.fastpath import (
    BodyReader,
    InferRoute,
    error_reply,
    inference_header_length,
)
from modelport.dataplane.transport.http.headers import HeaderView
from modelport.dataplane.transport.http.responses import (
    error_response,
    json_response,
)
from modelport.dataplane.transport.trace import trace_context
from modelport.dataplane.validate import check_request
from modelport.errors import InvalidRequest, ModelportError
from modelport.types import Call, Origin, Role, TensorSpec

#: Where a job's state is read; the 202's Location is this plus the job's id.
JOBS_PATH = "/api/v1/jobs/"
#: Longest Idempotency-Key accepted; visible ASCII only.
IDEMPOTENCY_KEY_MAX = 128
_RESIDENCY = RESIDENCY_HEADER.lower().encode("latin-1")


def idempotency_key(raw: bytes | None) -> str | None:
    """The ``Idempotency-Key`` header, checked: 1 to 128 visible ASCII characters."""
    if raw is None:
        return None
    key = raw.strip()
    if not key or len(key) > IDEMPOTENCY_KEY_MAX or not all(0x21 <= b <= 0x7E for b in key):
        shown = raw[:40].decode("latin-1")
        raise InvalidRequest(
            f"Idempotency-Key {shown!r} is malformed: it must be 1 to "
            f"{IDEMPOTENCY_KEY_MAX} visible ASCII characters without spaces"
        )
    return key.decode("ascii")


class AsyncInfer:
    """Infer with ``Prefer: respond-async``: admitted like the synchronous call, then queued."""

    def __init__(self, ctx: TransportContext, jobs: JobQueue) -> None:
        self.ctx = ctx
        self.jobs = jobs

    async def respond(
        self,
        scope: Any,
        headers: dict[bytes, bytes],
        name: str,
        version: str | None,
        read_body: BodyReader,
    ) -> Reply | None:
        """202 with the job's Location, or the refusal the synchronous call would get."""
        ctx = self.ctx
        pipeline = ctx.pipeline
        try:
            key = idempotency_key(headers.get(b"idempotency-key"))
            identity = scope.get(IDENTITY_SCOPE_KEY)
            view = HeaderView(headers)
            admitted = pipeline.admission.before_body(name, version, identity, view.get, "http")
            length = headers.get(b"content-length")
            body = await read_body(
                length.decode("latin-1") if length is not None else None,
                headers.get(b"content-encoding", b"").decode("latin-1"),
            )
            hlen = inference_header_length(headers.get(b"inference-header-content-length"))
            # No shared memory: the job runs after this caller's regions may be gone.
            request = decode_request(body, hlen, name, version, ctx.max_elements, None)
            check_request(admitted, request)
            call = Call(
                Origin.REST,
                identity,
                None,
                view,
                request.id,
                scope.get("client"),
                trace_context(view.get),
            )
            if pipeline.limiter is not None and pipeline.admission.limits(call, request, admitted):
                await pipeline.admission.take_tokens(call, request, admitted)
            residency = headers.get(_RESIDENCY)
            callback = headers.get(b"x-callback-url")
            job = await self.jobs.submit(
                model=name,
                version=version,
                identity=identity,
                body=body,
                header_length=hlen,
                residency=residency.decode("latin-1") if residency is not None else None,
                idempotency_key=key,
                callback_url=callback.decode("latin-1") if callback is not None else None,
            )
        except ModelportError as exc:
            return error_reply(exc, scope["path"])
        except ClientDisconnected:
            return None
        location = JOBS_PATH + job.id
        reply_headers = [
            (b"content-type", b"application/json"),
            (b"location", location.encode("ascii")),
            (b"preference-applied", b"respond-async"),
        ]
        payload = encode_json({"id": job.id, "state": job.state, "location": location})
        return 202, reply_headers, payload


def _tensors(specs: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
    return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]


def metadata_json(meta: ModelMetadata) -> dict[str, Any]:
    """Model metadata in the Open Inference Protocol's JSON shape."""
    return {
        "name": meta.name,
        "versions": meta.versions,
        "platform": meta.platform,
        "inputs": _tensors(meta.inputs),
        "outputs": _tensors(meta.outputs),
    }


def _version(request: Request) -> str | None:
    v: str | None = request.path_params.get("version")
    return v


def routes(ctx: TransportContext, infer: InferRoute) -> list[Route]:
    if ctx.jobs is not None:
        infer.deferred = AsyncInfer(ctx, ctx.jobs).respond

    @needs(Role.VIEWER)
    async def server_metadata(request: Request) -> Response:
        server = ctx.info.server_metadata()
        return json_response(
            {"name": server.name, "version": server.version, "extensions": list(server.extensions)}
        )

    @needs(None)
    async def live(request: Request) -> Response:
        return json_response({"live": True})

    @needs(None)
    async def ready(request: Request) -> Response:
        ok = ctx.table.is_ready()
        return json_response({"ready": ok}, 200 if ok else 503)

    @needs(Role.VIEWER, model="model")
    async def model_metadata(request: Request) -> Response:
        meta = ctx.info.model_metadata(request.path_params["model"], _version(request))
        return json_response(metadata_json(meta))

    @needs(Role.VIEWER, model="model")
    async def model_ready(request: Request) -> Response:
        state = ctx.info.model_ready(request.path_params["model"], _version(request))
        if state.error is not None:
            return error_response(state.error.message, http_status(state.error))
        return json_response({"name": state.name, "ready": True})

    return [
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2/models/{model}", model_metadata, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}", model_metadata, methods=["GET"]),
        Route("/v2/models/{model}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{model}/infer", infer, methods=["POST"]),
        Route("/v2/models/{model}/versions/{version}/infer", infer, methods=["POST"]),
    ]
