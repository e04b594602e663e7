"""The live routing table: each model's policy, its windows, its shadow copies.

One ``Traffic`` per server, built in the composition root and handed to the
Pipeline; the control plane sets policies and reads windows through it.

Concurrency: every method is called on the event loop (the request path, the
management API and the shadow tasks all run there), so no lock is needed.
``set`` swaps one dictionary entry for a new immutable ``RoutedModel``, so a
request that already picked up the old one finishes under the old policy.
Calling from another thread is not supported.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from modelport.dataplane.routing.choose import choose_version
from modelport.dataplane.routing.policy import TrafficPolicy
from modelport.dataplane.routing.shadow import ShadowRunner, shadow_copy
from modelport.dataplane.routing.window import EMPTY, SlidingWindow, WindowSnapshot
from modelport.errors import ModelportError
from modelport.observability.metrics import Metrics
from modelport.types import InferenceRequest, InferenceResponse

log = logging.getLogger("modelport.routing")

#: Header lookup a transport supplies: name (any case) → value, or None.
HeaderLookup = Callable[[str], str | None]


class RoutedModel:
    """One model's policy as the request path uses it; replaced whole on ``set``."""

    __slots__ = ("_traffic", "_warned", "_windows", "model", "policy")

    def __init__(
        self,
        traffic: Traffic,
        model: str,
        policy: TrafficPolicy,
        windows: dict[str, SlidingWindow],
    ) -> None:
        self._traffic = traffic
        self.model = model
        self.policy = policy
        self._windows = windows
        self._warned: set[str] = set()

    def choose(self, header: HeaderLookup | None, parameters: Mapping[str, Any]) -> str:
        """The version for a request that named none.

        The sticky key is looked for among the headers (or gRPC metadata) first,
        then among the request's parameters; without a value the draw is random.
        """
        name = self.policy.sticky_key
        key: str | None = None
        if name is not None:
            if header is not None:
                key = header(name)
            if key is None:
                value = parameters.get(name)
                if value is not None:
                    key = str(value)
        return choose_version(self.model, self.policy, key, self._traffic.rand)

    def fell_back(self, version: str, error: ModelportError) -> None:
        """Count a routed version that could not serve; warn once per version."""
        self._traffic.metrics.routing_fallbacks.labels(self.model, version).inc()
        if version not in self._warned:
            self._warned.add(version)
            log.warning(
                "routed version cannot serve; using the default version",
                extra={"model": self.model, "version": version, "error": error.message},
            )

    def wants_shadow(self, answered: str) -> str | None:
        """The shadow version to copy this answer to, or None (a draw per request)."""
        shadow = self.policy.shadow
        if shadow is None or shadow.version == answered:
            return None
        return shadow.version if self._traffic.rand() < shadow.fraction else None

    def shadow(
        self,
        version: str,
        request: InferenceRequest,
        primary: InferenceResponse,
        call: Callable[[InferenceRequest], Awaitable[InferenceResponse]],
    ) -> None:
        copy = shadow_copy(request, version)
        self._traffic.shadows.submit(self.model, version, lambda: call(copy), primary, self)

    def _window(self, version: str) -> SlidingWindow:
        window = self._windows.get(version)
        if window is None:
            window = self._windows[version] = self._traffic.new_window()
        return window

    def record(self, version: str, latency_ns: int, failed: bool) -> None:
        self._window(version).record(latency_ns / 1e6, failed)

    def compared(self, version: str, agreed: bool) -> None:
        self._window(version).record_comparison(agreed)


class Traffic:
    """Traffic policies by model name, and the sliding window of every routed version."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        window_s: float = 60.0,
        bucket_s: float = 1.0,
        shadow_limit: int = 64,
        shadow_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        """``clock`` (seconds) places requests in window buckets; ``rand`` draws in [0, 1)."""
        SlidingWindow(clock, window_s, bucket_s)  # refuse a bad window size now, not later
        self.metrics = metrics
        self.rand = rand
        self.shadows = ShadowRunner(metrics, shadow_limit, shadow_timeout_s)
        self._clock = clock
        self._window_s = window_s
        self._bucket_s = bucket_s
        self._routed: dict[str, RoutedModel] = {}
        self._windows: dict[str, dict[str, SlidingWindow]] = {}

    # ------------------------------------------------------------ control plane

    def set(self, model: str, policy: TrafficPolicy | None) -> None:
        """Route ``model`` by ``policy`` from the next request on; None removes it.

        Windows survive policy changes (a canary is judged across weight steps)
        and are dropped with the policy. Fallback warnings are re-armed.
        """
        if policy is None:
            self._routed.pop(model, None)
            self._windows.pop(model, None)
            return
        windows = self._windows.setdefault(model, {})
        self._routed[model] = RoutedModel(self, model, policy, windows)

    @property
    def window_s(self) -> float:
        """How many seconds back every window sees."""
        return self._window_s

    def get(self, model: str) -> TrafficPolicy | None:
        routed = self._routed.get(model)
        return routed.policy if routed is not None else None

    def policies(self) -> dict[str, TrafficPolicy]:
        """Every model's policy, for listing and for persisting across restarts."""
        return {name: r.policy for name, r in self._routed.items()}

    def window(self, model: str, version: str) -> WindowSnapshot:
        """The version's last ``window_s`` seconds (all zeros if nothing recorded)."""
        window = self._windows.get(model, {}).get(version)
        return window.snapshot() if window is not None else EMPTY

    def reset_window(self, model: str, version: str) -> None:
        """Forget what the window saw, e.g. when a canary step starts afresh."""
        windows = self._windows.get(model)
        if windows is not None:
            windows.pop(version, None)

    async def close(self) -> None:
        """Cancel shadow calls still in flight (at shutdown, before models unload)."""
        await self.shadows.close()

    # ------------------------------------------------------------ data plane

    def routed(self, model: str) -> RoutedModel | None:
        """The model's routing state, or None: one dictionary lookup per request."""
        return self._routed.get(model)

    def new_window(self) -> SlidingWindow:
        return SlidingWindow(self._clock, self._window_s, self._bucket_s)
