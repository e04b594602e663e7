"""The in-process ceiling: ONNX Runtime called directly, no server.

One process per core (two here), each with its own session limited to one
intra-op and one inter-op thread, calls ``session.run`` on the same fixed
batch in a loop for a fixed time. The samples/s summed over the processes is
the most that any server running the same model on this machine could give
at that batch size; modelport's configs give it two instances of one thread
each, the same split of the cores.

    python benchmarks/ceilings.py benchmarks/.work/repo/mlp/1/model.onnx x 64 --batch 1
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier

import numpy as np
import onnxruntime as ort

WARMUP_RUNS = 20


@dataclass
class Ceiling:
    model: str
    batch: int
    processes: int
    samples_per_s: float
    calls_per_s: float
    mean_call_us: float
    """Mean time of one ``session.run`` call, per process."""
    other_cpu: float | None = None
    """Share of the machine's CPU other processes used meanwhile (set by the caller)."""


def _worker(
    path: str,
    input_name: str,
    sample_shape: tuple[int, ...],
    batch: int,
    duration: float,
    barrier: Barrier,
    results: mp.Queue,  # type: ignore[type-arg]
) -> None:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(os.getpid())
    data = rng.random((batch, *sample_shape)).astype(np.float32)
    feed = {input_name: data}
    for _ in range(WARMUP_RUNS):
        session.run(None, feed)
    barrier.wait()
    calls = 0
    started = time.perf_counter()
    deadline = started + duration
    now = started
    while now < deadline:
        session.run(None, feed)
        calls += 1
        now = time.perf_counter()
    results.put((calls, now - started))


def measure(
    path: str,
    input_name: str,
    sample_shape: tuple[int, ...],
    batch: int,
    duration: float,
    processes: int = 2,
) -> Ceiling:
    """samples/s of ``processes`` single-threaded sessions running at once."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(processes)
    results: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [
        ctx.Process(
            target=_worker,
            args=(path, input_name, sample_shape, batch, duration, barrier, results),
            daemon=True,
        )
        for _ in range(processes)
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=duration + 120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
    calls_per_s = sum(calls / elapsed for calls, elapsed in outcomes)
    mean_us = float(np.mean([elapsed / max(calls, 1) for calls, elapsed in outcomes])) * 1e6
    return Ceiling(
        model=os.path.basename(os.path.dirname(os.path.dirname(path))),
        batch=batch,
        processes=processes,
        samples_per_s=calls_per_s * batch,
        calls_per_s=calls_per_s,
        mean_call_us=mean_us,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="In-process ONNX Runtime ceiling.")
    parser.add_argument("path")
    parser.add_argument("input_name")
    parser.add_argument("sample_shape", help="per-sample shape, comma-separated")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    shape = tuple(int(d) for d in args.sample_shape.split(","))
    print(measure(args.path, args.input_name, shape, args.batch, args.duration, args.processes))


if __name__ == "__main__":
    main()
