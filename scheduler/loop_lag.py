"""How late the event loop runs what is due: the wait no latency controller sees.

A request meets the loop's lag twice outside the scheduler: before its handler runs (gRPC has
the call, the loop is busy elsewhere) and again before its answer is written. On a loop that
serves thousands of requests a second that wait can be a large share of a few milliseconds'
budget, and nothing in a batch's cost or a queue explains it. A timer that asks to run every
`PERIOD_NS` and notes how late it ran measures it directly; `worst_s` is the worst lateness of
the last `WINDOW_NS`, the figure a p99 budget must leave room for. Readings include the
timer's own wake-up, a small floor that an idle loop shows too.

The probe is a chain of timers on the scheduler's `Clock` (one armed at a time), started and
stopped by its owner (the server, server/app.py); a stopped probe reads 0. The window's worst is
kept by a deque whose lateness falls from front to back (O(1) a reading) and published as a
plain number at each reading, so that another thread (the metrics endpoint's) may read it.
"""

from __future__ import annotations

from collections import deque

from ferry.scheduler.clock import Clock, Timer

PERIOD_NS = 10_000_000
"""How often the probe asks to run: often enough that a second holds a hundred readings, rarely
enough that an idle server hardly wakes for it."""

WINDOW_NS = 1_000_000_000
"""`worst_s` is over the readings of this last stretch of time."""


class LoopLag:
    def __init__(self, clock: Clock, period_ns: int = PERIOD_NS, window_ns: int = WINDOW_NS):
        if period_ns <= 0 or window_ns < period_ns:
            raise ValueError(
                f"period {period_ns} ns, window {window_ns} ns: need 0 < period <= window"
            )
        self._clock = clock
        self._period_ns = period_ns
        self._window_ns = window_ns
        self._worst: deque[tuple[int, int]] = deque()  # (read at, lateness ns), lateness falling
        self._timer: Timer | None = None
        self.readings = 0
        self.worst_s = 0.0
        """The worst lateness over the last window as of the last reading, in seconds."""

    def start(self) -> None:
        if self._timer is None:
            self._arm(self._clock.now())

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._worst.clear()
        self.worst_s = 0.0

    def record(self, lateness_ns: int, now_ns: int) -> None:
        """One reading: what was due at `now_ns - lateness_ns` ran at `now_ns`."""
        self.readings += 1
        worst = self._worst
        while worst and worst[-1][1] <= lateness_ns:
            worst.pop()  # an older reading no worse than this one can never be the worst again
        worst.append((now_ns, lateness_ns))
        horizon = now_ns - self._window_ns
        while worst[0][0] < horizon:  # never the reading just appended
            worst.popleft()
        self.worst_s = worst[0][1] / 1e9

    def _arm(self, from_ns: int) -> None:
        due = from_ns + self._period_ns
        self._timer = self._clock.call_at(due, lambda: self._tick(due))

    def _tick(self, due_ns: int) -> None:
        now = self._clock.now()
        self.record(max(0, now - due_ns), now)
        self._arm(now)
