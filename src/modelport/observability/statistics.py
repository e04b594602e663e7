"""Per model-version counters in the shape of Triton's statistics extension.

Per request: success, fail, queue, compute_input, compute_infer,
compute_output (count and cumulative nanoseconds) and inference_count (one
per sample); each failure also by its reason, as Triton's
``nv_inference_request_failure`` metric labels it.

Per execution (one runtime call, possibly a whole batch):
execution_count and batch_stats keyed by batch size. Only the event loop
writes these, so plain integers need no lock.

A composite model (an ensemble, a cascade) computes nothing itself; as in
Triton, its queue and compute durations are those its steps' own
statistics recorded for it. ``SummingSteps`` opens that sum around a
composite request: every request recorded while it is open, in the
composite's task or in tasks it starts, adds to it as well.

An ensemble's executions follow Triton's ensemble scheduler, which reports
one batch execution per ensemble request that succeeded (its
``RequestTracker`` calls ``UpdateInferBatchStatsWithDuration`` with the
request's batch size, at least 1, and the compute durations its steps
summed): ``execution_count`` is the number of ensemble requests answered,
and ``batch_stats`` holds them by their own batch size with those sums. The
ensemble calls ``record_execution`` itself (``EnsembleServable``'s
``on_execution``), so the single-model path records nothing more. A
cascade records no execution of its own.
"""

from __future__ import annotations

import time
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any, Final

#: Triton's failure reasons (the ``reason`` label of ``nv_inference_request_failure``):
#: refused by the version's queue (full, timed out, unloading), abandoned by the
#: caller, failed in the model, anything else.
REJECTED: Final = "REJECTED"
CANCELED: Final = "CANCELED"
BACKEND: Final = "BACKEND"
OTHER: Final = "OTHER"
FAILURE_REASONS: Final = (REJECTED, CANCELED, BACKEND, OTHER)


@dataclass(slots=True)
class Duration:
    """How many times something happened and the nanoseconds it took in total."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def to_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class BatchDurations:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class StepTimes:
    """The durations a composite request's steps recorded, summed (nanoseconds)."""

    queue_ns: int = 0
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0


#: The sum of the composite request running in this context, if any. A
#: context variable, because steps run in tasks the composite starts (which
#: copy the context), and a nested composite opens its own sum for its steps.
_STEPS: ContextVar[StepTimes | None] = ContextVar("modelport_step_times", default=None)


class SummingSteps:
    """Sum what the requests recorded inside the block spent: a composite's steps.

    Closed before the composite's own request is recorded, so that one adds
    to the sum around it (a nested ensemble's time is its outer step's),
    never to its own. A class rather than a generator: it runs on every
    composite request.
    """

    __slots__ = ("_token", "times")

    _token: Token[StepTimes | None]

    def __init__(self) -> None:
        self.times = StepTimes()

    def __enter__(self) -> StepTimes:
        self._token = _STEPS.set(self.times)
        return self.times

    def __exit__(self, *exc: object) -> None:
        _STEPS.reset(self._token)


@dataclass(slots=True)
class ModelStatistics:
    """Counters of one loaded model version since it was loaded."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    cache_hit: Duration = field(default_factory=Duration)
    cache_miss: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, BatchDurations] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    """Failed requests by reason (``FAILURE_REASONS``); they add up to ``fail.count``."""

    def record_success(
        self,
        total_ns: int,
        queue_ns: int,
        input_ns: int,
        infer_ns: int,
        output_ns: int,
        samples: int,
    ) -> None:
        """One request answered; ``samples`` is its batch size (1 when not batching)."""
        self.success.add(total_ns)
        self.queue.add(queue_ns)
        self.compute_input.add(input_ns)
        self.compute_infer.add(infer_ns)
        self.compute_output.add(output_ns)
        self.inference_count += samples
        self.last_inference_ms = time.time_ns() // 1_000_000
        steps = _STEPS.get()
        if steps is not None:
            steps.queue_ns += queue_ns
            steps.input_ns += input_ns
            steps.infer_ns += infer_ns
            steps.output_ns += output_ns

    def record_cache_hit(self, lookup_ns: int) -> None:
        """A request answered from the response cache (not an inference)."""
        self.cache_hit.add(lookup_ns)
        self.success.add(lookup_ns)
        self.last_inference_ms = time.time_ns() // 1_000_000

    def record_cache_miss(self, insert_ns: int) -> None:
        """A cacheable request that had to compute; ``insert_ns`` is the cache's cost."""
        self.cache_miss.add(insert_ns)

    def record_failure(self, total_ns: int, reason: str = OTHER) -> None:
        """One request that reached the model and failed there or in its queue
        (or whose caller went away meanwhile); ``reason`` is one of ``FAILURE_REASONS``."""
        self.fail.add(total_ns)
        self.failures[reason] = self.failures.get(reason, 0) + 1
        self.last_inference_ms = time.time_ns() // 1_000_000

    def record_execution(
        self, batch_size: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        """One runtime call over ``batch_size`` samples."""
        self.execution_count += 1
        b = self.batches.get(batch_size)
        if b is None:
            b = self.batches[batch_size] = BatchDurations()
        b.compute_input.add(input_ns)
        b.compute_infer.add(infer_ns)
        b.compute_output.add(output_ns)

    def to_json(self, name: str, version: str) -> dict[str, Any]:
        """One entry of ``model_stats`` as Triton's statistics extension shapes it."""
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.to_json(),
                "fail": self.fail.to_json(),
                "queue": self.queue.to_json(),
                "compute_input": self.compute_input.to_json(),
                "compute_infer": self.compute_infer.to_json(),
                "compute_output": self.compute_output.to_json(),
                "cache_hit": self.cache_hit.to_json(),
                "cache_miss": self.cache_miss.to_json(),
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": b.compute_input.to_json(),
                    "compute_infer": b.compute_infer.to_json(),
                    "compute_output": b.compute_output.to_json(),
                }
                for size, b in sorted(self.batches.items())
            ],
            "memory_usage": [],
        }
