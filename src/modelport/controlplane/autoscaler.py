"""Instance autoscaling: samples each autoscaled version's load and applies the decision.

Twice a second, on the server's clock, every ready version with
``modelport.autoscaling`` has its queue length and requests in flight read
from its scheduler (two counters the scheduler keeps anyway: nothing is
added to a request's path), the window of samples goes through
``autoscale.decide``, and a new count is applied with
``Scheduler.resize``. Instances share the version's runtime, as
instance_group's count does at load, so a change builds nothing and takes
effect at once; a smaller count lets the batches already computing finish.

Each change is logged with its reason, and ``render`` writes the
``modelport_instances`` gauge into the metrics exposition at scrape time.

Not scaled, with a warning once: versions whose instances are worker
processes (``instance_process``: their process pool is sized at load) and
sequence models (their instances hold sequence slots). ``min_instances: 0``
keeps one instance here; unloading an idle version is the registry's work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from modelport.clock import Clock, SystemClock
from modelport.config.model import Autoscaling
from modelport.controlplane.autoscale import Sample, decide, trim
from modelport.dataplane.runtime.process import ProcessRuntime
from modelport.dataplane.scheduled import ScheduledServable
from modelport.dataplane.scheduling.scheduler import Scheduler
from modelport.dataplane.table import ModelVersion
from modelport.observability.metrics import Visible

log = logging.getLogger("modelport.autoscaling")

#: How often load is sampled and the decision made.
PERIOD_S = 0.5

_NS = 1_000_000_000


@dataclass(slots=True)
class _Tracked:
    """What the decision needs about one version between ticks."""

    last_change_ns: int
    window: list[Sample] = field(default_factory=list)


def _scheduler(version: ModelVersion) -> Scheduler | None:
    servable = version.servable
    return servable.scheduler if isinstance(servable, ScheduledServable) else None


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Autoscaler:
    """The background task that keeps each autoscaled version's instance count."""

    def __init__(
        self,
        versions: Callable[[], Sequence[ModelVersion]],
        clock: Clock | None = None,
        period_s: float = PERIOD_S,
    ) -> None:
        """``versions`` lists the ready versions (the registry's ``ready``)."""
        self._versions = versions
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._period_ns = round(period_s * _NS)
        self._tracked: dict[ModelVersion, _Tracked] = {}
        self._warned: set[ModelVersion] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Tick every period until ``stop`` is set; a failing tick is logged, never fatal."""
        loop = asyncio.get_running_loop()
        # One waiter on ``stop`` for the whole run, not one per period.
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                due: asyncio.Future[None] = loop.create_future()
                timer = self._clock.call_later(self._period_ns, _settle, due)
                try:
                    await asyncio.wait((due, stopped), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    timer.cancel()
                if stop.is_set():
                    return
                try:
                    self.tick()
                except Exception:
                    log.exception("autoscaling tick failed")
        finally:
            stopped.cancel()

    def tick(self) -> None:
        """Sample every autoscaled version once and apply what the decision says."""
        now = self._clock.monotonic_ns()
        tracked: dict[ModelVersion, _Tracked] = {}
        ready = list(self._versions())
        for version in ready:
            settings = version.config.modelport.autoscaling
            if settings is None:
                continue
            scheduler = self._scalable(version)
            if scheduler is None:
                continue
            state = self._tracked.get(version) or _Tracked(now)
            tracked[version] = state
            self._step(version, settings, scheduler, state, now)
        self._tracked = tracked
        self._warned.intersection_update(ready)

    def _scalable(self, version: ModelVersion) -> Scheduler | None:
        scheduler = _scheduler(version)
        if scheduler is not None and not isinstance(scheduler.runtime, ProcessRuntime):
            return scheduler
        if version not in self._warned:
            self._warned.add(version)
            why = (
                "its instances are worker processes (instance_process)"
                if scheduler is not None
                else "it is a sequence model"
            )
            log.warning(
                "autoscaling not applied",
                extra={"model": version.name, "version": version.version, "reason": why},
            )
        return None

    def _step(
        self,
        version: ModelVersion,
        settings: Autoscaling,
        scheduler: Scheduler,
        state: _Tracked,
        now: int,
    ) -> None:
        state.window.append(Sample(now, scheduler.queued, scheduler.in_flight))
        longest = round(max(settings.upscale_delay_s, settings.downscale_delay_s) * _NS)
        state.window = trim(state.window, longest, now)
        current = scheduler.instances
        decision = decide(state.window, settings, current, state.last_change_ns, now)
        if decision.count == current:
            return
        scheduler.resize(decision.count)
        state.last_change_ns = now
        log.info(
            "instance count changed",
            extra={
                "model": version.name,
                "version": version.version,
                "from": current,
                "to": decision.count,
                "reason": decision.reason,
            },
        )

    def render(self, visible: Visible = None) -> bytes:
        """The ``modelport_instances`` gauge of every scheduled version ``visible`` allows."""
        lines = [
            "# HELP modelport_instances Instances a model version runs now "
            "(autoscaling changes it).\n",
            "# TYPE modelport_instances gauge\n",
        ]
        shown = sorted(
            (v for v in self._versions() if visible is None or visible(v.name)),
            key=lambda v: (v.name, v.version),
        )
        for version in shown:
            scheduler = _scheduler(version)
            if scheduler is not None:
                lines.append(
                    f'modelport_instances{{model="{_label(version.name)}",'
                    f'version="{_label(version.version)}"}} {scheduler.instances}\n'
                )
        return "".join(lines).encode()


def _settle(due: asyncio.Future[None]) -> None:
    if not due.done():
        due.set_result(None)
