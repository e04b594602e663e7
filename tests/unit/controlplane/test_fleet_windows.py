"""Canary windows through the store: written per node, read back by the others, checked."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from modelport.controlplane.fleetwindows import from_body, to_body
from modelport.controlplane.store import Database
from modelport.controlplane.store.windows import WindowStore
from modelport.dataplane.routing.window import LATENCY_BOUNDS_MS, WindowSnapshot, merged

HISTOGRAM = tuple([3] + [0] * (len(LATENCY_BOUNDS_MS) - 1))
SNAPSHOT = WindowSnapshot(3, 1, None, None, 0, 0, None, HISTOGRAM)


@pytest.fixture
def windows(url: str) -> Iterator[WindowStore]:
    with Database.open(url) as database:
        yield WindowStore(database)


def test_a_snapshot_round_trips_through_its_body() -> None:
    body = to_body(SNAPSHOT, 100.0)
    assert body["step_started_at"] == 100.0
    again = from_body(body)
    assert (again.requests, again.errors, again.latency) == (3, 1, HISTOGRAM)
    total = merged([again, again])
    assert (total.requests, total.error_rate) == (6, pytest.approx(1 / 3))


@pytest.mark.parametrize(
    "change",
    [
        {"requests": -1},
        {"errors": "1"},
        {"latency": [1, 2]},
        {"latency": None},
        {"shadow_agreed": True},
    ],
)
def test_a_body_this_release_cannot_add_up_is_refused(change: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        from_body({**to_body(SNAPSHOT, 1.0), **change})


def test_each_node_reads_only_the_others_fresh_windows(windows: WindowStore) -> None:
    windows.put("a", "m", "3", {"n": 1}, at=100.0)
    windows.put("b", "m", "3", {"n": 2}, at=100.0)
    windows.put("b", "m", "3", {"n": 3}, at=101.0)  # replaces b's row
    windows.put("c", "m", "3", {"n": 4}, at=90.0)  # too old below
    windows.put("c", "m", "2", {"n": 5}, at=101.0)  # another version
    assert sorted(b["n"] for b in windows.others("m", "3", "a", since=95.0)) == [3]
    assert sorted(b["n"] for b in windows.others("m", "3", "b", since=0.0)) == [1, 4]
    windows.purge("c", before=95.0)
    assert sorted(b["n"] for b in windows.others("m", "3", "a", since=0.0)) == [3]
