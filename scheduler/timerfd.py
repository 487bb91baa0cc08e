"""Timers on the event loop that fire at their time, never before it, without spinning: one
Linux timerfd per loop.

An event loop sleeps in epoll, whose timeout counts whole milliseconds. uvloop rounds a timer's
delay to the nearest millisecond: a callback due in 0.2 ms runs on the next turn of the loop,
at once, and one due in 1.5 ms after about 1.1 ms (asyncio's own loop rounds up instead, and
runs it up to a millisecond late). A batcher that waits out a 200 µs queue delay that way wakes
early, finds the window still open, waits again, and turns the loop over and over until it
closes: a core busy for every batch that waits, at any load. A timerfd armed for the earliest
pending time wakes epoll within microseconds of it, and the loop sleeps until then.

Where there is no timerfd (not Linux), `call_at` falls back to the loop's own timers and holds
back a callback that comes early until its time: correct, at the cost of those extra turns.
"""

from __future__ import annotations

import asyncio
import ctypes
import heapq
import itertools
import os
import sys
import time
import weakref
from collections.abc import Callable

_CLOCK_MONOTONIC = 1  # time.monotonic_ns reads this clock
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC
_TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class _Libc:
    """timerfd_create and timerfd_settime through ctypes (os.timerfd_* come with Python 3.13)."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.create = libc.timerfd_create
        self.create.argtypes = [ctypes.c_int, ctypes.c_int]
        self.settime = libc.timerfd_settime
        self.settime.argtypes = [
            ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec), ctypes.c_void_p,
        ]  # fmt: skip


def _libc() -> _Libc | None:
    if sys.platform != "linux":
        return None
    try:
        return _Libc()
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


class TimerHandle:
    """One pending callback; `cancel` keeps it from running (a no-op once it ran)."""

    __slots__ = ("_owner", "callback", "cancelled")

    def __init__(self, callback: Callable[[], None], owner: _LoopTimers | None) -> None:
        self.callback = callback
        self.cancelled = False
        self._owner = owner

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            if self._owner is not None:
                self._owner.cancelled_one()


class _LoopTimers:
    """The timers of one event loop: a heap of (when, order, handle) and a timerfd armed for the
    earliest, read by the loop (add_reader). Cancelled handles stay in the heap until they reach
    its top or the heap is rebuilt (when they are most of it)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, libc: _Libc) -> None:
        fd = libc.create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self._fd = fd
        self._libc = libc
        self._spec = _Itimerspec()
        self._heap: list[tuple[int, int, TimerHandle]] = []
        self._order = itertools.count()
        self._armed_at: int | None = None
        self._cancelled = 0
        loop.add_reader(fd, self._ready)
        weakref.finalize(loop, os.close, fd)  # the loop, gone, no longer reads it

    def call_at(self, when_ns: int, callback: Callable[[], None]) -> TimerHandle:
        handle = TimerHandle(callback, self)
        heapq.heappush(self._heap, (when_ns, next(self._order), handle))
        if self._armed_at is None or when_ns < self._armed_at:
            self._arm(when_ns)
        return handle

    def cancelled_one(self) -> None:
        """A pending handle was cancelled: rebuild the heap once such handles are most of it."""
        self._cancelled += 1
        heap = self._heap
        if self._cancelled > 64 and self._cancelled * 2 > len(heap):
            self._heap = [entry for entry in heap if not entry[2].cancelled]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def _arm(self, when_ns: int) -> None:
        value = self._spec.it_value
        value.tv_sec, value.tv_nsec = divmod(max(when_ns, 1), 1_000_000_000)
        if self._libc.settime(self._fd, _TFD_TIMER_ABSTIME, ctypes.byref(self._spec), None):
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")
        self._armed_at = when_ns

    def _ready(self) -> None:
        try:
            os.read(self._fd, 8)  # the expiration count; reading it re-enables the wake-up
        except BlockingIOError:
            pass
        self._armed_at = None
        heap = self._heap
        now = time.monotonic_ns()
        while heap and heap[0][0] <= now:
            handle = heapq.heappop(heap)[2]
            if handle.cancelled:
                self._cancelled -= 1
                continue
            handle.cancelled = True  # ran: a later cancel changes nothing
            try:
                handle.callback()
            except Exception as exc:  # as the loop's own timers do: report, run the others
                asyncio.get_running_loop().call_exception_handler(
                    {"message": "exception in a timer callback", "exception": exc}
                )
        while heap and heap[0][2].cancelled:  # arm for a live timer, not a cancelled one
            heapq.heappop(heap)
            self._cancelled -= 1
        if heap:
            self._arm(heap[0][0])


_TIMERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopTimers | None] = (
    weakref.WeakKeyDictionary()
)


def call_at(when_ns: int, callback: Callable[[], None]) -> TimerHandle:
    """Run `callback` on the running loop once time.monotonic_ns() reads `when_ns` or more (on
    the next turn of the loop if it already does)."""
    loop = asyncio.get_running_loop()
    try:
        timers = _TIMERS[loop]
    except KeyError:
        timers = _TIMERS[loop] = _start(loop)
    if timers is not None:
        return timers.call_at(when_ns, callback)
    return _fallback(loop, when_ns, callback)


def _start(loop: asyncio.AbstractEventLoop) -> _LoopTimers | None:
    """The loop's timerfd, or None where there is none (not Linux, a loop without readers)."""
    if _LIBC is None:
        return None
    try:
        return _LoopTimers(loop, _LIBC)
    except (OSError, NotImplementedError):
        return None


def _fallback(
    loop: asyncio.AbstractEventLoop, when_ns: int, callback: Callable[[], None]
) -> TimerHandle:
    """The loop's own timers, a callback that comes early held back until its time."""
    handle = TimerHandle(callback, None)

    def fire() -> None:
        if handle.cancelled:
            return
        left = when_ns - time.monotonic_ns()
        if left > 0:
            loop.call_at(loop.time() + left / 1e9, fire)
            return
        handle.cancelled = True
        callback()

    loop.call_at(loop.time() + max(when_ns - time.monotonic_ns(), 0) / 1e9, fire)
    return handle
