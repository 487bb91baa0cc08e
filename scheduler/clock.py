"""The scheduler's only source of time: read it (`now`) and be called back at a time (`call_at`).

Every time limit (queue delay, queue timeouts, caller deadlines) goes through one `Clock`, so a
test that hands in a `FakeClock` moves the scheduler's time by hand and sees every timer fire at
exactly the moment it moves past it, with no sleeps and no hooks in the scheduler's classes.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol

from ferry.scheduler.timerfd import call_at as precise_call_at


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Monotonic nanoseconds, and callbacks on the event loop at a given reading."""

    def now(self) -> int: ...

    def call_at(self, when_ns: int, callback: Callable[[], None]) -> Timer:
        """Run `callback` once the clock reads `when_ns` or later (at once if it already does)."""
        ...


class MonotonicClock:
    """The real clock: `time.monotonic_ns`, timers on the running event loop that fire at
    their time and never before it (scheduler/timerfd.py: the loop's own timers count whole
    milliseconds, and uvloop's fire up to half of one early)."""

    now = staticmethod(time.monotonic_ns)
    call_at = staticmethod(precise_call_at)


MONOTONIC = MonotonicClock()


class _FakeTimer:
    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A clock that moves only when told to (`advance`, `advance_to`); for tests.

    Timers fire in order of their time, each with the clock reading that time, while the clock
    moves past them. What they set in motion (a woken batcher, a failed future) runs once the
    test yields to the event loop.
    """

    def __init__(self, start_ns: int = 0) -> None:
        self._now = start_ns
        self._timers: list[tuple[int, int, _FakeTimer]] = []
        self._seq = itertools.count()

    def now(self) -> int:
        return self._now

    def call_at(self, when_ns: int, callback: Callable[[], None]) -> Timer:
        timer = _FakeTimer(callback)
        heapq.heappush(self._timers, (when_ns, next(self._seq), timer))
        return timer

    @property
    def pending(self) -> int:
        """Timers armed and not cancelled (a test can check that nothing is left behind)."""
        return sum(1 for _, _, t in self._timers if not t.cancelled)

    def advance(self, ns: int) -> None:
        if ns < 0:
            raise ValueError(f"a monotonic clock never goes back, got advance({ns})")
        self.advance_to(self._now + ns)

    def advance_to(self, when_ns: int) -> None:
        if when_ns < self._now:
            raise ValueError(f"a monotonic clock never goes back: {self._now} -> {when_ns}")
        while self._timers and self._timers[0][0] <= when_ns:
            at, _, timer = heapq.heappop(self._timers)
            self._now = max(self._now, at)
            if not timer.cancelled:
                timer.cancelled = True
                timer.callback()
        self._now = when_ns
