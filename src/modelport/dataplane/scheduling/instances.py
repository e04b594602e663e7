"""Model instances: threads that run a runtime off the event loop.

``instance_group.count`` instances of one version compute at once; more
requests wait for a free one. ONNX Runtime releases the GIL while it
computes, so threads give real parallelism for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from modelport.dataplane.runtime.base import Runtime
from modelport.errors import InferenceFailed, InvalidRequest, ModelportError, Unavailable
from modelport.types import Array


@dataclass(slots=True)
class Execution:
    """What one runtime call produced and how long each part took (ns)."""

    outputs: dict[str, Array]
    queue_ns: int
    infer_ns: int


class InstancePool:
    """Runs ``predict`` on up to ``count`` threads; the owner closes it."""

    def __init__(self, runtime: Runtime, count: int, label: str) -> None:
        self.runtime = runtime
        self.count = count
        self._executor = ThreadPoolExecutor(max_workers=count, thread_name_prefix=label)
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False

    def _call(
        self, inputs: Mapping[str, Array], outputs: Sequence[str], submitted: int
    ) -> Execution:
        started = time.perf_counter_ns()
        try:
            result = self.runtime.predict(inputs, outputs)
        except ModelportError:
            raise
        except (ValueError, TypeError) as exc:
            raise InvalidRequest(f"model rejected the inputs: {_first_line(exc)}") from None
        except Exception as exc:
            raise InferenceFailed(f"model failed: {_first_line(exc)}") from None
        done = time.perf_counter_ns()
        return Execution(result, started - submitted, done - started)

    async def run(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> Execution:
        """Compute one batch on a free instance, waiting for one if all are busy."""
        if self._closing:
            raise Unavailable("this model version is being unloaded; retry")
        loop = asyncio.get_running_loop()
        self._inflight += 1
        self._idle.clear()
        try:
            return await loop.run_in_executor(
                self._executor, self._call, inputs, outputs, time.perf_counter_ns()
            )
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    async def drain_and_close(self) -> None:
        """Refuse new work, let requests in flight finish, then release the runtime."""
        self._closing = True
        await self._idle.wait()
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Release threads and the runtime (the caller made sure nothing runs)."""
        self._closing = True
        self._executor.shutdown(wait=True)
        self.runtime.unload()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__
