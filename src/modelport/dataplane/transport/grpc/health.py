"""grpc.health.v1 that answers the server's readiness, for gRPC probes.

Kubernetes' ``grpc`` probe (and grpc_health_probe) asks the standard health
service, not the inference service's ServerReady, so both must say the
same thing: the overall service (``""``) and the inference service are
SERVING while the server is ready and NOT_SERVING while it is not (with
strict readiness, while a model failed to load), and NOT_SERVING for good
once shutdown begins. Any other service name is unknown (Check: NOT_FOUND);
List names these two.

Check asks ``is_ready`` on every call, so no stored status can go stale:
readiness changes in many places (a load, an unload, a repository poll, the
management API), and a callback in each would be one more thing to forget.
``is_ready`` is cheap (a pass over the model records). A Watch stream asks
again every ``watch_interval`` seconds and sends a message only when the
answer changed; a caller that must know at once calls Check.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class ReadinessHealth:
    """The Health servicer (Check, List and Watch) for ``services``, following ``is_ready``.

    NOT_SERVING until ``open`` (the server calls it once every listener is
    up), and again from ``enter_graceful_shutdown`` on.

    At most ``max_watches`` Watch streams are open at once: each one makes
    the server poll ``is_ready``, and the health service answers anyone who
    can reach the port, so without a cap a client could open thousands and
    keep the event loop busy polling. A Watch beyond the cap is refused at
    once with RESOURCE_EXHAUSTED; probes that need more should call Check.
    """

    def __init__(
        self,
        is_ready: Callable[[], bool],
        services: Collection[str],
        watch_interval: float = 0.5,
        max_watches: int = 64,
    ) -> None:
        self._is_ready = is_ready
        self._services = frozenset(services)
        self._watch_interval = watch_interval
        self._max_watches = max_watches
        self._watches = 0
        self._open = False
        self._shutting_down = False

    def open(self) -> None:
        """Start answering readiness: the server is listening on every port."""
        self._open = True

    async def enter_graceful_shutdown(self) -> None:
        """NOT_SERVING from now on, so probes turn traffic away before the ports close."""
        self._shutting_down = True

    def status(self, service: str) -> Any:
        """What Check answers for ``service`` now (a HealthCheckResponse status)."""
        if service not in self._services:
            return SERVICE_UNKNOWN
        if self._open and not self._shutting_down and self._is_ready():
            return SERVING
        return NOT_SERVING

    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        status = self.status(request.service)
        if status == SERVICE_UNKNOWN:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return health_pb2.HealthCheckResponse(status=status)

    async def List(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Every service this server reports on, with its status now."""
        return health_pb2.HealthListResponse(
            statuses={
                s: health_pb2.HealthCheckResponse(status=self.status(s)) for s in self._services
            }
        )

    async def Watch(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        """The status now, then each change, until the caller hangs up.

        An unknown service gets SERVICE_UNKNOWN and the stream stays open, as
        the health protocol asks (the service may appear later).
        """
        if self._watches >= self._max_watches:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many open health Watch streams (the limit is {self._max_watches});"
                " call Check instead",
            )
        self._watches += 1
        try:
            last = None
            while True:
                status = self.status(request.service)
                if status != last:
                    await context.write(health_pb2.HealthCheckResponse(status=status))
                    last = status
                await asyncio.sleep(self._watch_interval)
        finally:
            self._watches -= 1
