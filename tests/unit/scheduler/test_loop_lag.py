"""The event loop's lag (scheduler/loop_lag.py): a timer that notes how late it ran, the worst of
the last second published as a plain number; on simulated time, then on a real loop blocked by
hand."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ferry.scheduler.clock import FakeClock, MonotonicClock
from ferry.scheduler.loop_lag import LoopLag

MS = 1_000_000


def test_it_reads_the_loop_every_period_while_started_and_leaves_nothing_armed_when_stopped() -> (
    None
):
    clock = FakeClock()
    lag = LoopLag(clock, period_ns=10 * MS, window_ns=1000 * MS)
    lag.start()
    lag.start()  # a second start arms no second chain
    assert clock.pending == 1
    clock.advance(100 * MS)
    assert lag.readings == 10 and lag.worst_s == 0.0  # a fake clock runs every timer on time
    lag.stop()
    assert clock.pending == 0
    clock.advance(100 * MS)
    assert lag.readings == 10


def test_the_worst_reading_holds_for_a_window_then_gives_way_to_the_next_worst() -> None:
    clock = FakeClock()
    lag = LoopLag(clock, period_ns=10 * MS, window_ns=1000 * MS)
    lag.record(2 * MS, 0)
    lag.record(50 * MS, 100 * MS)  # a pause
    lag.record(5 * MS, 200 * MS)
    lag.record(1 * MS, 900 * MS)
    assert lag.worst_s == pytest.approx(0.050)
    lag.record(1 * MS, 1101 * MS)  # the pause left the window; the 5 ms reading did not
    assert lag.worst_s == pytest.approx(0.005)
    lag.record(0, 1250 * MS)
    assert lag.worst_s == pytest.approx(0.001)


def test_a_stopped_probe_reads_no_lag() -> None:
    lag = LoopLag(FakeClock())
    lag.record(30 * MS, 0)
    lag.stop()
    assert lag.worst_s == 0.0


@pytest.mark.parametrize(("period", "window"), [(0, 1000), (-1, 1000), (20, 10)])
def test_a_period_must_be_positive_and_fit_the_window(period: int, window: int) -> None:
    with pytest.raises(ValueError, match="need 0 < period <= window"):
        LoopLag(FakeClock(), period_ns=period, window_ns=window)


@given(st.lists(st.tuples(st.integers(0, 400), st.integers(0, 100)), min_size=1, max_size=200))
def test_the_published_worst_is_the_largest_reading_within_the_window(
    readings: list[tuple[int, int]],
) -> None:
    """Against a brute-force scan: (gap since the last reading, lateness) in milliseconds."""
    window = 1000 * MS
    lag = LoopLag(FakeClock(), period_ns=10 * MS, window_ns=window)
    now = 0
    seen: list[tuple[int, int]] = []
    for gap, lateness in readings:
        now += gap * MS
        lag.record(lateness * MS, now)
        seen.append((now, lateness * MS))
        expected = max(late for at, late in seen if at >= now - window)
        assert lag.worst_s == expected / 1e9


@pytest.mark.asyncio
async def test_a_loop_blocked_by_a_callback_shows_as_lag_on_the_real_clock() -> None:
    lag = LoopLag(MonotonicClock(), period_ns=5 * MS)
    lag.start()
    try:
        await asyncio.sleep(0.05)
        time.sleep(0.06)  # noqa: ASYNC251 - the point: the loop is blocked, the timer comes due
        await asyncio.sleep(0.03)
        assert lag.worst_s >= 0.04
        assert lag.readings >= 5
    finally:
        lag.stop()
