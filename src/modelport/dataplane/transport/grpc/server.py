"""Building the gRPC server: the inference service and standard health checks.

Message size limits follow the HTTP body limit (64 MiB by default) rather
than gRPC's 4 MiB default, so the same tensors fit on both transports.
SO_REUSEPORT is off so a second server on a taken port fails loudly.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from modelport.config.server import ServerConfig
from modelport.dataplane.transport.context import TransportContext
from modelport.dataplane.transport.grpc.service import InferenceService
from modelport.protos import grpc_service_pb2_grpc as pb_grpc

SERVICE_NAME = "inference.GRPCInferenceService"


def build_grpc_server(
    ctx: TransportContext, config: ServerConfig
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """The server (not started) and its health servicer, for shutdown to flip."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", config.max_body_bytes),
            ("grpc.max_send_message_length", config.max_body_bytes),
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(ctx), server)  # type: ignore[no-untyped-call]
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"{config.host}:{config.grpc_port}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC to {config.host}:{config.grpc_port}")
    return server, health_servicer


async def mark_serving(health_servicer: health.aio.HealthServicer) -> None:
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
