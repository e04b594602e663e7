"""The autoscaling decision on made-up sample windows: times are given, never waited for."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from modelport.config.model import Autoscaling
from modelport.controlplane.autoscale import Decision, Sample, decide, span, trim
from tests.fake_clock import FakeClock

S = 1_000_000_000
TICK = S // 2


def config(**overrides: float) -> Autoscaling:
    fields: dict[str, float] = {
        "min_instances": 1,
        "max_instances": 4,
        "target_in_flight_per_instance": 2,
        "upscale_delay_s": 3,
        "downscale_delay_s": 60,
    }
    fields.update(overrides)
    return Autoscaling.model_validate(fields)


class Controller:
    """Feeds the decision a sample every half second, applying counts as the shell would."""

    def __init__(self, cfg: Autoscaling, count: int = 1) -> None:
        self.clock = FakeClock(start_ns=10 * S)
        self.cfg = cfg
        self.count = count
        self.last_change = self.clock.monotonic_ns()
        self.window: list[Sample] = []
        self.changes: list[tuple[float, int, int, str]] = []

    def run(self, seconds: float, load: Callable[[float], int]) -> None:
        for _ in range(round(seconds * S / TICK)):
            now = self.clock.monotonic_ns()
            self.window.append(Sample(now, load((now - 10 * S) / S), 0))
            self.window = trim(self.window, 60 * S, now)
            decision = decide(self.window, self.cfg, self.count, self.last_change, now)
            if decision.count != self.count:
                at = (now - 10 * S) / S
                self.changes.append((at, self.count, decision.count, decision.reason))
                self.count = decision.count
                self.last_change = now
            self.clock.advance(TICK)


def test_sustained_overload_scales_up_within_the_delay() -> None:
    c = Controller(config())
    c.run(10, lambda t: 9)
    assert c.changes[0][:3] == (3.0, 1, 4)
    assert "overload" in c.changes[0][3]


def test_up_goes_to_the_count_the_lightest_sample_needs() -> None:
    c = Controller(config(max_instances=8))
    c.run(4, lambda t: 9 if t < 2 else 5)
    assert c.changes == [(3.0, 1, 3, c.changes[0][3])]


def test_a_short_burst_changes_nothing() -> None:
    c = Controller(config())
    c.run(20, lambda t: 20 if 5 <= t < 7.5 else 1)
    assert c.changes == []


def test_load_exactly_at_target_is_not_overload() -> None:
    c = Controller(config(), count=2)
    c.run(30, lambda t: 4)
    assert c.changes == []


def test_no_upscale_past_max_instances() -> None:
    c = Controller(config(max_instances=2))
    c.run(20, lambda t: 50)
    assert [(f, t) for _, f, t, _ in c.changes] == [(1, 2)]


def test_second_upscale_waits_for_samples_taken_on_the_new_count() -> None:
    c = Controller(config(max_instances=8))
    c.run(12, lambda t: 5 if t < 2.5 else 14)
    # 14 is above the target on 3 from t=2.5, so the samples of the last 3 s
    # are all overloaded at t=5.5, yet only samples since the change count.
    ups = [(at, f, t) for at, f, t, _ in c.changes]
    assert ups[0] == (3.0, 1, 3)
    assert ups[1] == (6.0, 3, 7)


def test_scale_down_only_after_the_downscale_delay_of_underload() -> None:
    c = Controller(config(), count=4)
    c.run(120, lambda t: 1)
    assert c.changes[0][:3] == (60.0, 4, 1)
    assert "underload" in c.changes[0][3]
    assert len(c.changes) == 1


def test_down_goes_to_the_count_the_heaviest_sample_needs() -> None:
    c = Controller(config(), count=4)
    c.run(61, lambda t: 3 if t == 30 else 1)
    # 3 requests need 2 instances strictly below 2 each.
    assert [(at, f, t) for at, f, t, _ in c.changes] == [(60.0, 4, 2)]


def test_one_spike_in_the_downscale_window_holds_the_count() -> None:
    c = Controller(config(), count=3)
    c.run(61, lambda t: 5 if t == 40 else 0)
    assert c.changes == []


def test_load_that_fits_one_instance_fewer_only_at_the_target_holds() -> None:
    # 4 in flight on 3 instances: on 2 it would be exactly the target, not below.
    c = Controller(config(), count=3)
    c.run(200, lambda t: 4)
    assert c.changes == []


def test_steady_load_near_a_boundary_does_not_flap() -> None:
    c = Controller(config(upscale_delay_s=1, downscale_delay_s=5))
    c.run(300, lambda t: 5 if int(t * 2) % 3 else 3)
    # Up once (on 1 the load is always above 2), then it holds: 3 fits 2 at the
    # target but not below it.
    assert [(f, t) for _, f, t, _ in c.changes] == [(1, 2)]


def test_oscillating_load_changes_at_most_once_per_downscale_delay() -> None:
    c = Controller(config(upscale_delay_s=1, downscale_delay_s=10))
    c.run(200, lambda t: 12 if int(t) % 20 < 8 else 0)
    times = [at for at, *_ in c.changes]
    downs = [at for at, f, t, _ in c.changes if t < f]
    assert downs, "the quiet phases last longer than the delay, so it scales down"
    assert all(b - a >= 1 for a, b in itertools.pairwise(times))
    for down in downs:
        previous = max(at for at in times if at < down)
        assert down - previous >= 10


def test_min_instances_zero_keeps_one_instance() -> None:
    c = Controller(config(min_instances=0, downscale_delay_s=2), count=3)
    c.run(30, lambda t: 0)
    assert c.count == 1


def test_counts_outside_the_bounds_are_brought_back() -> None:
    cfg = config(min_instances=2, max_instances=3)
    assert decide([], cfg, 1, 0, S) == Decision(2, "below the least count (2)")
    assert decide([], cfg, 5, 0, S) == Decision(3, "above max_instances (3)")


def test_no_history_no_change() -> None:
    cfg = config(upscale_delay_s=1)
    now = 100 * S
    recent = [Sample(now - S // 2, 10, 10), Sample(now, 10, 10)]
    assert decide(recent, cfg, 1, 0, now).count == 1
    assert decide([Sample(now - S, 10, 10), *recent], cfg, 1, 0, now).count == 4


def test_zero_delay_acts_on_the_latest_sample() -> None:
    cfg = config(upscale_delay_s=0)
    now = 5 * S
    assert decide([Sample(now, 3, 2)], cfg, 1, now, now) == Decision(
        3, "overload: at least 5 requests in flight for 0 s, above 2 per instance on 1"
    )


def test_in_flight_and_queued_both_count() -> None:
    cfg = config(upscale_delay_s=0)
    assert decide([Sample(S, 0, 3)], cfg, 1, 0, S).count == 2
    assert decide([Sample(S, 3, 0)], cfg, 1, 0, S).count == 2


@pytest.mark.parametrize(("delay", "kept"), [(2 * S, 5), (5 * S, 11), (0, 1)])
def test_span_keeps_the_sample_that_opened_it(delay: int, kept: int) -> None:
    window = [Sample(i * TICK, 0, 0) for i in range(11)]
    got = span(window, delay, 5 * S)
    assert got is not None and len(got) == kept
    assert trim(window, delay, 5 * S) == list(got)
    assert span(window, 6 * S, 5 * S) is None
    assert trim(window, 6 * S, 5 * S) == window
