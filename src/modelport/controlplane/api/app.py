"""The management API, mounted at ``/api/v1`` on the REST port.

Handlers are thin: they parse, call the registry, the traffic manager or the
canary controller, and record what changed. Every error leaves in the data
plane's shape with a ``code`` (see errors.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from functools import cache
from typing import Annotated, Any, cast

from fastapi import FastAPI, Header, Path, Query, Response
from fastapi.exceptions import HTTPException
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Message, Receive

from modelport import __version__
from modelport.config.server import MANAGEMENT_BODY_BYTES
from modelport.controlplane.announce import Announce, nobody
from modelport.controlplane.api import docs_assets, openapi_inference, schemas
from modelport.controlplane.api.errors import install_error_handlers
from modelport.controlplane.api.jobs import add_job_routes
from modelport.controlplane.canary import CanaryController
from modelport.controlplane.jobs import JobRunner
from modelport.controlplane.registry import Registry
from modelport.controlplane.store import (
    AuditLog,
    CanaryStore,
    PolicyStore,
    StoredCanary,
    StoredPolicy,
)
from modelport.controlplane.traffic import LOCAL, TrafficManager
from modelport.dataplane.admission.identity import IDENTITY_SCOPE_KEY, VISIBLE_SCOPE_KEY
from modelport.dataplane.admission.needs import needs
from modelport.errors import InvalidRequest, ModelportError, NotFound, PayloadTooLarge
from modelport.types import Identity, Role

API_VERSION = "1.0"

ModelName = Annotated[str, Path(max_length=256, description="Model name")]
VersionNumber = Annotated[str, Path(pattern=r"^[0-9]{1,18}$", description="Version number")]
IfMatch = Annotated[
    str | None,
    Header(
        description="The revision this change replaces (the ETag of GET .../traffic); "
        "0 to create. Required: 428 without it."
    ),
]
_REVISION_REQUIRED = "If-Match is required: send the revision from GET .../traffic (0 to create)"


@dataclass(frozen=True)
class ManagementServices:
    registry: Registry
    policies: PolicyStore
    canaries: CanaryStore
    audit: AuditLog
    traffic: TrafficManager
    canary: CanaryController
    announce: Announce = nobody
    """Tells the node's other workers of a version loaded or unloaded here."""
    jobs: JobRunner | None = None
    """Asynchronous inference jobs (/jobs routes); None: the routes are not served."""


def _actor(request: Request) -> str:
    """Who made a change: the authenticated caller, or "local" when authentication is off."""
    identity = request.scope.get(IDENTITY_SCOPE_KEY)
    return identity.actor if isinstance(identity, Identity) else LOCAL


def _is_json(content_type: str | None) -> bool:
    """``application/json`` or any ``application/<name>+json``, with or without parameters."""
    if content_type is None:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    kind, _, subtype = media.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def _has_body(headers: Headers) -> bool:
    length = headers.get("content-length")
    return "transfer-encoding" in headers or (length is not None and length.strip() != "0")


def _check_declared(headers: Headers) -> None:
    """Refuse a declared Content-Length over ``MANAGEMENT_BODY_BYTES`` before reading a byte."""
    declared = headers.get("content-length", "").strip()
    if declared.isascii() and declared.isdigit() and int(declared) > MANAGEMENT_BODY_BYTES:
        raise PayloadTooLarge(
            f"request body of {declared} bytes is over the limit of "
            f"{MANAGEMENT_BODY_BYTES} bytes for management requests"
        )


async def _read_limited(request: Request) -> bytes:
    """The whole body, refused as soon as it grows past ``MANAGEMENT_BODY_BYTES``.

    Counted as it arrives, so a body streamed without a Content-Length (or
    with a false one) costs at most the limit in memory; the transport drops
    the rest unread once the 413 is answered.
    """
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MANAGEMENT_BODY_BYTES:
                raise PayloadTooLarge(
                    f"request body is over the limit of {MANAGEMENT_BODY_BYTES} bytes "
                    f"for management requests"
                )
            chunks.append(chunk)
    except ClientDisconnect:
        raise InvalidRequest("the client closed the connection before sending the body") from None
    return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A receive that hands FastAPI the body read already, then waits on the connection."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class _CheckedFirst(APIRoute):
    """A route whose preconditions are checked before FastAPI reads the body.

    FastAPI parses and validates a body before any handler or dependency
    runs, so without this a change lacking If-Match would be judged on its
    body (400) instead of its missing precondition, and a form-encoded body
    would be refused as malformed JSON. FastAPI would also read a body of
    any size (up to the transport's inference limit) before parsing it. In
    order:
    - a declared Content-Length over ``MANAGEMENT_BODY_BYTES`` (1 MiB): 413;
    - a route that declares the ``If-Match`` header (``IfMatch``) needs it: 428;
    - a route that takes a body takes JSON (``application/json`` or
      ``application/*+json``): any other Content-Type, or none, is 415;
    - sent uncompressed: any Content-Encoding but ``identity`` is 415 (the
      bodies are small; inflating would only add a way to spend memory);
    - the body is read here, and refused with 413 once it grows past the limit.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        needs_revision = any(p.alias.lower() == "if-match" for p in self.dependant.header_params)
        takes_body = self.body_field is not None

        async def checked(request: Request) -> Response:
            headers = request.headers
            _check_declared(headers)
            if needs_revision and "if-match" not in headers:
                raise HTTPException(428, _REVISION_REQUIRED)
            if takes_body and _has_body(headers):
                content_type = headers.get("content-type")
                if not _is_json(content_type):
                    sent = "no Content-Type" if content_type is None else repr(content_type)
                    raise HTTPException(
                        415,
                        f"the body must be JSON, sent with Content-Type: application/json "
                        f"(got {sent})",
                    )
                encoding = headers.get("content-encoding", "identity").strip().lower()
                if encoding not in ("", "identity"):
                    raise HTTPException(
                        415,
                        f"Content-Encoding {encoding!r} is not supported by the management "
                        f"API: send the JSON uncompressed",
                    )
                body = await _read_limited(request)
                request = Request(request.scope, _replaying(body, request.receive))
            return await handler(request)

        return checked


def _revision(if_match: str | None) -> int:
    """If-Match carries the policy revision, bare or quoted as an entity tag."""
    if if_match is None:
        raise HTTPException(428, _REVISION_REQUIRED)
    value = if_match.strip().removeprefix("W/").strip('"')
    if not value.isdigit() or len(value) > 18:
        raise InvalidRequest(f"If-Match: expected a revision number, got {if_match!r}")
    return int(value)


def _policy_state(services: ManagementServices, model: str, stored: StoredPolicy | None) -> Any:
    windows = {}
    if stored is not None:
        for route in stored.body.get("routes", []):
            version = str(route.get("version"))
            windows[version] = asdict(services.traffic.traffic.window(model, version))
        shadow = stored.body.get("shadow")
        if isinstance(shadow, dict):
            version = str(shadow.get("version"))
            windows[version] = asdict(services.traffic.traffic.window(model, version))
    return schemas.TrafficState(
        model=model,
        revision=stored.revision if stored is not None else 0,
        policy=stored.body if stored is not None else None,
        updated_at=stored.updated_at if stored is not None else None,
        updated_by=stored.updated_by if stored is not None else None,
        windows=windows,
    )


def _canary_state(services: ManagementServices, canary: StoredCanary) -> schemas.CanaryState:
    window = None
    if canary.state in ("running", "paused"):
        window = asdict(services.traffic.traffic.window(canary.model, canary.body["version"]))
    return schemas.CanaryState(
        model=canary.model,
        state=canary.state,
        revision=canary.revision,
        updated_at=canary.updated_at,
        spec=canary.body,
        window=window,
    )


def build_api(services: ManagementServices, status_of: Any) -> FastAPI:
    """The /api/v1 application; ``status_of`` is the REST transport's error table."""
    registry, policies, audit, manager, canaries = (
        services.registry,
        services.policies,
        services.audit,
        services.traffic,
        services.canary,
    )
    api = FastAPI(
        title="modelport management API",
        version=API_VERSION,
        description=(
            "Versions, traffic policies, canaries and history. v1 only ever gains "
            "fields and endpoints; nothing a v1 client relies on changes."
        ),
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
        responses={
            400: {"model": schemas.ErrorBody},
            404: {"model": schemas.ErrorBody},
            409: {"model": schemas.ErrorBody},
            415: {"model": schemas.ErrorBody, "description": "A body that is not JSON"},
        },
    )
    api.router.route_class = _CheckedFirst
    install_error_handlers(api, status_of)
    # Each route declares the role it needs next to its handler (reads viewer,
    # changes operator); the OpenAPI document FastAPI serves is a read.
    for route in api.routes:
        if isinstance(route, Route) and route.path == api.openapi_url:
            needs(Role.VIEWER)(route.endpoint)

    def model_info(name: str) -> schemas.ModelInfo:
        states = registry.version_states(name)
        policy = manager.traffic.get(name)
        weights = {r.version: r.weight for r in policy.routes} if policy is not None else {}
        stored = policies.get(name)
        canary = services.canaries.get(name)
        return schemas.ModelInfo(
            name=name,
            versions=[
                schemas.VersionInfo(version=v, state=state, reason=reason, weight=weights.get(v))
                for v, (state, reason) in states.items()
            ],
            traffic_revision=stored.revision if stored is not None else 0,
            canary=canary.state if canary is not None else None,
        )

    async def changed(
        request: Request,
        model: str,
        version: str,
        action: str,
        body: schemas.Reason | None,
    ) -> schemas.VersionChange:
        """Record a version load or unload in the history and say where it stands now."""
        await asyncio.to_thread(
            audit.record,
            model,
            action,
            actor=_actor(request),
            detail={"version": version},
            reason=body.reason if body else None,
        )
        state, reason = registry.version_states(model)[version]
        return schemas.VersionChange(model=model, version=version, state=state, reason=reason)

    @api.get("/models", response_model=schemas.ModelList, summary="Models, versions, states")
    @needs(Role.VIEWER)
    async def list_models(request: Request) -> schemas.ModelList:
        visible = request.scope.get(VISIBLE_SCOPE_KEY)

        def read() -> schemas.ModelList:
            names = [n for n in registry.model_names() if visible is None or visible(n)]
            return schemas.ModelList(models=[model_info(n) for n in names])

        return await asyncio.to_thread(read)

    @api.get("/models/{model}", response_model=schemas.ModelInfo, summary="One model")
    @needs(Role.VIEWER, model="model")
    async def get_model(model: ModelName) -> schemas.ModelInfo:
        return await asyncio.to_thread(model_info, model)

    @api.post(
        "/models/{model}/versions/{version}/load",
        response_model=schemas.VersionChange,
        summary="Load a version (kept loaded across repository polls)",
    )
    @needs(Role.OPERATOR, model="model")
    async def load_version(
        request: Request,
        model: ModelName,
        version: VersionNumber,
        body: schemas.Reason | None = None,
    ) -> schemas.VersionChange:
        await registry.load_model_version(model, int(version))
        await services.announce("version.load", {"model": model, "version": version})
        return await changed(request, model, version, "version.load", body)

    @api.post(
        "/models/{model}/versions/{version}/unload",
        response_model=schemas.VersionChange,
        summary="Unload a version; refused while a traffic policy or canary uses it",
    )
    @needs(Role.OPERATOR, model="model")
    async def unload_version(
        request: Request,
        model: ModelName,
        version: VersionNumber,
        body: schemas.Reason | None = None,
    ) -> schemas.VersionChange:
        if version not in registry.version_states(model):
            raise NotFound(f"unknown version {version} of model {model!r}")
        await manager.unload_checked(
            model, [version], lambda: registry.unload_model_version(model, int(version))
        )
        await services.announce("version.unload", {"model": model, "version": version})
        return await changed(request, model, version, "version.unload", body)

    @api.get(
        "/models/{model}/traffic",
        response_model=schemas.TrafficState,
        summary="The traffic policy, its revision and each version's live window",
    )
    @needs(Role.VIEWER, model="model")
    async def get_traffic(model: ModelName, response: Response) -> Any:
        stored = await asyncio.to_thread(manager.get, model)
        state = _policy_state(services, model, stored)
        response.headers["ETag"] = f'"{state.revision}"'
        return state

    @api.put(
        "/models/{model}/traffic",
        response_model=schemas.TrafficState,
        summary="Replace the traffic policy (If-Match: the revision it replaces, 0 to create)",
        responses={428: {"model": schemas.ErrorBody, "description": "No If-Match"}},
    )
    @needs(Role.OPERATOR, model="model")
    async def put_traffic(
        request: Request,
        model: ModelName,
        response: Response,
        body: schemas.PolicyBody,
        if_match: IfMatch = None,
    ) -> Any:
        expected = _revision(if_match)
        # The policy as sent (no defaults filled in): TrafficPolicy.from_body has the last word.
        fields = body.model_dump(exclude_unset=True, exclude={"reason"})
        saved = await manager.put(
            model,
            fields,
            expected if expected > 0 else None,
            actor=_actor(request),
            reason=body.reason,
        )
        response.headers["ETag"] = f'"{saved.revision}"'
        return _policy_state(services, model, saved)

    @api.delete(
        "/models/{model}/traffic",
        status_code=204,
        summary="Remove the policy: the highest ready version answers again",
        responses={428: {"model": schemas.ErrorBody, "description": "No If-Match"}},
    )
    @needs(Role.OPERATOR, model="model")
    async def delete_traffic(
        request: Request, model: ModelName, if_match: IfMatch = None
    ) -> Response:
        await manager.delete(model, _revision(if_match), actor=_actor(request))
        return Response(status_code=204)

    @api.post(
        "/models/{model}/canary",
        response_model=schemas.CanaryState,
        status_code=201,
        summary="Start a canary: stepped weights guarded by SLOs",
    )
    @needs(Role.OPERATOR, model="model")
    async def start_canary(
        request: Request,
        model: ModelName,
        body: schemas.CanaryBody,
    ) -> schemas.CanaryState:
        spec = body.model_dump(exclude_unset=True)
        return _canary_state(services, await canaries.begin(model, spec, actor=_actor(request)))

    @api.get("/models/{model}/canary", response_model=schemas.CanaryState)
    @needs(Role.VIEWER, model="model")
    async def get_canary(model: ModelName) -> schemas.CanaryState:
        registry.version_states(model)
        return _canary_state(services, await asyncio.to_thread(canaries.get, model))

    for action in ("pause", "resume", "promote", "abort"):
        _add_canary_action(api, services, action)

    @api.post(
        "/models/{model}/rollback",
        response_model=schemas.TrafficState,
        summary="Abort a running canary, or put back the previous traffic policy",
    )
    @needs(Role.OPERATOR, model="model")
    async def rollback(
        request: Request, model: ModelName, body: schemas.Reason | None = None
    ) -> Any:
        reason = body.reason if body else None
        if canaries.is_active(model):
            await canaries.abort(model, actor=_actor(request), reason=reason or "rollback")
            return _policy_state(services, model, await asyncio.to_thread(policies.get, model))
        saved = await manager.rollback(model, actor=_actor(request), reason=reason)
        return _policy_state(services, model, saved)

    @api.get("/models/{model}/history", response_model=schemas.History)
    @needs(Role.VIEWER, model="model")
    async def model_history(
        model: ModelName,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        before: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    ) -> schemas.History:
        if model not in registry.model_names() and not await asyncio.to_thread(
            audit.history, model, limit=1
        ):
            raise NotFound(f"unknown model {model!r}")
        return await _history(audit, model, limit, before)

    @api.get("/history", response_model=schemas.History, summary="Every model's changes")
    @needs(Role.VIEWER)
    async def all_history(
        request: Request,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        before: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    ) -> schemas.History:
        found = await _history(audit, None, limit, before)
        visible = request.scope.get(VISIBLE_SCOPE_KEY)
        if visible is not None:
            # Paging still follows the unfiltered ids, so no page skips an event.
            found.events = [e for e in found.events if visible(e.model)]
        return found

    if services.jobs is not None:
        add_job_routes(api, services.jobs)
    return api


def _add_canary_action(api: FastAPI, services: ManagementServices, action: str) -> None:
    @needs(Role.OPERATOR, model="model")
    async def handler(
        request: Request, model: ModelName, body: schemas.Reason | None = None
    ) -> Any:
        services.registry.version_states(model)
        canaries = services.canary
        if action == "pause":
            saved = await canaries.pause(model, actor=_actor(request))
        elif action == "resume":
            saved = await canaries.resume(model, actor=_actor(request))
        elif action == "promote":
            saved = await canaries.promote(model, actor=_actor(request))
        else:
            saved = await canaries.abort(
                model, actor=_actor(request), reason=body.reason if body else None
            )
        return _canary_state(services, saved)

    api.post(
        f"/models/{{model}}/canary/{action}",
        response_model=schemas.CanaryState,
        summary=f"{action.capitalize()} the model's canary",
        name=f"canary_{action}",
    )(handler)


class _Unserved:
    """The services of an API built only for its OpenAPI document: none is ever called."""

    def __getattr__(self, name: str) -> Any:
        return None


def _unserved_status(exc: ModelportError) -> int:
    return 500


def docs_routes(management: FastAPI | None = None) -> list[BaseRoute]:
    """``/docs`` and what it shows, served from this host (no CDN).

    - ``/docs``: Swagger UI over ``/openapi.json`` (docs_assets.py);
    - ``/docs/assets/{name}``: Swagger UI's files, from the ``swagger_ui_bundle`` package;
    - ``/openapi.json``: one OpenAPI 3.1 document for every REST route, the data
      plane's (openapi_inference.py) and the management API's under ``/api/v1``
      (which still serves its own at ``/api/v1/openapi.json``);
    - ``/docs/openapi-3.0.json``: the same as OpenAPI 3.0, for a Swagger UI before 5.

    The management API's part comes from ``management`` (the API built by
    ``build_api``) or, without it, from an API built for its document alone:
    its routes and schemas are the same code's either way.

    Each needs the ``viewer`` role, like ``/api/v1/openapi.json``: with
    authentication on, a browser reaches them only with credentials
    (docs/management-api.md).
    """

    @cache
    def documents() -> dict[str, bytes]:
        """Both documents, built on first use (off the event loop) and kept."""
        api = management or build_api(cast(ManagementServices, _Unserved()), _unserved_status)
        combined = openapi_inference.combined_document(api.openapi(), __version__)
        return {
            "3.1": json.dumps(combined).encode(),
            "3.0": json.dumps(docs_assets.as_openapi_30(combined)).encode(),
        }

    async def document(version: str) -> Response:
        built = await asyncio.to_thread(documents)
        return Response(
            built[version], media_type="application/json", headers={"Cache-Control": "no-cache"}
        )

    @needs(Role.VIEWER)
    async def page(request: Request) -> HTMLResponse:
        openapi_url = "/openapi.json"
        if docs_assets.swagger_ui_major() < 5:
            openapi_url = "/docs/openapi-3.0.json"  # Swagger UI 4 renders 3.0 only
        return await asyncio.to_thread(docs_assets.page, request, openapi_url, "modelport API")

    @needs(Role.VIEWER)
    async def asset(request: Request) -> Response:
        found = await asyncio.to_thread(
            docs_assets.asset_response, request, request.path_params["name"]
        )
        if found is None:
            raise HTTPException(404)
        return found

    @needs(Role.VIEWER)
    async def openapi(request: Request) -> Response:
        return await document("3.1")

    @needs(Role.VIEWER)
    async def openapi_30(request: Request) -> Response:
        return await document("3.0")

    return [
        Route("/docs", page, methods=["GET"]),
        Route("/docs/assets/{name}", asset, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/docs/openapi-3.0.json", openapi_30, methods=["GET"]),
    ]


async def _history(
    audit: AuditLog, model: str | None, limit: int, before: int | None
) -> schemas.History:
    events = await asyncio.to_thread(audit.history, model, limit=limit, before_id=before)
    infos = [schemas.EventInfo.model_validate(e, from_attributes=True) for e in events]
    return schemas.History(events=infos, next_before=infos[-1].id if len(infos) == limit else None)


__all__ = ["API_VERSION", "ManagementServices", "ModelportError", "build_api", "docs_routes"]
