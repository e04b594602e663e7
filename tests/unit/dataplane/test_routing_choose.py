"""Version choice: weighted splits, sticky callers, and how few callers move when weights do."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from modelport.dataplane.routing import Route, TrafficPolicy, choose_version

KEYS = [f"user-{i}" for i in range(20_000)]


def _policy(*weights: tuple[str, int]) -> TrafficPolicy:
    return TrafficPolicy(tuple(Route(v, w) for v, w in weights))


def _never() -> float:
    raise AssertionError("a sticky key must not draw a random number")


def _share(counts: Counter[str], version: str) -> float:
    return counts[version] / sum(counts.values())


# Five standard deviations of a binomial share over 20,000 draws at p = 0.5 is
# about 0.018; the bounds below are that wide so the tests only fail on a bug.
TOLERANCE = 0.018


@pytest.mark.parametrize(("first", "second"), [(90, 10), (80, 20), (70, 30), (50, 50), (1, 99)])
def test_sticky_split_follows_the_weights(first: int, second: int) -> None:
    policy = _policy(("1", first), ("2", second))
    counts = Counter(choose_version("m", policy, k, _never) for k in KEYS)
    assert set(counts) <= {"1", "2"}
    assert abs(_share(counts, "2") - second / 100) < TOLERANCE


def test_random_split_follows_the_weights() -> None:
    policy = _policy(("1", 70), ("2", 20), ("3", 10))
    draw = random.Random(7).random
    counts = Counter(choose_version("m", policy, None, draw) for _ in range(20_000))
    assert abs(_share(counts, "1") - 0.7) < TOLERANCE
    assert abs(_share(counts, "2") - 0.2) < TOLERANCE
    assert abs(_share(counts, "3") - 0.1) < TOLERANCE


@pytest.mark.parametrize(("first", "second"), [(80, 20), (50, 50), (1, 99)])
def test_random_split_of_two_versions_follows_the_weights(first: int, second: int) -> None:
    policy = _policy(("1", first), ("2", second))
    draw = random.Random(11).random
    counts = Counter(choose_version("m", policy, None, draw) for _ in range(20_000))
    assert set(counts) == {"1", "2"}
    assert abs(_share(counts, "2") - second / 100) < TOLERANCE


def test_random_draw_edges_map_onto_the_ranges() -> None:
    policy = _policy(("1", 90), ("2", 10))
    assert choose_version("m", policy, None, lambda: 0.0) == "1"
    assert choose_version("m", policy, None, lambda: 0.8999) == "1"
    assert choose_version("m", policy, None, lambda: 0.9) == "2"
    assert choose_version("m", policy, None, lambda: 0.99999) == "2"
    assert choose_version("m", policy, None, lambda: 1.0) == "2"


def test_a_key_stays_on_its_version() -> None:
    policy = _policy(("1", 50), ("2", 50))
    first = [choose_version("m", policy, k, _never) for k in KEYS[:500]]
    again = [choose_version("m", policy, k, _never) for k in KEYS[:500]]
    assert first == again
    # The order routes are listed in does not matter; version numbers do.
    reordered = TrafficPolicy((Route("2", 50), Route("1", 50)))
    assert [choose_version("m", reordered, k, _never) for k in KEYS[:500]] == first


def test_models_hash_keys_independently() -> None:
    policy = _policy(("1", 50), ("2", 50))
    a = [choose_version("a", policy, k, _never) for k in KEYS[:2000]]
    b = [choose_version("b", policy, k, _never) for k in KEYS[:2000]]
    agree = sum(x == y for x, y in zip(a, b, strict=True)) / len(a)
    assert 0.4 < agree < 0.6


def test_moving_ten_percent_of_weight_moves_about_ten_percent_of_keys() -> None:
    before = _policy(("1", 90), ("2", 10))
    after = _policy(("1", 80), ("2", 20))
    moves = Counter(
        (choose_version("m", before, k, _never), choose_version("m", after, k, _never))
        for k in KEYS
    )
    moved = {pair: n for pair, n in moves.items() if pair[0] != pair[1]}
    assert set(moved) == {("1", "2")}  # nobody moves back from 2 to 1
    assert abs(moved["1", "2"] / len(KEYS) - 0.10) < TOLERANCE


def test_zero_weight_gets_nothing() -> None:
    policy = _policy(("1", 50), ("2", 0), ("3", 50))
    sticky = Counter(choose_version("m", policy, k, _never) for k in KEYS)
    draw = random.Random(3).random
    drawn = Counter(choose_version("m", policy, None, draw) for _ in range(20_000))
    assert sticky["2"] == 0
    assert drawn["2"] == 0
    assert abs(_share(sticky, "3") - 0.5) < TOLERANCE
    only = _policy(("1", 0), ("2", 100))
    assert {choose_version("m", only, k, _never) for k in KEYS[:1000]} == {"2"}
