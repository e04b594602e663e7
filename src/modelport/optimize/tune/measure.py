"""Timing one loaded candidate: latency at batch 1, throughput at several batch sizes.

Each measurement calls ``predict`` directly (no server) for about
``seconds``, after one untimed call that lets the runtime build its
caches. The clock is passed in, so tests drive the loops with a fake one.
The figures are for choosing between candidates on this machine, measured
the same way for all of them; ``benchmarks/`` holds the end-to-end numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from modelport.optimize.convert.timing import rows
from modelport.types import Array

Clock = Callable[[], float]
Predict = Callable[[Mapping[str, Array], Sequence[str]], object]

#: Batch sizes the throughput objective tries (capped by max_batch_size).
BATCH_SIZES = (1, 8, 32, 64)
MIN_CALLS = 3
MAX_CALLS = 100_000


@dataclass(frozen=True)
class Timing:
    """One candidate at one thread count."""

    threads: int
    p50_ms: float
    p99_ms: float
    throughput: dict[int, float]
    """Batch size → rows per second."""

    @property
    def best_batch(self) -> int:
        return max(self.throughput, key=lambda b: self.throughput[b])

    @property
    def rows_per_s(self) -> float:
        return self.throughput[self.best_batch]


def thread_counts(cores: int) -> list[int]:
    """1, 2, 4, … up to the cores, and the core count itself."""
    counts = {cores}
    n = 1
    while n < cores:
        counts.add(n)
        n *= 2
    return sorted(counts)


def batch_sizes(max_batch_size: int) -> list[int]:
    """The batch sizes to time, each at most ``max_batch_size``."""
    sizes = [b for b in BATCH_SIZES if b <= max_batch_size]
    if max_batch_size not in sizes and max_batch_size < BATCH_SIZES[-1]:
        sizes.append(max_batch_size)
    return sizes


def instances_for(threads: int, cores: int) -> int:
    """How many instances of ``threads`` threads fill the machine without oversubscribing."""
    return max(1, cores // max(1, threads))


def _calls(
    predict: Predict,
    inputs: Mapping[str, Array],
    outputs: Sequence[str],
    seconds: float,
    clock: Clock,
) -> list[float]:
    predict(inputs, outputs)
    durations: list[float] = []
    start = clock()
    while len(durations) < MAX_CALLS and (len(durations) < MIN_CALLS or clock() - start < seconds):
        t0 = clock()
        predict(inputs, outputs)
        durations.append(clock() - t0)
    return durations


def time_candidate(
    predict: Predict,
    samples: Mapping[str, Array],
    outputs: Sequence[str],
    threads: int,
    sizes: Sequence[int],
    seconds: float,
    clock: Clock = time.perf_counter,
) -> Timing:
    """p50/p99 of one row for ``seconds``, then rows/s at each size for ``seconds / 2``."""
    one = _calls(predict, rows(samples, 1), outputs, seconds, clock)
    latencies = np.asarray(one) * 1e3
    throughput: dict[int, float] = {}
    for size in sizes:
        if size == 1:
            throughput[1] = len(one) / max(sum(one), 1e-9)
            continue
        durations = _calls(predict, rows(samples, size), outputs, seconds / 2, clock)
        throughput[size] = len(durations) * size / max(sum(durations), 1e-9)
    return Timing(
        threads,
        float(np.percentile(latencies, 50)),
        float(np.percentile(latencies, 99)),
        throughput,
    )


def round_cost(
    predict: Predict,
    samples: Mapping[str, Array],
    outputs: Sequence[str],
    timing: Timing,
    objective: str,
    seconds: float,
    cores: int,
    clock: Clock = time.perf_counter,
) -> float:
    """One more measurement of the objective as a cost (lower is better), for the noise check.

    latency: the p50 in seconds of one row, over ``seconds``; throughput:
    seconds per row for the machine, at the timing's best batch size and
    instance count, over ``seconds / 2`` (as the sweep measured them).
    """
    if objective == "latency":
        return float(np.percentile(_calls(predict, rows(samples, 1), outputs, seconds, clock), 50))
    batch = timing.best_batch
    durations = _calls(predict, rows(samples, batch), outputs, seconds / 2, clock)
    per_instance = len(durations) * batch / max(sum(durations), 1e-9)
    return 1.0 / (per_instance * instances_for(timing.threads, cores))


def predict_all(
    predict: Callable[[Mapping[str, Array], Sequence[str]], dict[str, Array]],
    inputs: Mapping[str, Array],
    outputs: Sequence[str],
    max_batch: int,
) -> dict[str, Array]:
    """Every row's outputs, in batches the server could send (at most ``max_batch``)."""
    count = int(next(iter(inputs.values())).shape[0])
    parts: dict[str, list[Array]] = {n: [] for n in outputs}
    for start in range(0, count, max_batch):
        chunk = {n: a[start : start + max_batch] for n, a in inputs.items()}
        answer = predict(chunk, outputs)
        for n in outputs:
            parts[n].append(np.asarray(answer[n]))
    return {n: np.concatenate(p, axis=0) for n, p in parts.items()}
