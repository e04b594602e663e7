"""inference.GRPCInferenceService over the same pipeline as REST.

Each rpc decodes, calls the shared data plane and encodes; a ModelportError
becomes the status from ``errors.STATUS`` with its message. On the
bidirectional stream an error answers that one request (``error_message``)
and the stream carries on, as Triton's clients expect.

Each rpc declares the role it needs where it is defined (``@_rpc(Access(...))``:
the role, and the message field naming the model), and every call is
authenticated and authorized by that declaration before the rpc runs; the
health rpcs (ServerLive, ServerReady; grpc.health.v1 is another service) are
declared open. The check lives here rather than in an interceptor, which
cannot see the message. An rpc of the service that declares nothing stops
the service from being built. With authentication off there is no Gate and
admission returns at its first line. LogSettings both reads and changes: it
is declared for viewers, and a call that changes a setting is authorized
for the operator role too, the role REST's POST /v2/logging declares.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format

from modelport.config.pbtxt import config_to_proto
from modelport.dataplane.admission.certificates import ClientCertificate, describe_pem
from modelport.dataplane.admission.gate import Gate
from modelport.dataplane.admission.needs import Access, declare, declared
from modelport.dataplane.admission.proxies import (
    FORWARDED_FOR,
    is_trusted_proxy,
    rightmost_address,
)
from modelport.dataplane.codec.grpc_v2 import decode_request, encode_response, parameter_value
from modelport.dataplane.codec.repository import load_config_parameter
from modelport.dataplane.info import Visible
from modelport.dataplane.sharedmemory import CUDA_UNSUPPORTED, Session, owner_of
from modelport.dataplane.streaming import StreamTarget, streaming
from modelport.dataplane.transport.context import TransportContext
from modelport.dataplane.transport.grpc.errors import grpc_status, trailing_metadata
from modelport.dataplane.transport.grpc.metadata import MetadataView
from modelport.dataplane.transport.trace import trace_context
from modelport.errors import InvalidRequest, ModelportError, Unsupported
from modelport.protos import grpc_service_pb2 as pb
from modelport.protos import grpc_service_pb2_grpc as pb_grpc
from modelport.types import Call, Identity, InferenceRequest, InferenceResponse, Origin, Role

log = logging.getLogger("modelport.grpc")

T = TypeVar("T")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[T]]
#: An rpc's body: called with the admitted caller (None with authentication off).
Admitted = Callable[[Any, Any, grpc.aio.ServicerContext, Identity | None], Awaitable[T]]

#: The rpcs of GRPCInferenceService, each of which must declare what it needs.
RPC_NAMES = tuple(m.name for m in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods)

#: Both inference rpcs: the invoker role on the model the message names.
_INFER = Access(Role.INVOKER, model="model_name")

#: Shared-memory rpcs: registering is part of inferring (docs/shared-memory.md).
_SHM = Access(Role.INVOKER)

#: Triton's decoupled protocol: the request parameter asking for an empty last
#: response, and the response parameter saying whether a response is the last.
ENABLE_EMPTY_FINAL = "triton_enable_empty_final_response"
FINAL_RESPONSE = "triton_final_response"


def _rpc(access: Access) -> Callable[[Admitted[T]], Handler[T]]:
    """Declare what a unary rpc needs, admit each call by it, and map errors.

    The body runs only for an admitted caller and gets its Identity; a
    ModelportError (a refusal included) becomes the call's gRPC status.
    """

    def wrap(method: Admitted[T]) -> Handler[T]:
        @functools.wraps(method)
        async def admitted(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
            try:
                identity = await self._admit(context, access, request)
                return await method(self, request, context, identity)
            except ModelportError as exc:
                await context.abort(grpc_status(exc), exc.message, trailing_metadata(exc))
                raise  # unreachable: abort raises

        return declare(access)(admitted)

    return wrap


def _tensor_metadata(specs: Any) -> list[Any]:
    return [
        pb.ModelMetadataResponse.TensorMetadata(
            name=s.name, datatype=s.datatype, shape=list(s.shape)
        )
        for s in specs
    ]


def _authorization(context: grpc.aio.ServicerContext) -> str | None:
    """The one ``authorization`` metadata value, or None; InvalidRequest when there
    are several (which one a proxy and the server each take could differ)."""
    values = [v for k, v in context.invocation_metadata() or () if k == "authorization"]
    if len(values) > 1:
        raise InvalidRequest("send one authorization metadata entry, not several")
    return values[0] if values and isinstance(values[0], str) else None


def client_certificate(context: grpc.aio.ServicerContext) -> ClientCertificate | None:
    """The verified mTLS client certificate of the call's connection, if there is one."""
    pems = context.auth_context().get("x509_pem_cert")
    if not pems:
        return None
    try:
        return describe_pem(pems[0].decode("ascii"))
    except ValueError:
        return None


def peer_address(peer: str) -> str:
    """The address of a grpc peer string (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``), no port."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6") and ":" in rest:
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer


def _setting_value(value: Any) -> object:
    """A LogSettingsRequest value as the JSON value REST would carry: bool, int or
    str by the oneof set; None (JSON's null, refused by LogControl) when none is."""
    choice = value.WhichOneof("parameter_choice")
    return None if choice is None else getattr(value, choice)


def _log_settings_response(settings: dict[str, Any]) -> Any:
    """Triton-shaped settings as a LogSettingsResponse, each value in its oneof."""
    out = pb.LogSettingsResponse()
    for name, value in settings.items():
        entry = out.settings[name]
        if isinstance(value, bool):
            entry.bool_param = value
        elif isinstance(value, int):
            entry.uint32_param = value
        else:
            entry.string_param = str(value)
    return out


def _model_in(access: Access, message: Any) -> str | None:
    """The model a message names in the field ``access`` declares; None for none or empty."""
    return (getattr(message, access.model) or None) if access.model is not None else None


def _wants_empty_final(message: Any) -> bool:
    """Whether a stream request set ``triton_enable_empty_final_response`` true."""
    value = message.parameters.get(ENABLE_EMPTY_FINAL)
    return (
        value is not None
        and value.WhichOneof("parameter_choice") == "bool_param"
        and bool(value.bool_param)
    )


class _StreamSink:
    """Sends a decoupled model's responses to one stream request, each as it comes."""

    __slots__ = ("_request", "_shm", "_write", "target")

    def __init__(self, model: str, write: Callable[[Any], Awaitable[None]]) -> None:
        self.target = StreamTarget(model, self)
        self._write = write
        self._request: InferenceRequest | None = None
        self._shm: Session | None = None

    def bind(self, request: InferenceRequest, shm: Session) -> StreamTarget:
        """The decoded request and its shared-memory session, once known."""
        self._request = request
        self._shm = shm
        return self.target

    async def send(self, response: InferenceResponse) -> None:
        assert self._request is not None and self._shm is not None  # bound before the pipeline
        encoded = encode_response(response, self._request, self._shm)
        encoded.parameters[FINAL_RESPONSE].bool_param = False
        await self._write(pb.ModelStreamInferResponse(infer_response=encoded))


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        ctx: TransportContext,
        gate: Gate | None = None,
        trusted_proxies: frozenset[str] = frozenset(),
    ) -> None:
        undeclared = [n for n in RPC_NAMES if declared(getattr(type(self), n)) is None]
        if undeclared:
            raise TypeError(f"rpcs without a declared role: {', '.join(undeclared)}")
        self.ctx = ctx
        self.gate = gate
        self.trusted_proxies = trusted_proxies

    def _peer(self, context: grpc.aio.ServicerContext) -> str:
        """The caller's address: a trusted proxy's x-forwarded-for (``proxies.py``), else
        the connection's."""
        peer = peer_address(context.peer())
        if not self.trusted_proxies or not is_trusted_proxy(
            client_certificate(context), self.trusted_proxies
        ):
            return peer
        metadata = context.invocation_metadata() or ()
        values = [v for k, v in metadata if k == FORWARDED_FOR and isinstance(v, str)]
        return rightmost_address(values) or peer

    async def _admit(
        self, context: grpc.aio.ServicerContext, access: Access, request: Any
    ) -> Identity | None:
        """The caller, when it may do what ``access`` declares; None when auth is off or open."""
        if self.gate is None or access.role is None:
            return None
        return await self.gate.admit(
            _authorization(context),
            self._peer(context),
            access.role,
            _model_in(access, request),
            client_certificate(context),
        )

    def _visible(self, identity: Identity | None) -> Visible:
        """Which models the caller may see in listings; None (all) with auth off."""
        if self.gate is None or identity is None:
            return None
        return self.gate.visible(identity)

    @_rpc(Access(None))
    async def ServerLive(self, request: Any, context: Any, identity: Identity | None) -> Any:
        return pb.ServerLiveResponse(live=True)

    @_rpc(Access(None))
    async def ServerReady(self, request: Any, context: Any, identity: Identity | None) -> Any:
        return pb.ServerReadyResponse(ready=self.ctx.table.is_ready())

    @_rpc(Access(Role.VIEWER, model="name"))
    async def ModelReady(self, request: Any, context: Any, identity: Identity | None) -> Any:
        # Unknown models are simply not ready here, as clients of this rpc expect.
        state = self.ctx.info.model_ready(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=state.ready)

    @_rpc(Access(Role.VIEWER))
    async def ServerMetadata(self, request: Any, context: Any, identity: Identity | None) -> Any:
        server = self.ctx.info.server_metadata()
        return pb.ServerMetadataResponse(
            name=server.name, version=server.version, extensions=list(server.extensions)
        )

    @_rpc(Access(Role.VIEWER, model="name"))
    async def ModelMetadata(self, request: Any, context: Any, identity: Identity | None) -> Any:
        meta = self.ctx.info.model_metadata(request.name, request.version or None)
        return pb.ModelMetadataResponse(
            name=meta.name,
            versions=meta.versions,
            platform=meta.platform,
            inputs=_tensor_metadata(meta.inputs),
            outputs=_tensor_metadata(meta.outputs),
        )

    async def _infer(
        self,
        request: Any,
        context: grpc.aio.ServicerContext,
        identity: Identity | None,
        stream: _StreamSink | None = None,
    ) -> Any:
        """One infer message: its Call, then decode → pipeline → encode.

        The deadline is the call's ``grpc-timeout`` as the context counts it
        down, read when the message arrives (for a stream, the stream's).
        ``stream`` (ModelStreamInfer only) takes a decoupled model's responses,
        each encoded while the shared-memory session is still open.
        """
        pipeline = self.ctx.pipeline
        remaining = context.time_remaining()
        deadline = (
            pipeline.clock.monotonic_ns() + int(remaining * 1e9) if remaining is not None else None
        )
        # Admission's first phase (the gate authenticated and authorized):
        # residency, an unknown model or a full queue is refused before the
        # tensors are decoded.
        metadata = MetadataView(context)
        admitted = pipeline.admission.before_body(
            request.model_name, request.model_version or None, identity, metadata.get, "grpc"
        )
        # The caller's shared-memory regions, held until the answer is made.
        ctx = self.ctx
        shm = Session(lambda: ctx.shared_memory, owner_of(identity), ctx.max_body_bytes)
        try:
            req = decode_request(request, self.ctx.max_elements, shm)
            call = Call(
                Origin.GRPC,
                identity,
                deadline,
                metadata,
                req.id,
                context.peer(),
                trace_context(metadata.get),
            )
            if stream is None:
                resp = await pipeline.infer(req, "grpc", metadata.get, call, admitted)
            else:
                with streaming(stream.bind(req, shm)):
                    resp = await pipeline.infer(req, "grpc", metadata.get, call, admitted)
            return encode_response(resp, req, shm)
        finally:
            shm.close()

    @_rpc(_INFER)
    async def ModelInfer(self, request: Any, context: Any, identity: Identity | None) -> Any:
        return await self._infer(request, context, identity)

    @declare(_INFER)
    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> None:
        """Serve each request on the stream concurrently; answer in completion order.

        A decoupled model's responses to one request are sent in order, each
        as its own message flagged ``triton_final_response: false``; when
        the request set ``triton_enable_empty_final_response``, an empty
        response flagged true follows the last (Triton's decoupled protocol).
        Any other model's one response carries the flag true when asked for.
        A cancelled stream cancels its requests, which stops their models.

        The caller is authenticated when the stream opens and again before each
        message, through the same short identity cache as unary calls, so a key
        revoked or expired (a JWT past ``exp``) stops a long stream within that
        cache's lifetime: the stream ends with UNAUTHENTICATED, after the
        messages already admitted are answered. Each message is authorized for
        its own model (the same declaration as ModelInfer's), and a denial
        answers that message only.
        """
        write_lock = asyncio.Lock()
        peer = self._peer(context)
        header: str | None = None
        certificate: ClientCertificate | None = None
        gate = self.gate

        async def caller() -> Identity | None:
            if gate is None:
                return None
            return await gate.authenticator.authenticate(header, peer, certificate)

        try:
            if gate is not None:
                header = _authorization(context)
                certificate = client_certificate(context)
            await caller()
        except ModelportError as exc:
            await context.abort(grpc_status(exc), exc.message, trailing_metadata(exc))

        async def write(reply: Any) -> None:
            async with write_lock:
                await context.write(reply)

        async def one(msg: Any, identity: Identity | None) -> None:
            try:
                if gate is not None and identity is not None and _INFER.role is not None:
                    gate.check(identity, peer, _INFER.role, _model_in(_INFER, msg))
                stream = _StreamSink(msg.model_name, write)
                answer = await self._infer(msg, context, identity, stream)
                target = stream.target
                empty_final = _wants_empty_final(msg)
                if target.claimed and not empty_final:
                    return  # every response went out already; Triton sends nothing more
                if empty_final:
                    answer.parameters[FINAL_RESPONSE].bool_param = True
                reply = pb.ModelStreamInferResponse(infer_response=answer)
            except ModelportError as exc:
                reply = pb.ModelStreamInferResponse(
                    error_message=exc.message,
                    infer_response=pb.ModelInferResponse(
                        model_name=msg.model_name, model_version=msg.model_version, id=msg.id
                    ),
                )
            await write(reply)

        ended: ModelportError | None = None
        async with asyncio.TaskGroup() as tasks:
            async for msg in request_iterator:
                try:
                    identity = await caller()
                except ModelportError as exc:
                    # Aborting here would wrap the abort in the group's ExceptionGroup.
                    ended = exc
                    break
                tasks.create_task(one(msg, identity))
        if ended is not None:
            await context.abort(grpc_status(ended), ended.message, trailing_metadata(ended))

    @_rpc(Access(Role.VIEWER, model="name"))
    async def ModelConfig(self, request: Any, context: Any, identity: Identity | None) -> Any:
        config = self.ctx.info.model_config(request.name, request.version or None)
        return pb.ModelConfigResponse(config=config_to_proto(config))

    @_rpc(Access(Role.VIEWER, model="name"))
    async def ModelStatistics(self, request: Any, context: Any, identity: Identity | None) -> Any:
        entries = await self.ctx.info.node_statistics(
            request.name or None, request.version or None, self._visible(identity)
        )
        out = pb.ModelStatisticsResponse()
        for entry in entries:
            json_format.ParseDict(entry, out.model_stats.add())
        return out

    @_rpc(Access(Role.VIEWER))
    async def RepositoryIndex(self, request: Any, context: Any, identity: Identity | None) -> Any:
        entries = self.ctx.info.repository_index(request.ready, self._visible(identity))
        out = pb.RepositoryIndexResponse()
        for e in entries:
            out.models.add(name=e.name, version=e.version, state=e.state, reason=e.reason)
        return out

    @_rpc(Access(Role.OPERATOR, model="model_name"))
    async def RepositoryModelLoad(
        self, request: Any, context: Any, identity: Identity | None
    ) -> Any:
        params = {k: parameter_value(v) for k, v in request.parameters.items()}
        config = load_config_parameter(params or None)
        actor = identity.actor if identity is not None else None
        await self.ctx.repository.load(request.model_name, config, actor)
        return pb.RepositoryModelLoadResponse()

    @_rpc(Access(Role.OPERATOR, model="model_name"))
    async def RepositoryModelUnload(
        self, request: Any, context: Any, identity: Identity | None
    ) -> Any:
        actor = identity.actor if identity is not None else None
        await self.ctx.repository.unload(request.model_name, actor)
        return pb.RepositoryModelUnloadResponse()

    @_rpc(Access(Role.VIEWER))
    async def LogSettings(self, request: Any, context: Any, identity: Identity | None) -> Any:
        """Triton's logging extension: an empty ``settings`` reads, any other changes
        the settings it names (the operator role), and both answer every setting."""
        control = self.ctx.log_control
        if control is None:
            raise Unsupported("this server does not serve the logging extension")
        if not request.settings:
            return _log_settings_response(control.triton_settings())
        if self.gate is not None and identity is not None:
            self.gate.check(identity, self._peer(context), Role.OPERATOR, None)
        changes = {name: _setting_value(value) for name, value in request.settings.items()}
        actor = identity.actor if identity is not None else None
        return _log_settings_response(await control.change(changes, actor))

    @_rpc(_SHM)
    async def SystemSharedMemoryStatus(
        self, request: Any, context: Any, identity: Identity | None
    ) -> Any:
        regions = self.ctx.shared_memory.status(owner_of(identity), request.name or None)
        out = pb.SystemSharedMemoryStatusResponse()
        for r in regions:
            status = out.regions[r.name]
            status.name = r.name
            status.key = r.key
            status.offset = r.offset
            status.byte_size = r.byte_size
        return out

    @_rpc(_SHM)
    async def SystemSharedMemoryRegister(
        self, request: Any, context: Any, identity: Identity | None
    ) -> Any:
        await self.ctx.register_region(
            owner_of(identity), request.name, request.key, request.offset, request.byte_size
        )
        return pb.SystemSharedMemoryRegisterResponse()

    @_rpc(_SHM)
    async def SystemSharedMemoryUnregister(
        self, request: Any, context: Any, identity: Identity | None
    ) -> Any:
        await self.ctx.unregister_region(owner_of(identity), request.name or None)
        return pb.SystemSharedMemoryUnregisterResponse()

    @_rpc(_SHM)
    async def CudaSharedMemoryStatus(
        self, request: Any, context: Any, identity: Identity | None
    ) -> Any:
        raise Unsupported(CUDA_UNSUPPORTED)

    @_rpc(_SHM)
    async def CudaSharedMemoryRegister(
        self, request: Any, context: Any, identity: Identity | None
    ) -> Any:
        raise Unsupported(CUDA_UNSUPPORTED)

    @_rpc(_SHM)
    async def CudaSharedMemoryUnregister(
        self, request: Any, context: Any, identity: Identity | None
    ) -> Any:
        raise Unsupported(CUDA_UNSUPPORTED)
