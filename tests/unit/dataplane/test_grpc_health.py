"""grpc.health.v1 answers the server's readiness, as ServerReady does (see
tests/integration/test_readiness.py for it through a real server)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelport.dataplane.transport.grpc.health import ReadinessHealth

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICES = ("", "inference.GRPCInferenceService")


def test_status_follows_readiness_from_open_until_shutdown() -> None:
    ready = [True]
    servicer = ReadinessHealth(lambda: ready[0], SERVICES)

    def statuses() -> set[Any]:
        return {servicer.status(s) for s in SERVICES}

    assert statuses() == {NOT_SERVING}  # not every port is up yet
    servicer.open()
    assert statuses() == {SERVING}
    ready[0] = False  # a model failed to load
    assert statuses() == {NOT_SERVING}
    ready[0] = True
    assert statuses() == {SERVING}
    asyncio.run(servicer.enter_graceful_shutdown())
    assert statuses() == {NOT_SERVING}
    assert servicer.status("no.such.Service") == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


def test_list_names_the_services_that_follow_readiness() -> None:
    servicer = ReadinessHealth(lambda: False, SERVICES)
    servicer.open()
    reply = asyncio.run(servicer.List(health_pb2.HealthListRequest(), None))
    assert {name: entry.status for name, entry in reply.statuses.items()} == {
        "": NOT_SERVING,
        "inference.GRPCInferenceService": NOT_SERVING,
    }


def test_watch_streams_beyond_the_cap_are_refused_until_one_ends() -> None:
    asyncio.run(_watch_cap_scenario())


async def _watch_cap_scenario() -> None:
    servicer = ReadinessHealth(lambda: True, SERVICES, watch_interval=0.05, max_watches=2)
    servicer.open()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    request = health_pb2.HealthCheckRequest(service="")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            open_calls = [stub.Watch(request) for _ in range(2)]
            for call in open_calls:
                assert (await asyncio.wait_for(call.read(), 2)).status == SERVING

            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await asyncio.wait_for(stub.Watch(request).read(), 2)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limit is 2" in (refused.value.details() or "")

            open_calls.pop().cancel()
            # The server sees the hang-up a moment later; until then the cap still holds.
            deadline = asyncio.get_running_loop().time() + 2
            while True:
                call = stub.Watch(request)
                try:
                    reply = await asyncio.wait_for(call.read(), 2)
                    break
                except grpc.aio.AioRpcError as e:
                    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert asyncio.get_running_loop().time() < deadline
                    await asyncio.sleep(0.01)
            assert reply.status == SERVING
            call.cancel()
            for call in open_calls:
                call.cancel()
    finally:
        await server.stop(None)
