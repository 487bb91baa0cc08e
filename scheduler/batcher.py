"""Batch formation for one profile: when the next batch leaves, and which requests ride in it.

`next_batch()` is awaited only when an instance is free (the runner holds one), so while all
instances are busy requests pile up and leave together. A batch is led by the head of the queue
(highest priority first, then oldest) and takes the waiting requests of the head's priority
level and batch key, oldest first, while rows fit. It leaves when those rows reach the profile's
batch limit or a preferred batch size, or when the oldest of them has waited `max_queue_delay_s`
(counted from its arrival), whichever comes first.

Time limits are enforced while requests wait, not only when a batch forms: one timer per batcher
fires at the earliest queue timeout or caller deadline, so a request is refused (REJECT), moved
back (DELAY) or failed (deadline) on time even while every instance is busy.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import weakref

from ferry.common.errors import DeadlineExceeded, QueueFull, QueueTimeout, ShuttingDown
from ferry.engines.base import Profile
from ferry.scheduler.batch import Batch
from ferry.scheduler.clock import MONOTONIC, Clock, Timer
from ferry.scheduler.config import BatchingConfig, TimeoutAction
from ferry.scheduler.loop_lag import LoopLag
from ferry.scheduler.queue import RequestQueue
from ferry.scheduler.request import InferenceRequest, set_exception_if_pending
from ferry.scheduler.shapes import Padding
from ferry.scheduler.slo import SloController


class Batcher:
    def __init__(
        self,
        config: BatchingConfig,
        profile: Profile,
        padding: Padding | None = None,
        clock: Clock = MONOTONIC,
        instances: int = 1,
        loop_lag: LoopLag | None = None,
    ) -> None:
        """`loop_lag`: the serving loop's probe, for a latency controller (scheduler/slo.py)."""
        self._config = config
        self._profile = profile
        self._padding = padding or Padding()
        self._clock = clock
        self._now = clock.now
        self._queue = RequestQueue(config.levels)
        self._wakeup = asyncio.Event()
        self._closed = False
        self._delay_ns = int(config.max_queue_delay_s * 1e9)
        self._largest_preferred = max(config.preferred_batch_sizes, default=0)
        self.max_rows = profile.batch_rows(config.max_batch_size)
        # (when, seq, request): weak, so that a request answered long before its deadline is
        # freed at once, with its inputs and outputs, instead of when the deadline passes.
        self._limits: list[tuple[int, int, weakref.ref[InferenceRequest]]] = []
        self._seq = itertools.count()
        self._timer: Timer | None = None
        self._timer_at = 0
        # Callers of next_batch(levels) waiting now, by `levels` (reserved instances' pumps).
        self._reserved_waiting: dict[int, int] = {}
        # With a latency budget, the delay and the batch cap follow the load (scheduler/slo.py).
        self.slo = (
            SloController(config.slo, instances, self.max_rows, clock.now(), loop_lag)
            if config.slo is not None and config.batched
            else None
        )

    @property
    def profile(self) -> Profile:
        return self._profile

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def nbytes(self) -> int:
        """Input bytes held by waiting requests."""
        return self._queue.nbytes

    def submit(self, request: InferenceRequest) -> None:
        """Queue `request` without waiting; refuse at once when that is impossible."""
        if self._closed:
            raise ShuttingDown("the model is shutting down")
        limit = self._config.policy(request.level).max_queue_size
        if limit and self._queue.waiting_at(request.level) >= limit:
            raise QueueFull(f"Exceeds maximum queue size ({limit} requests waiting)")
        now = self._now()
        slo = self.slo
        if slo is not None:
            slo.arrived(request.rows, now)
            oldest = self._queue.oldest(request.level, request.batch_key)
            request.planned_s = slo.admit(
                self._queue.total_rows,
                request.rows,
                now,
                request.deadline_ns,
                0.0 if oldest is None else (now - oldest.enqueued_ns) / 1e9,
            )
        request.enqueued_ns = now
        self._queue.push(request)
        for when in (request.deadline_ns, request.queue_deadline_ns):
            if when is not None:
                heapq.heappush(self._limits, (when, next(self._seq), weakref.ref(request)))
                if len(self._limits) > 4 * len(self._queue) + 64:
                    self._compact()
                self._arm()
        self._wakeup.set()

    def leaves_at_once(self, request: InferenceRequest) -> bool:
        """Whether `request`, alone in an empty queue, would leave as a batch of its own right
        away: no batching delay to wait out (or it fills a batch), and nothing to pad."""
        if self._closed or self._padding.inputs:
            return False
        if not self._config.batched or self._delay() <= 0:
            return True
        rows = request.rows
        return rows >= self._cap() or bool(
            self._largest_preferred and rows >= self._largest_preferred
        )

    async def next_batch(self, levels: int | None = None) -> Batch:
        """The next batch to run; waits for requests and for the delay window as needed.
        `levels`: take requests of the first `levels` priority levels only (an instance
        reserved for high priority). Several callers may wait at once; each re-checks after
        every wake-up, and a batch is taken whole by one of them. While a reserved caller
        waits, the others leave its levels to it: an idle reserved instance serves high
        priority before an unreserved one does, and the unreserved ones go on with the rest."""
        if levels is not None:
            self._reserved_waiting[levels] = self._reserved_waiting.get(levels, 0) + 1
        try:
            return await self._next_batch(levels)
        finally:
            if levels is not None:
                self._reserved_waiting[levels] -= 1
                if not self._reserved_waiting[levels]:
                    del self._reserved_waiting[levels]
                    if len(self._queue):  # what it left behind is the others' again
                        self._wakeup.set()

    async def _next_batch(self, levels: int | None) -> Batch:
        while True:
            if self._closed:
                raise ShuttingDown("the model is shutting down")
            now = self._now()
            self._sweep(now)
            if levels is None and self._reserved_waiting:
                head = self._queue.head(skip=max(self._reserved_waiting))
            else:
                head = self._queue.head(levels)
            if head is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            wait_ns = self._wait_before_leaving(head, now)
            if wait_ns <= 0:
                return self._take(head)
            self._wakeup.clear()
            window = self._clock.call_at(now + wait_ns, self._wakeup.set)
            try:
                await self._wakeup.wait()
            finally:
                window.cancel()

    def _wait_before_leaving(self, head: InferenceRequest, now: int) -> int:
        """0 when the batch led by `head` should leave now, else nanoseconds left to wait."""
        if not self._config.batched:
            return 0
        rows = self._queue.rows(head.level, head.batch_key)
        if rows >= self._cap():
            return 0
        if self._largest_preferred and rows >= self._largest_preferred:
            return 0
        oldest = self._queue.oldest(head.level, head.batch_key) or head
        return oldest.enqueued_ns + self._delay() - now

    def _delay(self) -> int:
        return self._delay_ns if self.slo is None else self.slo.delay_ns(self._delay_ns)

    def _cap(self) -> int:
        return self.max_rows if self.slo is None else self.slo.cap_rows(self.max_rows)

    def _take(self, head: InferenceRequest) -> Batch:
        if not self._config.batched:
            return Batch(self._queue.take_one(head))
        rows = self._queue.rows(head.level, head.batch_key)
        limit = self._cap()
        if self._config.preferred_batch_sizes and rows < limit:
            fitting = [p for p in self._config.preferred_batch_sizes if p <= rows]
            if fitting:
                limit = max(fitting)
        requests = self._queue.take(head.level, head.batch_key, max_rows=limit)
        if not requests:  # the head is always taken; anything else is a bug, never a spin
            raise RuntimeError("batch formation took no request")
        padded = (
            self._padding.batch_shapes([r.shapes for r in requests], self._profile)
            if self._padding.inputs
            else {}
        )
        return Batch(requests, padded, self._padding)

    # ---- time limits while waiting ----------------------------------------------------------

    def _sweep(self, now: int) -> None:
        """Apply every deadline and queue timeout that has passed by `now`."""
        limits = self._limits
        while limits and limits[0][0] <= now:
            request = heapq.heappop(limits)[2]()
            if request is None or request not in self._queue:
                continue
            if request.expired(now):
                self._queue.remove(request)
                set_exception_if_pending(
                    request.future,
                    DeadlineExceeded("the request's deadline passed while it was queued"),
                )
            elif request.queue_deadline_ns is not None and now >= request.queue_deadline_ns:
                if request.timeout_action is TimeoutAction.DELAY:
                    self._queue.delay(request)
                else:
                    self._queue.remove(request)
                    set_exception_if_pending(
                        request.future, QueueTimeout("Request timeout expired")
                    )

    def _compact(self) -> None:
        """Drop the limits of requests that left the queue. Amortized O(1) per request: it runs
        when the heap holds four entries per waiting request, and leaves at most two."""
        self._limits = [
            entry for entry in self._limits if (r := entry[2]()) is not None and r in self._queue
        ]
        heapq.heapify(self._limits)

    def _arm(self) -> None:
        """Make the timer fire at the earliest pending limit."""
        if not self._limits or self._closed:
            return
        when = self._limits[0][0]
        if self._timer is not None:
            if self._timer_at <= when:
                return
            self._timer.cancel()
        self._timer = self._clock.call_at(when, self._on_timer)
        self._timer_at = when

    def _on_timer(self) -> None:
        self._timer = None
        now = self._now()
        self._sweep(now)
        self._wakeup.set()
        self._arm()

    def close(self, exc: BaseException) -> None:
        """Stop forming batches; every waiting request fails with `exc`."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._limits.clear()
        for request in self._queue.drain():
            set_exception_if_pending(request.future, exc)
        self._wakeup.set()
