"""Alternating rounds: how two or more servers, all up at once, take turns under one load.

Two servers measured minutes apart differ by more than the effects looked
for here (the machine's speed drifts with its other tenants), so every
comparison keeps all sides up and runs short loads on each in turn, then
reports each side's median run and how far its runs spread.

The order flips every round: a run straight after another does slightly
better (an A/A test of two identical servers showed it), so with sides
A, B the runs go A B, B A, A B, ... and each side is first as often as last.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import TypeVar

Side = TypeVar("Side")
Run = TypeVar("Run")


def round_order(sides: Sequence[Side], rounds: int) -> list[tuple[int, Side]]:
    """``(round, side)`` pairs: the sides in order in even rounds, reversed in odd ones.

    >>> round_order(["a", "b", "f"], 2)
    [(0, 'a'), (0, 'b'), (0, 'f'), (1, 'f'), (1, 'b'), (1, 'a')]
    """
    order: list[tuple[int, Side]] = []
    for round_no in range(rounds):
        turn = list(sides) if round_no % 2 == 0 else list(reversed(sides))
        order.extend((round_no, side) for side in turn)
    return order


def median_run(runs: Sequence[Run], key: Callable[[Run], float]) -> Run:
    """The run whose ``key`` is the median (the upper one of an even count)."""
    ordered = sorted(runs, key=key)
    return ordered[len(ordered) // 2]


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def spread(values: Sequence[float]) -> float | None:
    """(max - min) / median: how far one side's rounds differ between themselves.

    >>> spread([90.0, 100.0, 110.0])
    0.2
    """
    mid = median(values)
    if not mid:
        return None
    return (max(values) - min(values)) / mid
