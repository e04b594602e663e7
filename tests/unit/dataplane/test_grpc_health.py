"""grpc.health.v1 answers the server's readiness, as ServerReady does (see
tests/integration/test_readiness.py for it through a real server)."""

from __future__ import annotations

import asyncio
from typing import Any

from grpc_health.v1 import health_pb2

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
