"""The timing loop, driven by a fake clock: how long it runs and what it reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from modelport.optimize.convert.timing import MIN_LATENCY_CALLS, MIN_THROUGHPUT_CALLS, measure, rows


class FakeModel:
    """Advances a fake clock by a fixed time per row on every call."""

    def __init__(self, per_call: float, per_row: float) -> None:
        self.now = 0.0
        self.per_call = per_call
        self.per_row = per_row
        self.calls: list[int] = []

    def clock(self) -> float:
        return self.now

    def predict(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> object:
        n = inputs["x"].shape[0]
        self.calls.append(n)
        self.now += self.per_call + self.per_row * n
        return None


def test_latency_and_throughput_from_the_clock() -> None:
    model = FakeModel(per_call=0.001, per_row=0.0)
    x = {"x": np.zeros((64, 2), dtype=np.float32)}
    speed = measure(model.predict, rows(x, 1), x, 64, ["y"], 0.1, model.clock)
    assert speed.p50_ms == pytest.approx(1.0)
    assert speed.p99_ms == pytest.approx(1.0)
    assert speed.batch == 64
    assert speed.rows_per_s == pytest.approx(64 / 0.001)
    # About 0.1 s of fake time each, plus one warm-up call per batch size.
    assert 100 <= speed.latency_calls <= 101
    assert 100 <= speed.throughput_calls <= 101


def test_a_slow_model_still_gets_a_few_calls() -> None:
    model = FakeModel(per_call=5.0, per_row=0.0)
    x = {"x": np.zeros((4, 2), dtype=np.float32)}
    speed = measure(model.predict, rows(x, 1), x, 4, ["y"], 0.5, model.clock)
    assert speed.latency_calls == MIN_LATENCY_CALLS
    assert speed.throughput_calls == MIN_THROUGHPUT_CALLS


def test_rows_cycles_through_the_available_rows() -> None:
    x = {"x": np.arange(3).reshape(3, 1)}
    assert rows(x, 7)["x"].reshape(-1).tolist() == [0, 1, 2, 0, 1, 2, 0]
