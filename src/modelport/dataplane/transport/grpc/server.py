"""Building the gRPC server: the inference service and standard health checks.

Message size limits follow the HTTP body limit (64 MiB by default) rather
than gRPC's 4 MiB default, so the same tensors fit on both transports.
SO_REUSEPORT is off so a second server on a taken port fails loudly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from modelport.config.server import ServerConfig
from modelport.dataplane.admission.gate import Gate
from modelport.dataplane.transport.context import TransportContext
from modelport.dataplane.transport.grpc.service import InferenceService
from modelport.protos import grpc_service_pb2 as pb

SERVICE_NAME = "inference.GRPCInferenceService"


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


def build_grpc_server(
    ctx: TransportContext, config: ServerConfig, gate: Gate | None = None
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """The server (not started) and its health servicer, for shutdown to flip.

    grpc.health.v1 stays open to probes whatever ``gate`` says."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", config.max_body_bytes),
            ("grpc.max_send_message_length", config.max_body_bytes),
            ("grpc.so_reuseport", 0),
        ]
    )
    server.add_generic_rpc_handlers((_handlers(InferenceService(ctx, gate)),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"{config.host}:{config.grpc_port}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC to {config.host}:{config.grpc_port}")
    return server, health_servicer


async def mark_serving(health_servicer: health.aio.HealthServicer) -> None:
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
