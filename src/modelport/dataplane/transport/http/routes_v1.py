"""KServe's V1 protocol, for clients written for it.

``GET /v1/models`` lists the names of the models ready to serve that the
caller may see (``{"models": [...]}``); ``GET /v1/models/{m}`` says whether one
is ready. ``POST /v1/models/{m}:predict`` takes ``instances`` (a list of rows) or
``inputs`` (rows, or a mapping of input name to rows) and answers
``predictions``: one value per row for a single-output model, or one object
per row mapping output names to values.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelport.dataplane.admission.identity import IDENTITY_SCOPE_KEY, VISIBLE_SCOPE_KEY
from modelport.dataplane.admission.needs import needs
from modelport.dataplane.codec.jsonbody import decode_json
from modelport.dataplane.codec.tensors import array_from_json, array_to_json, check_shape
from modelport.dataplane.info import Visible
from modelport.dataplane.table import ModelVersion
from modelport.dataplane.transport.context import TransportContext
from modelport.dataplane.transport.http.body import read_body
from modelport.dataplane.transport.http.headers import TIMEOUT_HEADER, deadline_ns
from modelport.dataplane.transport.http.responses import json_response
from modelport.dataplane.transport.trace import trace_context
from modelport.errors import InvalidRequest
from modelport.types import Call, InferenceRequest, Origin, Role, Tensor

#: The deadline header (``headers.TIMEOUT_HEADER``) as Starlette's headers spell names.
TIMEOUT_NAME = TIMEOUT_HEADER.decode("latin-1")


def _shape_of(rows: list[Any]) -> list[int]:
    shape = [len(rows)]
    probe: Any = rows[0] if rows else None
    while isinstance(probe, list):
        shape.append(len(probe))
        probe = probe[0] if probe else None
    return shape


def _tensor(model: ModelVersion, name: str, rows: Any, max_elements: int) -> Tensor:
    where = f"input {name!r}"
    if not isinstance(rows, list):
        raise InvalidRequest(f"{where}: expected a list of rows")
    spec = model.inputs.get(name)
    if spec is None:
        raise InvalidRequest(f"unknown input {name!r}; expected {', '.join(model.inputs)}")
    shape = check_shape(_shape_of(rows), max_elements, where)
    return Tensor(name, spec.datatype, shape, array_from_json(rows, spec.datatype, shape, where))


def decode_v1(model: ModelVersion, body: Any, max_elements: int) -> list[Tensor]:
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object with 'instances' or 'inputs'")
    data = body.get("instances", body.get("inputs"))
    if data is None:
        raise InvalidRequest("request body needs 'instances' or 'inputs'")
    if isinstance(data, dict):
        return [_tensor(model, k, v, max_elements) for k, v in data.items()]
    if len(model.inputs) != 1:
        raise InvalidRequest(
            f"model {model.name!r} has {len(model.inputs)} inputs; send 'inputs' as an object "
            "mapping input names to rows"
        )
    return [_tensor(model, next(iter(model.inputs)), data, max_elements)]


def routes(ctx: TransportContext) -> list[Route]:
    @needs(Role.VIEWER)
    async def list_models(request: Request) -> Response:
        """KServe v1's listing: the names of the models ready to serve that the caller may see."""
        visible: Visible = request.scope.get(VISIBLE_SCOPE_KEY)
        entries = ctx.info.repository_index(True, visible)
        return json_response({"models": sorted({e.name for e in entries})})

    @needs(Role.VIEWER, model="model")
    async def model_status(request: Request) -> Response:
        state = ctx.info.model_ready(request.path_params["model"], None)
        if state.error is not None:
            raise state.error
        return json_response({"name": state.name, "ready": True})

    @needs(Role.INVOKER, model="model")
    async def predict(request: Request) -> Response:
        headers = request.headers
        timeout = headers.get(TIMEOUT_NAME)
        deadline = (
            deadline_ns(timeout, ctx.pipeline.clock.monotonic_ns()) if timeout is not None else None
        )
        # Admission's first phase, before the body: residency, the model, and overload.
        scope = request.scope
        identity = scope.get(IDENTITY_SCOPE_KEY)
        model = ctx.pipeline.admission.before_body(
            request.path_params["model"], None, identity, headers.get, "http"
        )
        raw = await read_body(request, ctx.max_body_bytes)
        body = decode_json(raw)
        inputs = decode_v1(model, body, ctx.max_elements)
        # No version: the model's traffic policy, if any, picks one like on /v2.
        req = InferenceRequest(model.name, None, inputs)
        call = Call(
            Origin.REST,
            identity,
            deadline,
            headers,
            None,
            scope.get("client"),
            trace_context(headers.get),
        )
        resp = await ctx.pipeline.infer(req, "http", headers.get, call, model)
        outputs = {t.name: t for t in resp.outputs}
        if len(outputs) == 1:
            (only,) = outputs.values()
            predictions: list[Any] = _rows(only)
        else:
            columns = {n: _rows(t) for n, t in outputs.items()}
            count = len(next(iter(columns.values()))) if columns else 0
            predictions = [{n: col[i] for n, col in columns.items()} for i in range(count)]
        return json_response({"predictions": predictions})

    return [
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model}", model_status, methods=["GET"]),
        Route("/v1/models/{model}:predict", predict, methods=["POST"]),
    ]


def _rows(t: Tensor) -> list[Any]:
    flat = array_to_json(t.data, t.datatype)
    if not t.shape:
        return flat
    rows = t.shape[0]
    per = len(flat) // rows if rows else 0
    if len(t.shape) == 1:
        return flat
    return [_nest(flat[i * per : (i + 1) * per], list(t.shape[1:])) for i in range(rows)]


def _nest(flat: list[Any], shape: list[int]) -> Any:
    if len(shape) <= 1:
        return flat
    step = len(flat) // shape[0] if shape[0] else 0
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]
