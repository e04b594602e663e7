"""A small closed-loop gRPC load generator: the fallback when perf_analyzer cannot run.

    python benchmarks/grpc_load.py --url 127.0.0.1:8001 --model mlp --input x \\
        --shape 1,64 --datatype FP32 --data body.raw --concurrency 32 --duration 5

``--concurrency`` coroutines each send ``ModelInfer`` and wait for the
answer, again and again, until ``--duration`` seconds have passed (bounded:
each call also has a deadline of ``--timeout`` seconds). The last line
printed is ``GRPC_JSON {...}``: request count, errors by status code,
latency percentiles in microseconds.

The request messages come from tritonclient.grpc's own ``service_pb2`` and the
stub is built by hand on a ``grpc.aio`` channel. This script must run in its
own process and never import ``modelport.protos``: both define the
``inference.*`` protobuf package, which one process cannot hold twice. Being
Python, it needs far more CPU per request than perf_analyzer, and it shares
the machine's two cores with the server, so its numbers understate the server
more than perf_analyzer's do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def build_request(
    model: str, input_name: str, shape: list[int], datatype: str, raw: bytes
) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add()
    tensor.name = input_name
    tensor.datatype = datatype
    tensor.shape.extend(shape)
    request.raw_input_contents.append(raw)
    return request


async def worker(
    call: grpc.aio.UnaryUnaryMultiCallable,
    request: service_pb2.ModelInferRequest,
    deadline: float,
    call_timeout: float,
    latencies: list[float],
    errors: Counter[str],
) -> None:
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        try:
            await call(request, timeout=call_timeout)
        except grpc.aio.AioRpcError as exc:
            errors[exc.code().name] += 1
            continue
        latencies.append(time.perf_counter() - started)


async def run(args: argparse.Namespace) -> dict[str, object]:
    shape = [int(d) for d in args.shape.split(",")]
    request = build_request(args.model, args.input, shape, args.datatype, args.raw)
    options = [
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ]
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    async with grpc.aio.insecure_channel(args.url, options=options) as channel:
        call = channel.unary_unary(
            METHOD,
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )
        # Warm up the connection outside the measured time.
        await call(request, timeout=args.timeout)
        started = time.perf_counter()
        deadline = started + args.duration
        await asyncio.gather(
            *(
                worker(call, request, deadline, args.timeout, latencies, errors)
                for _ in range(args.concurrency)
            )
        )
        elapsed = time.perf_counter() - started
    us = np.array(latencies) * 1e6 if latencies else np.zeros(1)
    return {
        "requests": len(latencies),
        "errors": dict(errors),
        "duration_s": elapsed,
        "throughput": len(latencies) / elapsed,
        "p50_us": float(np.percentile(us, 50)),
        "p99_us": float(np.percentile(us, 99)),
        "max_us": float(us.max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Closed-loop gRPC ModelInfer load.")
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--input", required=True, help="input tensor name")
    parser.add_argument("--shape", required=True, help="comma-separated, batch first")
    parser.add_argument("--datatype", default="FP32")
    parser.add_argument("--data", required=True, help="file with the raw tensor bytes")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    args.raw = Path(args.data).read_bytes()
    print("GRPC_JSON " + json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
