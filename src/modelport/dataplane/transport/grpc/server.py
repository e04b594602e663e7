"""Building the gRPC server: the inference service and standard health checks.

Message size limits follow the HTTP body limit (64 MiB by default) rather
than gRPC's 4 MiB default, so the same tensors fit on both transports.
SO_REUSEPORT is off so a second server on a taken port fails loudly; the
port is bound before models load (``bind_grpc_server``) and the services are
added once they have.

TLS: the port is bound with ``grpc.dynamic_ssl_server_credentials``, whose
fetcher gRPC calls at each new handshake; it hands over the rotated
material once per generation, so new connections get the new certificate
and open ones keep theirs. One gap: gRPC's dynamic credentials either
require a client certificate or never ask for one, so with optional mTLS
(``tls_client_auth: optional``) the port uses static credentials that ask
for one, and a rotated certificate reaches gRPC only after a restart (a
warning says so at start).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2_grpc

from modelport.config.server import ServerConfig
from modelport.dataplane.admission.gate import Gate
from modelport.dataplane.transport.context import TransportContext
from modelport.dataplane.transport.grpc.health import ReadinessHealth
from modelport.dataplane.transport.grpc.service import InferenceService
from modelport.dataplane.transport.listen import address_of, check_free
from modelport.errors import ListenFailed
from modelport.protos import grpc_service_pb2 as pb
from modelport.tls.material import TlsMaterial
from modelport.tls.rotation import TlsRotation

SERVICE_NAME = "inference.GRPCInferenceService"

log = logging.getLogger("modelport.grpc")


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


def _parser(cls: Any) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Any]]:
    """Parse a request in the handler, so a malformed message is INVALID_ARGUMENT.

    Left to grpc's deserializer hook, a parse failure would surface as UNKNOWN.
    """

    async def parse(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            return cls.FromString(raw)
        except DecodeError as exc:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"malformed {cls.__name__} message: {exc}"
            )

    return parse


def _handlers(servicer: InferenceService) -> grpc.GenericRpcHandler:
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        parse = _parser(getattr(pb, method.input_type.name))
        behavior = getattr(servicer, method.name)
        if method.client_streaming:

            def stream(parse: Any = parse, behavior: Any = behavior) -> Any:
                async def handle(raws: AsyncIterator[bytes], context: Any) -> None:
                    async def parsed() -> AsyncIterator[Any]:
                        async for raw in raws:
                            yield await parse(raw, context)

                    await behavior(parsed(), context)

                return handle

            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                stream(), response_serializer=_serialize
            )
        else:

            def unary(parse: Any = parse, behavior: Any = behavior) -> Any:
                async def handle(raw: bytes, context: Any) -> Any:
                    return await behavior(await parse(raw, context), context)

                return handle

            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                unary(), response_serializer=_serialize
            )
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


def _configuration(material: TlsMaterial) -> Any:
    return grpc.ssl_server_certificate_configuration(
        [(material.key_pem, material.cert_pem)], root_certificates=material.client_ca_pem
    )


def tls_credentials(tls: TlsRotation) -> grpc.ServerCredentials:
    """Server credentials that follow ``tls``'s rotations (see the module docstring)."""
    material = tls.material
    if tls.files.client_ca is not None and not tls.files.client_auth_required:
        log.warning(
            "optional client certificates on gRPC: certificate rotation reaches the gRPC "
            "port only after a restart"
        )
        return grpc.ssl_server_credentials(
            [(material.key_pem, material.cert_pem)],
            root_certificates=material.client_ca_pem,
            require_client_auth=False,
        )
    lock = threading.Lock()
    served = [tls.generation]

    def fetch() -> Any:
        # Called by gRPC's threads at each handshake: None keeps the current pair.
        with lock:
            if served[0] == tls.generation:
                return None
            served[0] = tls.generation
            return _configuration(tls.material)

    return grpc.dynamic_ssl_server_credentials(
        _configuration(material),
        fetch,
        require_client_authentication=tls.files.client_ca is not None,
    )


def bind_grpc_server(
    config: ServerConfig, tls: TlsRotation | None = None, *, shared: bool = False
) -> tuple[grpc.aio.Server, int]:
    """The server (not started, no services yet) with its port bound, and that port.

    gRPC listens as soon as the port is added, so this runs before models
    load; a taken port raises ListenFailed naming it (see ``listen.py``).
    ``shared``: one worker of a node, on a port its supervisor holds
    (SO_REUSEPORT), which checked it was free before any worker started.
    """
    if not shared:
        check_free(config.host, config.grpc_port, "gRPC")
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", config.max_body_bytes),
            ("grpc.max_send_message_length", config.max_body_bytes),
            ("grpc.so_reuseport", 1 if shared else 0),
            # A TLS handshake gets the time an HTTP request head gets (gRPC's default: 120 s).
            ("grpc.server_handshake_timeout_ms", max(1, round(config.header_timeout * 1000))),
        ]
    )
    address = address_of(config.host, config.grpc_port)
    try:
        bound = (
            server.add_insecure_port(address)
            if tls is None
            else server.add_secure_port(address, tls_credentials(tls))
        )
    except RuntimeError:
        # Taken between the check and now: gRPC has logged its own line already.
        bound = 0
    if bound == 0:
        raise ListenFailed(f"cannot listen on {address} (gRPC): the address cannot be bound")
    return server, bound


def add_services(
    server: grpc.aio.Server,
    ctx: TransportContext,
    gate: Gate | None = None,
    trusted_proxies: frozenset[str] = frozenset(),
) -> ReadinessHealth:
    """The inference service and grpc.health.v1; the health servicer, for shutdown to flip.

    grpc.health.v1 stays open to probes whatever ``gate`` says, and answers
    what ServerReady answers (``ReadinessHealth``)."""
    service = InferenceService(ctx, gate, trusted_proxies)
    server.add_generic_rpc_handlers((_handlers(service),))
    health_servicer = ReadinessHealth(ctx.table.is_ready, ("", SERVICE_NAME))
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    return health_servicer


async def mark_serving(health_servicer: ReadinessHealth) -> None:
    """Every port is up: grpc.health.v1 answers the server's readiness from now on."""
    health_servicer.open()
