"""Triton's generate extension: ``/generate`` and ``/generate_stream``.

One JSON object in: each top-level field naming one of the model's inputs
becomes that tensor (a scalar or a list; the batch dimension of 1 is added
for a batching model), ``parameters`` and any other field become request
parameters. One JSON object out per response: ``model_name``,
``model_version`` and each output by name (one element as a scalar, more as
a flat list, ``BYTES`` as text).

``/generate`` answers one object. ``/generate_stream`` answers server-sent
events, one ``data: {json}`` event per response as the model yields it; an
error before the first event is an ordinary JSON error with its status, one
after it is a last ``data: {"error": ...}`` event (the status is sent
already). A decoupled model's responses stream; any other model's one
response is the one event. ``/generate`` on a decoupled model answers its
response when it yields exactly one, and refuses a second (the stream is
stopped), pointing to ``/generate_stream``.

The request is admitted like ``/infer``: the guard authenticates and
authorizes by the role declared here, admission's first phase runs before
the body is read, and the pipeline runs the rest (rate limits, validation,
the version's servable and observers). A caller that hangs up cancels the
request, which stops the model's generator.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from modelport.dataplane.admission.identity import IDENTITY_SCOPE_KEY
from modelport.dataplane.admission.needs import needs
from modelport.dataplane.codec.json_v2 import encode_json
from modelport.dataplane.codec.jsonbody import decode_json
from modelport.dataplane.codec.parameters import apply_request_parameters
from modelport.dataplane.codec.tensors import array_from_json, bf16_to_float
from modelport.dataplane.streaming import StreamTarget, streaming
from modelport.dataplane.table import ModelVersion
from modelport.dataplane.transport.context import TransportContext
from modelport.dataplane.transport.http.body import ClientDisconnected, receive_body
from modelport.dataplane.transport.http.disconnect import until_disconnect
from modelport.dataplane.transport.http.errors import error_headers, http_status
from modelport.dataplane.transport.http.headers import TIMEOUT_HEADER, HeaderView, deadline_ns
from modelport.dataplane.transport.trace import trace_context
from modelport.errors import InferenceFailed, InvalidRequest, ModelportError, Unsupported
from modelport.types import Call, InferenceRequest, InferenceResponse, Origin, Role, Tensor

_JSON = [(b"content-type", b"application/json")]
_EVENTS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
#: Fields of the request object that are never tensors.
_PARAMETERS = "parameters"


def generate_request(
    payload: Any, model: ModelVersion, name: str, version: str | None
) -> InferenceRequest:
    """The InferenceRequest a generate request object stands for."""
    if not isinstance(payload, dict):
        raise InvalidRequest("a generate request is a JSON object of inputs and parameters")
    batching = model.signature.max_batch_size > 0
    tensors: list[Tensor] = []
    params: dict[str, Any] = {}
    extra = payload.get(_PARAMETERS, {})
    if not isinstance(extra, dict):
        raise InvalidRequest("'parameters' must be a JSON object")
    for key, value in extra.items():
        params[key] = _parameter(key, value)
    for field, value in payload.items():
        if field == _PARAMETERS:
            continue
        spec = model.inputs.get(field)
        if spec is None:
            params[field] = _parameter(field, value)
            continue
        dims = spec.shape[1:] if batching else spec.shape
        shape = _fit(field, value, dims)
        if batching:
            shape = (1, *shape)
        where = f"field {field!r}"
        tensors.append(
            Tensor(field, spec.datatype, shape, array_from_json(value, spec.datatype, shape, where))
        )
    request = InferenceRequest(name, version, tensors, parameters=params)
    apply_request_parameters(request)
    return request


def _parameter(name: str, value: Any) -> Any:
    if isinstance(value, bool | int | float | str):
        return value
    raise InvalidRequest(
        f"field {name!r} is not an input of the model, so it is a parameter, "
        "which must be a string, number or boolean"
    )


def _fit(field: str, value: Any, dims: tuple[int, ...]) -> tuple[int, ...]:
    """The shape (without the batch dimension) a JSON value takes for an input of ``dims``."""
    try:
        got = np.shape(value)
    except ValueError:
        raise InvalidRequest(f"field {field!r}: a ragged nested list") from None
    count = math.prod(got)
    if len(got) == len(dims) and all(d in (-1, g) for d, g in zip(dims, got, strict=True)):
        return tuple(got)
    if all(d > 0 for d in dims) and math.prod(dims) == count:
        return tuple(dims)
    if len(dims) == 1 and dims[0] in (-1, count):
        return (count,)
    raise InvalidRequest(
        f"field {field!r}: {count} value(s) shaped {list(got)} do not fit the input's "
        f"dims {list(dims)} (-1 is any size)"
    )


def generate_json(response: InferenceResponse) -> dict[str, Any]:
    """One response as a generate response object."""
    out: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
    }
    for tensor in response.outputs:
        out[tensor.name] = _json_value(tensor)
    return out


def _json_value(tensor: Tensor) -> Any:
    data = tensor.data.reshape(-1)
    items: list[Any]
    if tensor.datatype == "BYTES":
        items = [
            x.decode("utf-8", errors="replace") if isinstance(x, bytes) else str(x) for x in data
        ]
    elif tensor.datatype == "BF16":
        items = bf16_to_float(data).tolist()
    else:
        items = data.tolist()
    return items[0] if len(items) == 1 else items


def sse_event(value: Any) -> bytes:
    """One server-sent event carrying ``value`` as JSON."""
    return b"data: " + encode_json(value) + b"\n\n"


class _One:
    """A decoupled model's responses for ``/generate``: one, and never a second."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.response: InferenceResponse | None = None

    async def send(self, response: InferenceResponse) -> None:
        if self.response is not None:
            raise Unsupported(
                f"model {self.model!r} answered with more than one response; read them "
                f"with POST /v2/models/{self.model}/generate_stream"
            )
        self.response = response


class _Events:
    """Writes each response as an event; the status line goes with the first."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def start(self) -> None:
        if not self.started:
            self.started = True
            await self._send({"type": "http.response.start", "status": 200, "headers": _EVENTS})

    async def event(self, value: Any) -> None:
        await self.start()
        await self._send(
            {"type": "http.response.body", "body": sse_event(value), "more_body": True}
        )

    async def send(self, response: InferenceResponse) -> None:
        await self.event(generate_json(response))

    async def end(self) -> None:
        await self.start()
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})


@needs(Role.INVOKER, model="model")
class GenerateRoute:
    """``POST .../generate`` (``stream`` False) or ``.../generate_stream`` as an ASGI app."""

    def __init__(self, ctx: TransportContext, stream: bool) -> None:
        self.ctx = ctx
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = scope.get("path_params", {})
        name: str = params["model"]
        version: str | None = params.get("version")
        events = _Events(send) if self.stream else None
        try:
            if events is None:
                answer = await self._generate(scope, receive, name, version)
                await _reply(send, 200, _JSON, encode_json(answer))
                return
            await self._generate_stream(scope, receive, name, version, events)
        except ModelportError as exc:
            if events is not None and events.started:
                await events.event({"error": exc.message})
                await events.end()
                return
            status = http_status(exc)
            await _reply(
                send, status, [*_JSON, *error_headers(exc)], encode_json({"error": exc.message})
            )
        except ClientDisconnected:
            return

    async def _prepare(
        self, scope: Scope, receive: Receive, name: str, version: str | None
    ) -> tuple[InferenceRequest, Call, ModelVersion, HeaderView]:
        """Admission's first phase, the body, the request and its Call: as ``/infer`` does."""
        pipeline = self.ctx.pipeline
        headers: dict[bytes, bytes] = dict(scope["headers"])
        timeout = headers.get(TIMEOUT_HEADER)
        deadline = (
            deadline_ns(timeout, pipeline.clock.monotonic_ns()) if timeout is not None else None
        )
        identity = scope.get(IDENTITY_SCOPE_KEY)
        view = HeaderView(headers)
        admitted = pipeline.admission.before_body(name, version, identity, view.get, "http")
        length = headers.get(b"content-length")
        body = await receive_body(
            receive,
            length.decode("latin-1") if length is not None else None,
            headers.get(b"content-encoding", b"").decode("latin-1"),
            self.ctx.max_body_bytes,
        )
        request = generate_request(decode_json(body), admitted, name, version)
        call = Call(
            Origin.REST,
            identity,
            deadline,
            view,
            request.id,
            scope.get("client"),
            trace_context(view.get),
        )
        return request, call, admitted, view

    async def _generate(
        self, scope: Scope, receive: Receive, name: str, version: str | None
    ) -> dict[str, Any]:
        request, call, admitted, view = await self._prepare(scope, receive, name, version)
        one = _One(name)
        with streaming(StreamTarget(name, one)) as target:
            response = await until_disconnect(
                scope, receive, self.ctx.pipeline.infer(request, "http", view.get, call, admitted)
            )
        if target.claimed:
            if one.response is None:
                raise InferenceFailed(f"model {name!r} answered with no response")
            response = one.response
        return generate_json(response)

    async def _generate_stream(
        self, scope: Scope, receive: Receive, name: str, version: str | None, events: _Events
    ) -> None:
        request, call, admitted, view = await self._prepare(scope, receive, name, version)
        with streaming(StreamTarget(name, events)) as target:
            response = await until_disconnect(
                scope, receive, self.ctx.pipeline.infer(request, "http", view.get, call, admitted)
            )
        if not target.claimed:
            await events.send(response)
        await events.end()


async def _reply(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def routes(ctx: TransportContext) -> list[Route]:
    generate = GenerateRoute(ctx, stream=False)
    stream = GenerateRoute(ctx, stream=True)
    return [
        Route("/v2/models/{model}/generate", generate, methods=["POST"]),
        Route("/v2/models/{model}/versions/{version}/generate", generate, methods=["POST"]),
        Route("/v2/models/{model}/generate_stream", stream, methods=["POST"]),
        Route("/v2/models/{model}/versions/{version}/generate_stream", stream, methods=["POST"]),
    ]
