"""The gRPC floor: a bare ``grpc.aio`` server whose ModelInfer returns a fixed answer.

    python benchmarks/grpc_floor.py --port 8001 --model mlp

It answers what perf_analyzer asks before and during a run (ServerLive,
ServerReady, ServerMetadata, ModelReady, ModelMetadata, ModelConfig,
ModelStatistics) for one model as benchmarks/models.py describes it, and
every ModelInfer with the same prebuilt ModelInferResponse (the model's
outputs as zeros in ``raw_output_contents``) without looking at the
request. Its CPU time per request is what grpcio's asyncio server costs
before any inference server work: a gRPC server in Python cannot spend
less per request under the same load.

ModelStatistics reports the ModelInfer calls answered so far as the
success count, so the benchmark counts served requests the same way for
this server and for modelport.

Like grpc_load.py it uses tritonclient's generated messages and must run in
its own process, apart from ``modelport.protos``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import grpc
import models
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

#: The models it can stand in for; both answer ``y`` FP32 [N, 10].
MODELS = ("mlp", "cnn")
CLASSES = 10
FP32_BYTES = 4


def _metadata(spec: models.ModelSpec) -> service_pb2.ModelMetadataResponse:
    reply = service_pb2.ModelMetadataResponse(name=spec.name, versions=["1"], platform="onnx")
    reply.inputs.add(name=spec.input_name, datatype="FP32", shape=[-1, *spec.sample_shape])
    for name in spec.outputs:
        reply.outputs.add(name=name, datatype="FP32", shape=[-1, CLASSES])
    return reply


def _config(spec: models.ModelSpec) -> service_pb2.ModelConfigResponse:
    config = model_config_pb2.ModelConfig(
        name=spec.name, platform="onnxruntime_onnx", max_batch_size=models.MAX_BATCH_SIZE
    )
    config.input.add(
        name=spec.input_name, data_type=model_config_pb2.TYPE_FP32, dims=list(spec.sample_shape)
    )
    for name in spec.outputs:
        config.output.add(name=name, data_type=model_config_pb2.TYPE_FP32, dims=[CLASSES])
    return service_pb2.ModelConfigResponse(config=config)


def _answer(spec: models.ModelSpec) -> service_pb2.ModelInferResponse:
    """The fixed answer: one sample's outputs, as the model's own answer would carry them."""
    reply = service_pb2.ModelInferResponse(model_name=spec.name, model_version="1")
    for name in spec.outputs:
        reply.outputs.add(name=name, datatype="FP32", shape=[1, CLASSES])
        reply.raw_output_contents.append(bytes(FP32_BYTES * CLASSES))
    return reply


class FloorService(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Fixed answers; the only state is the count of ModelInfer calls answered."""

    def __init__(self, spec: models.ModelSpec) -> None:
        self.spec = spec
        self.answered = 0
        self._metadata = _metadata(spec)
        self._config = _config(spec)
        self._answer = _answer(spec)

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerReadyResponse(ready=True)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerMetadataResponse(name="grpc-floor", version="0")

    async def ModelReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ModelReadyResponse(ready=request.name == self.spec.name)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        return self._metadata

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        return self._config

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        reply = service_pb2.ModelStatisticsResponse()
        stats = reply.model_stats.add(name=self.spec.name, version="1")
        stats.inference_count = stats.execution_count = self.answered
        stats.inference_stats.success.count = self.answered
        return reply

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        self.answered += 1
        return self._answer


async def serve(port: int, model: str) -> None:
    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        FloorService(models.SPECS[model]), server
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", choices=MODELS, default="mlp")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.model))


if __name__ == "__main__":
    main()
