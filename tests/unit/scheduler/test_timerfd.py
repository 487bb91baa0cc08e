"""The real clock's timers fire at their time and never before it, on uvloop (which rounds a
timer's delay to whole milliseconds) as on asyncio's loop, so that a batcher waiting out a
sub-millisecond queue delay sleeps once instead of turning the loop until the window closes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from ferry.scheduler import timerfd
from ferry.scheduler.clock import MONOTONIC

US = 1_000


def on_uvloop(test: Callable[[], Awaitable[Any]]) -> Any:
    """Run `test` on a fresh uvloop loop, the server's."""
    return uvloop.run(test())


async def wait_until(when_ns: int) -> int:
    """Wait as the batcher does: arm a timer for the end of the window, and after each wake-up
    arm again if the window is still open. Returns how many times it armed."""
    armed = 0
    while time.monotonic_ns() < when_ns:
        woken = asyncio.Event()
        timer = MONOTONIC.call_at(when_ns, woken.set)
        armed += 1
        try:
            await woken.wait()
        finally:
            timer.cancel()
    return armed


@pytest.mark.parametrize("delay_us", [50, 200, 500, 1500, 4000])
def test_a_window_is_waited_out_in_one_sleep_on_uvloop(delay_us: int) -> None:
    async def test() -> list[int]:
        return [await wait_until(time.monotonic_ns() + delay_us * US) for _ in range(20)]

    assert on_uvloop(test) == [1] * 20  # no early wake-up, so no second arming


def test_a_wait_that_sleeps_leaves_the_cpu_alone() -> None:
    async def test() -> float:
        spent = time.thread_time()
        for _ in range(50):
            await wait_until(time.monotonic_ns() + 300 * US)
        return time.thread_time() - spent

    assert on_uvloop(test) < 50 * 300e-6 / 2  # turning the loop for the windows costs them all


@settings(max_examples=15, deadline=None)
@given(delays_us=st.lists(st.integers(0, 3000), min_size=1, max_size=12))
def test_timers_fire_in_time_order_never_early(delays_us: list[int]) -> None:
    async def test() -> tuple[list[int], list[int]]:
        start = time.monotonic_ns()
        whens = [start + d * US for d in delays_us]
        fired: list[int] = []
        late: list[int] = []
        done = asyncio.Event()

        def callback(index: int) -> None:
            fired.append(index)
            late.append(time.monotonic_ns() - whens[index])
            if len(fired) == len(whens):
                done.set()

        for index, when in enumerate(whens):
            MONOTONIC.call_at(when, lambda index=index: callback(index))  # type: ignore[misc]
        await asyncio.wait_for(done.wait(), timeout=10)
        return fired, late

    fired, late = on_uvloop(test)
    assert fired == sorted(range(len(delays_us)), key=lambda i: (delays_us[i], i))
    assert min(late) >= 0


def test_cancelled_timers_never_fire_and_do_not_pile_up() -> None:
    async def test() -> None:
        fired: list[str] = []
        far = time.monotonic_ns() + 10**12
        for _ in range(1000):
            MONOTONIC.call_at(far, lambda: fired.append("cancelled")).cancel()
        soon = MONOTONIC.call_at(time.monotonic_ns() + 200 * US, lambda: fired.append("soon"))
        MONOTONIC.call_at(time.monotonic_ns() + 100 * US, lambda: fired.append("x")).cancel()
        await asyncio.sleep(0.02)
        soon.cancel()  # after it ran: nothing changes
        assert fired == ["soon"]
        timers = timerfd._TIMERS[asyncio.get_running_loop()]
        assert timers is not None and len(timers._heap) <= 64 + 2

    on_uvloop(test)


def test_a_callback_that_raises_does_not_stop_the_others() -> None:
    async def test() -> list[Any]:
        loop = asyncio.get_running_loop()
        reported: list[Any] = []
        loop.set_exception_handler(lambda _, context: reported.append(context["exception"]))
        ran = asyncio.Event()
        when = time.monotonic_ns() + 100 * US

        def fail() -> None:
            raise RuntimeError("a broken callback")

        MONOTONIC.call_at(when, fail)
        MONOTONIC.call_at(when, ran.set)
        await asyncio.wait_for(ran.wait(), timeout=5)
        # and the timers go on: a later one still fires
        later = asyncio.Event()
        MONOTONIC.call_at(time.monotonic_ns() + 100 * US, later.set)
        await asyncio.wait_for(later.wait(), timeout=5)
        return reported

    reported = on_uvloop(test)
    assert len(reported) == 1 and str(reported[0]) == "a broken callback"


@pytest.mark.asyncio
async def test_asyncio_s_own_loop_gets_the_same_timers() -> None:
    assert [await wait_until(time.monotonic_ns() + 300 * US) for _ in range(5)] == [1] * 5


def test_without_a_timerfd_an_early_callback_is_held_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(timerfd, "_LIBC", None)

    async def test() -> tuple[list[int], bool]:
        late = []
        for _ in range(10):
            when = time.monotonic_ns() + 300 * US
            woken = asyncio.Event()
            MONOTONIC.call_at(when, woken.set)
            await woken.wait()
            late.append(time.monotonic_ns() - when)
        cancelled = asyncio.Event()
        MONOTONIC.call_at(time.monotonic_ns() + 100 * US, cancelled.set).cancel()
        await asyncio.sleep(0.01)
        return late, cancelled.is_set()

    late, cancelled_fired = on_uvloop(test)
    assert min(late) >= 0 and not cancelled_fired
