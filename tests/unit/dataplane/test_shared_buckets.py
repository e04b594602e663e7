"""Shared token buckets: the arithmetic through the mapped table on a fake clock, one
bucket seen by two handles and by several processes, eviction, and the files that
are refused."""

from __future__ import annotations

import asyncio
import fcntl
import multiprocessing
import os
import stat
import time
from pathlib import Path

import pytest

from modelport.dataplane.admission import shared_buckets
from modelport.dataplane.admission.ratelimit import Decision
from modelport.dataplane.admission.shared_buckets import (
    HEADER_SIZE,
    NodeRateLimiter,
    SharedBuckets,
    key_hash,
    table_size,
)
from modelport.errors import ConfigError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def table(tmp_path: Path, clock: FakeClock, **options: int) -> SharedBuckets:
    return SharedBuckets.open(tmp_path / "buckets", clock=clock, **options)


# --- the arithmetic, through the table ---------------------------------------------------


def test_burst_then_refusal_then_refill(tmp_path: Path) -> None:
    clock = FakeClock()
    buckets = table(tmp_path, clock)
    allowed = [buckets.acquire_now("k", 1.0, 3).allowed for _ in range(5)]
    assert allowed == [True, True, True, False, False]
    clock.now += 0.4
    refused = buckets.acquire_now("k", 1.0, 3)
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(0.6)
    assert refused.remaining == pytest.approx(0.4)
    clock.now += 0.6
    assert buckets.acquire_now("k", 1.0, 3).allowed
    assert not buckets.acquire_now("k", 1.0, 3).allowed


def test_keys_cost_and_the_async_limiter_agree(tmp_path: Path) -> None:
    clock = FakeClock()
    limiter = NodeRateLimiter.open(tmp_path / "buckets", clock=clock)
    assert asyncio.run(limiter.acquire("a", 1.0, 5, cost=4)) == Decision(True, 0.0, 1.0)
    refused = asyncio.run(limiter.acquire("a", 1.0, 5, cost=4))
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(3.0)
    assert asyncio.run(limiter.acquire("b", 1.0, 5, cost=4)).allowed
    asyncio.run(limiter.close())
    with pytest.raises(ValueError, match="closed"):
        limiter.buckets.acquire_now("a", 1.0, 5)


def test_level_peeks_without_taking(tmp_path: Path) -> None:
    clock = FakeClock()
    buckets = table(tmp_path, clock)
    assert buckets.level("k", 1.0, 3) == 3.0
    buckets.acquire_now("k", 1.0, 3, cost=3)
    clock.now += 0.5
    assert buckets.level("k", 1.0, 3) == pytest.approx(0.5)
    assert buckets.level("k", 1.0, 3) == pytest.approx(0.5)
    clock.now += 10
    assert buckets.level("k", 1.0, 3) == 3.0


def test_any_empty_says_when_some_bucket_is_below_one_token(tmp_path: Path) -> None:
    clock = FakeClock()
    buckets = table(tmp_path, clock)
    assert not buckets.any_empty()
    buckets.acquire_now("k", 2.0, 2)
    assert not buckets.any_empty()  # one token left: nobody is empty
    buckets.acquire_now("k", 2.0, 2)
    assert buckets.any_empty()
    clock.now += 0.49
    assert buckets.any_empty()
    clock.now += 0.02  # one token back after 0.5 s
    assert not buckets.any_empty()


def test_impossible_limits_are_refused_before_the_table_is_touched(tmp_path: Path) -> None:
    buckets = table(tmp_path, FakeClock())
    with pytest.raises(ValueError, match="cost must be between 1 and burst"):
        buckets.acquire_now("k", 1.0, 2, cost=3)
    with pytest.raises(ValueError, match="rate must be"):
        buckets.level("k", 0.0, 2)
    assert buckets.used() == 0


# --- one bucket for every handle and process ---------------------------------------------


def test_two_handles_on_one_file_see_one_bucket(tmp_path: Path) -> None:
    clock = FakeClock()
    first, second = table(tmp_path, clock), table(tmp_path, clock)
    assert first.acquire_now("k", 1.0, 2).allowed
    assert second.acquire_now("k", 1.0, 2).allowed
    assert not first.acquire_now("k", 1.0, 2).allowed
    assert second.any_empty()
    first.close()
    first.close()  # idempotent, and the other handle goes on
    clock.now += 1.0
    assert second.acquire_now("k", 1.0, 2).allowed
    assert not second.acquire_now("k", 1.0, 2).allowed


PROCESSES = 3
BURST = 6000
ATTEMPTS = 4000  # per process: twice the burst in all


def hammer(path: str, start: object, results: object) -> None:
    """One worker process: take from one key as fast as it can, say how often it was let in."""
    buckets = SharedBuckets.open(path)
    start.wait()  # type: ignore[attr-defined]  # all at once: the point is contention
    # 1e-9 tokens a second: nothing refills while the test runs.
    allowed = sum(buckets.acquire_now("model:m", 1e-9, BURST).allowed for _ in range(ATTEMPTS))
    results.put(allowed)  # type: ignore[attr-defined]
    buckets.close()


def test_processes_hammering_one_key_are_let_in_burst_times_in_all(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(PROCESSES), context.Queue()
    path = str(tmp_path / "buckets")
    SharedBuckets.open(path).close()  # one creator, as the supervisor would
    workers = [
        context.Process(target=hammer, args=(path, start, results)) for _ in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    counts = [results.get(timeout=30) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    assert sum(counts) == BURST, counts
    assert SharedBuckets.open(path).level("model:m", 1e-9, BURST) < 1.0


def test_a_forked_child_gets_a_lock_of_its_own(tmp_path: Path) -> None:
    buckets = table(tmp_path, FakeClock())
    fcntl.flock(buckets._fd, fcntl.LOCK_EX)  # the parent is inside an operation
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit code
            try:
                # An inherited description would share the parent's lock and pass.
                fcntl.flock(buckets._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                code = 1
            except BlockingIOError:
                code = 0
            except BaseException:
                code = 2
            os._exit(code)
        _, status = os.waitpid(pid, 0)
    finally:
        fcntl.flock(buckets._fd, fcntl.LOCK_UN)
    assert os.waitstatus_to_exitcode(status) == 0


# --- a bounded table ---------------------------------------------------------------------


def test_full_buckets_are_reused_before_busy_ones(tmp_path: Path) -> None:
    clock = FakeClock()
    buckets = table(tmp_path, clock, capacity=4)
    buckets.acquire_now("idle", 1.0, 1)  # full again at +1 s
    for key in ("a", "b", "c"):
        buckets.acquire_now(key, 1e-6, 1)  # empty for days
    clock.now += 1.5
    assert buckets.acquire_now("new", 1e-6, 1).allowed  # takes the idle key's slot
    assert buckets.used() == 4
    for key in ("a", "b", "c", "new"):
        assert not buckets.acquire_now(key, 1e-6, 1).allowed, key


def test_a_full_table_forgets_the_oldest_stamp(tmp_path: Path) -> None:
    clock = FakeClock()
    buckets = table(tmp_path, clock, capacity=4)
    for key in ("a", "b", "c", "d"):
        buckets.acquire_now(key, 1e-6, 1)
        clock.now += 0.1
    assert buckets.acquire_now("e", 1e-6, 1).allowed
    # "a" was forgotten (errs toward allowing); the newer three still refuse.
    for key in ("b", "c", "d", "e"):
        assert not buckets.acquire_now(key, 1e-6, 1).allowed, key
    assert buckets.acquire_now("a", 1e-6, 1).allowed


def test_the_probe_window_is_bounded(tmp_path: Path) -> None:
    clock = FakeClock()
    capacity = 64
    same_start = [k for k in (f"key{i}" for i in range(10_000)) if key_hash(k) % capacity == 0]
    first, second, third = same_start[:3]
    buckets = table(tmp_path, clock, capacity=capacity, probe=2)
    buckets.acquire_now(first, 1e-6, 1)
    clock.now += 0.1
    buckets.acquire_now(second, 1e-6, 1)
    clock.now += 0.1
    # The table has 62 free slots, but only two are in reach: the oldest goes.
    assert buckets.acquire_now(third, 1e-6, 1).allowed
    assert buckets.used() == 2
    assert not buckets.acquire_now(second, 1e-6, 1).allowed
    assert buckets.acquire_now(first, 1e-6, 1).allowed


# --- the file ----------------------------------------------------------------------------


def test_the_file_is_private_and_made_whole(tmp_path: Path) -> None:
    table(tmp_path, FakeClock(), capacity=16).close()
    info = (tmp_path / "buckets").stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_size == table_size(16) == HEADER_SIZE + 16 * 32
    assert os.listdir(tmp_path) == ["buckets"]  # no temporary file left behind


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "is 0 bytes"),
        (b"hello", "is 5 bytes"),
        (b"\x00" * table_size(16), "wrong header"),
    ],
)
def test_a_foreign_file_is_refused_and_left_alone(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "buckets"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=problem) as refused:
        SharedBuckets.open(path, capacity=16)
    assert str(path) in refused.value.message and "remove the file" in refused.value.message
    assert path.read_bytes() == content


def test_a_table_of_another_shape_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "buckets"
    SharedBuckets.open(path, capacity=16, probe=4).close()
    with pytest.raises(ConfigError, match="is 576 bytes where this server's table is 1088"):
        SharedBuckets.open(path, capacity=32)
    with pytest.raises(ConfigError, match="probed 4 deep, this server expects 16 probed 8"):
        SharedBuckets.open(path, capacity=16, probe=8)


def test_a_file_open_to_others_or_not_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "buckets"
    SharedBuckets.open(path, capacity=16).close()
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="open to other users"):
        SharedBuckets.open(path, capacity=16)
    (tmp_path / "dir").mkdir()
    with pytest.raises(ConfigError, match="cannot open"):
        SharedBuckets.open(tmp_path / "dir", capacity=16)


def test_a_table_from_before_a_reboot_is_cleared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    before = table(tmp_path, clock, capacity=16)
    before.acquire_now("k", 1e-6, 1)
    assert before.any_empty()
    before.close()
    monkeypatch.setattr(shared_buckets, "boot_id", lambda: b"\x01" * 16)
    after = table(tmp_path, clock, capacity=16)
    assert after.used() == 0 and not after.any_empty()
    assert after.acquire_now("k", 1e-6, 1).allowed


def test_the_real_clock_is_the_default(tmp_path: Path) -> None:
    buckets = SharedBuckets.open(tmp_path / "buckets", capacity=16)
    assert buckets.acquire_now("k", 1000.0, 1).allowed
    time.sleep(0.002)
    assert buckets.acquire_now("k", 1000.0, 1).allowed
