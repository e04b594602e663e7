"""Per-step control of a composite servable: a timeout, retries, an in-flight bound.

An ensemble step or a cascade stage is a call through the ``StepRunner``;
``ControlledStep`` wraps that call with what the step's ``modelport:``
options ask for (``StepControl`` in ``config/model.py``):

- ``timeout_s``: each call fails with DeadlineExceeded after it, counted
  from the moment the call starts (after its ``max_inflight`` slot).
- ``retries``: a transient failure (Unavailable, DeadlineExceeded: a full
  queue, a model reloading, a slow call) is tried again after a jittered
  exponential backoff; a request the model refused (InvalidRequest and the
  rest) is not, since it would be refused again. No retry starts when its
  backoff would end past the request's own deadline.
- ``max_inflight``: one semaphore per step of a loaded composite, shared by
  all its requests, so a fast upstream step cannot pile up unbounded work
  (and memory) in front of a slow downstream one.

Sleeping and the clock are injected so tests wait for nothing.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from modelport.config.model import StepControl
from modelport.dataplane.servable import StepRunner
from modelport.errors import DeadlineExceeded, Unavailable
from modelport.types import Array, Call

#: Failures worth another try: the same request may succeed a moment later.
TRANSIENT = (Unavailable, DeadlineExceeded)

Sleep = Callable[[float], Awaitable[None]]


def backoff_s(attempt: int, base_s: float, draw: float) -> float:
    """The wait before retry ``attempt + 1``: half of ``base_s * 2**attempt`` fixed,
    the other half scaled by ``draw`` in [0, 1), so retries of many requests spread out.

    Example: base 0.05 s, attempt 2 → a cap of 0.2 s, a wait between 0.1 and 0.2 s.
    """
    cap = base_s * float(2**attempt)
    return cap / 2 + cap / 2 * draw


def controls(control: StepControl) -> bool:
    """Whether ``control`` changes how the step is called (``optional`` does not: it
    changes what its failure means, which the composite decides)."""
    return control.timeout_s is not None or control.retries > 0 or control.max_inflight is not None


class ControlledStep:
    """One step's calls, under its timeout, retries and in-flight bound."""

    __slots__ = (
        "_draw",
        "_limit",
        "_now",
        "_plain",
        "_sleep",
        "control",
        "label",
        "model",
        "version",
    )

    def __init__(
        self,
        label: str,
        model: str,
        version: str | None,
        control: StepControl,
        now: Callable[[], int],
        sleep: Sleep | None = None,
        draw: Callable[[], float] | None = None,
    ) -> None:
        self.label = label
        self.model = model
        self.version = version
        self.control = control
        self._now = now
        self._sleep: Sleep = sleep if sleep is not None else asyncio.sleep
        self._draw = draw if draw is not None else random.random
        self._limit = (
            asyncio.Semaphore(control.max_inflight) if control.max_inflight is not None else None
        )
        self._plain = not controls(control)

    async def run(
        self,
        runner: StepRunner,
        call: Call | None,
        inputs: Mapping[str, Array],
        parameters: Mapping[str, Any] | None = None,
    ) -> dict[str, Array]:
        """The step's outputs; raises the last failure once retries are spent.

        ``parameters``: the step request's (a sequence step's), or None."""
        if self._plain:
            return await runner.run_step(call, self.model, self.version, inputs, parameters)
        attempt = 0
        while True:
            try:
                return await self._bounded(runner, call, inputs, parameters)
            except TRANSIENT:
                if attempt >= self.control.retries:
                    raise
                wait = backoff_s(attempt, self.control.retry_backoff_s, self._draw())
                deadline = call.deadline_ns if call is not None else None
                if deadline is not None and self._now() + int(wait * 1e9) >= deadline:
                    raise
                attempt += 1
                await self._sleep(wait)

    async def _bounded(
        self,
        runner: StepRunner,
        call: Call | None,
        inputs: Mapping[str, Array],
        parameters: Mapping[str, Any] | None,
    ) -> dict[str, Array]:
        if self._limit is None:
            return await self._timed(runner, call, inputs, parameters)
        async with self._limit:
            return await self._timed(runner, call, inputs, parameters)

    async def _timed(
        self,
        runner: StepRunner,
        call: Call | None,
        inputs: Mapping[str, Array],
        parameters: Mapping[str, Any] | None,
    ) -> dict[str, Array]:
        timeout = self.control.timeout_s
        if timeout is None:
            return await runner.run_step(call, self.model, self.version, inputs, parameters)
        try:
            async with asyncio.timeout(timeout):
                return await runner.run_step(call, self.model, self.version, inputs, parameters)
        except TimeoutError:
            raise DeadlineExceeded(
                f"{self.label} took longer than its timeout_s ({timeout:g} s)"
            ) from None
