"""A short side-by-side timing: latency at batch 1, throughput at a larger batch.

This is a first look, not a benchmark (``benchmarks/`` holds those): each
model gets about ``seconds`` per measurement on this machine, called
directly (no server, no network), with the thread budget the server would
give one instance. The clock is passed in so the loop can be driven by a
fake clock in tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from modelport.types import Array

Clock = Callable[[], float]
Predict = Callable[[Mapping[str, Array], Sequence[str]], object]

#: Rows per call for the throughput measurement (capped by max_batch_size).
THROUGHPUT_BATCH = 64
#: Calls made even when one call takes longer than the whole time budget.
MIN_LATENCY_CALLS = 5
MIN_THROUGHPUT_CALLS = 3
#: Upper bound on calls, so a sub-microsecond model still finishes promptly.
MAX_CALLS = 200_000


@dataclass(frozen=True)
class Speed:
    """One model's timing: latency percentiles at one row, rows per second at ``batch``."""

    p50_ms: float
    p99_ms: float
    latency_calls: int
    batch: int
    rows_per_s: float
    throughput_calls: int


def rows(inputs: Mapping[str, Array], count: int) -> dict[str, Array]:
    """``count`` rows of every input, cycling through the available ones."""
    out: dict[str, Array] = {}
    for name, array in inputs.items():
        take = np.arange(count) % array.shape[0]
        out[name] = np.ascontiguousarray(np.take(array, take, axis=0))
    return out


def measure(
    predict: Predict,
    one: Mapping[str, Array],
    batch: Mapping[str, Array],
    batch_rows: int,
    outputs: Sequence[str],
    seconds: float,
    clock: Clock = time.perf_counter,
) -> Speed:
    """Time ``predict`` on ``one`` (latency) and on ``batch`` (throughput), ``seconds`` each."""
    predict(one, outputs)  # the first call may build caches or plans
    durations: list[float] = []
    start = clock()
    while len(durations) < MAX_CALLS and (
        len(durations) < MIN_LATENCY_CALLS or clock() - start < seconds
    ):
        t0 = clock()
        predict(one, outputs)
        durations.append(clock() - t0)
    predict(batch, outputs)
    calls = 0
    start = clock()
    while calls < MAX_CALLS and (calls < MIN_THROUGHPUT_CALLS or clock() - start < seconds):
        predict(batch, outputs)
        calls += 1
    elapsed = max(clock() - start, 1e-9)
    latencies = np.asarray(durations) * 1e3
    return Speed(
        p50_ms=float(np.percentile(latencies, 50)),
        p99_ms=float(np.percentile(latencies, 99)),
        latency_calls=len(durations),
        batch=batch_rows,
        rows_per_s=calls * batch_rows / elapsed,
        throughput_calls=calls,
    )
