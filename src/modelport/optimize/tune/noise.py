"""The current version and the best candidate timed again, and what the outcomes say.

The sweep times each candidate once, and a slow spell of the machine during
one candidate's turn can make it look faster or slower than it is. So before
a new version is written, the current version and the sweep's best candidate
run again over ``NOISE_ROUNDS`` alternating rounds, and
``choose.beyond_noise`` decides on those rounds alone. This module runs the
rounds and writes the verdict into both outcomes, for the report.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from modelport.dataplane.runtime.base import Runtime
from modelport.optimize.tune.candidates import Candidate
from modelport.optimize.tune.choose import NOISE_ROUNDS, NoiseCheck, Outcome, beyond_noise
from modelport.optimize.tune.measure import Clock, Timing, round_cost
from modelport.types import Array

#: Loads a candidate as the server would, computing on the given number of threads.
Loader = Callable[[Candidate, int], Runtime]


def noise_check(
    sides: tuple[tuple[Candidate, Timing], tuple[Candidate, Timing]],
    load: Loader,
    held_out: Mapping[str, Array],
    outputs: Sequence[str],
    objective: str,
    seconds: float,
    cores: int,
    clock: Clock,
) -> NoiseCheck:
    """Time the current version and the challenger again, alternately, NOISE_ROUNDS times each.

    ``sides``: the current version, then the challenger, each with its best
    timing from the sweep, whose thread count (and batch size) it runs at.
    The side that goes first swaps every round, so a slow spell of the
    machine does not always fall on the same one.
    """
    loaded: list[Runtime] = []
    try:
        for candidate, timing in sides:
            loaded.append(load(candidate, timing.threads))
        costs: list[list[float]] = [[], []]
        for turn in range(NOISE_ROUNDS):
            for side in (0, 1) if turn % 2 == 0 else (1, 0):
                costs[side].append(
                    round_cost(
                        loaded[side].predict,
                        held_out,
                        outputs,
                        sides[side][1],
                        objective,
                        seconds,
                        cores,
                        clock,
                    )
                )
    finally:
        for runtime in loaded:
            runtime.unload()
    return beyond_noise(costs[0], costs[1])


def mark_beyond_noise(current: Outcome, winner: Outcome, noise: NoiseCheck) -> None:
    """Say in both outcomes that the winner beat the current version beyond noise."""
    rounds = f"{NOISE_ROUNDS} rounds each"
    winner.reason += (
        f"; {noise.gain:.1%} better than the current version, beyond measurement noise "
        f"±{noise.noise:.1%} ({rounds})"
    )
    current.status = "lost"
    current.reason = (
        f"the current version: {winner.name} is {noise.gain:.1%} better beyond measurement "
        f"noise ±{noise.noise:.1%} ({rounds})"
    )


def mark_within_noise(current: Outcome, challenger: Outcome, noise: NoiseCheck) -> None:
    """Say in both outcomes that the challenger's gain was within noise, so the current stays."""
    challenger.status = "within noise"
    challenger.reason = (
        f"{noise.gain:+.1%} against the current version, not beyond measurement noise "
        f"±{noise.noise:.1%} ({NOISE_ROUNDS} rounds each)"
    )
    current.status = "kept"
    current.reason = (
        f"the current version: no candidate beat it beyond measurement noise (±{noise.noise:.1%})"
    )
